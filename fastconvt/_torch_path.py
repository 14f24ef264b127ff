"""The layer in torch operations, for whatever cannot run Numba: TorchScript
(``torch.jit.script`` compiles it), tracing (``torch.jit.trace`` and the
TorchScript ONNX exporter record it), other devices and ``__torch_function__``
subclasses.

The zeros mode is ``F.conv_transpose2d`` itself. A padding mode is torch's
zeros-mode transposed convolution without padding, then :func:`fold_borders`:
slices, ``F.pad`` with zeros, ``flip``, ``sum`` and additions, all standard,
differentiable and exportable operators. ``padding='same'``/``'valid'`` (see
:mod:`fastconvt._same`) crops or folds the unpadded output the same way.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .sizes import string_size


def _place(t: Tensor, dim: int, before: int, after: int) -> Tensor:
    """``t`` zero-padded by ``before`` and ``after`` along ``dim`` (-2 or -1)."""
    if dim == -1:
        return F.pad(t, [before, after])
    return F.pad(t, [0, 0, before, after])


def crop(padding: str, in_hw: List[int], kernel_hw: List[int], stride: List[int],
         dilation: List[int]) -> Tuple[List[int], List[int], List[int]]:
    """``(starts, ends, out_hw)`` of ``padding`` ('same' or 'valid', :mod:`._same`) per
    dimension: the rows cropped (or folded) at the start and at the end, and the
    output size."""
    starts: List[int] = []
    ends: List[int] = []
    out_hw: List[int] = []
    for i in range(len(in_hw)):
        full = (in_hw[i] - 1) * stride[i] + dilation[i] * (kernel_hw[i] - 1) + 1
        out = string_size(padding, in_hw[i], kernel_hw[i], stride[i], dilation[i])
        start = max(full - out, 0) // 2
        starts.append(start)
        ends.append(max(full - out - start, 0))
        out_hw.append(out)
    return starts, ends, out_hw


def check_size(in_hw: List[int], out_hw: List[int]):
    """torch's error for an output height or width below 1."""
    if min(out_hw) <= 0:
        raise RuntimeError(f"Given input size per channel: ({in_hw[0]} x {in_hw[1]}). Calculated "
                           f"output size per channel: ({out_hw[0]} x {out_hw[1]}). Output size "
                           "is too small")


def check_foldable(mode: str, padding: List[int], out_shape: List[int],
                   ends: Optional[List[int]] = None):
    """Raise what ``nn.Conv2d(padding_mode=mode)`` (``F.pad`` for a border ``ends`` at
    the end of an axis that differs from ``padding`` at its start) raises for an input
    of ``out_shape`` ``(N, C, H, W)`` that it cannot pad so."""
    last = padding if ends is None else ends
    if mode == "circular" and max(padding[0], last[0]) > out_shape[2] \
            or mode == "circular" and max(padding[1], last[1]) > out_shape[3]:
        raise RuntimeError("Padding value causes wrapping around more than once.")
    if mode == "reflect":
        for dim, argument in [(3, 4), (2, 6)]:  # torch checks the width first
            p, q = padding[dim - 2], last[dim - 2]
            if max(p, q) >= out_shape[dim]:
                raise RuntimeError(
                    f"Argument #{argument}: Padding size should be less than the corresponding "
                    f"input dimension, but got: padding ({p}, {q}) at dimension {dim} of input "
                    f"{out_shape}")


def _fold_axis(z: Tensor, dim: int, p: int, q: int, mode: str) -> Tensor:
    """Fold the ``p`` padded entries at the start and ``q`` at the end of axis ``dim`` of
    ``z`` onto the entries ``mode`` copies them from (the adjoint of padding that axis)."""
    n = z.size(dim) - p - q
    out = z.narrow(dim, p, n)
    if p > 0:
        head = z.narrow(dim, 0, p)  # indices -p..-1
        if mode == "circular":
            out = out + _place(head, dim, n - p, 0)
        elif mode == "reflect":  # index -i mirrors onto i
            out = out + _place(head.flip([dim]), dim, 1, n - 1 - p)
        else:  # replicate: every padded entry lands on the edge
            out = out + _place(head.sum(dim, keepdim=True), dim, 0, n - 1)
    if q > 0:
        tail = z.narrow(dim, p + n, q)  # indices n..n+q-1
        if mode == "circular":
            out = out + _place(tail, dim, 0, n - q)
        elif mode == "reflect":  # index n - 1 + i mirrors onto n - 1 - i
            out = out + _place(tail.flip([dim]), dim, n - 1 - q, 1)
        else:
            out = out + _place(tail.sum(dim, keepdim=True), dim, n - 1, 0)
    return out


def fold_borders(z: Tensor, padding: List[int], mode: str,
                 ends: Optional[List[int]] = None) -> Tensor:
    """``(..., H + ph + eh, W + pw + ew) -> (..., H, W)``: every padded element of ``z``
    added onto the element that ``mode`` (reflect, replicate, circular) copies into that
    position, for borders ``padding`` at the start of each axis and ``ends`` (default:
    the same) at its end; raises as ``nn.Conv2d(padding_mode=mode)`` does where it
    could not pad ``(H, W)`` so."""
    last = padding if ends is None else ends
    h, w = z.size(-2) - padding[0] - last[0], z.size(-1) - padding[1] - last[1]
    if h <= 0 or w <= 0:
        raise RuntimeError(f"Calculated output size per channel: ({h} x {w}). "
                           "Output size is too small")
    check_foldable(mode, padding, [1, 1, h, w] if z.dim() == 3 else [z.size(0), z.size(1), h, w],
                   ends)
    return _fold_axis(_fold_axis(z, -1, padding[1], last[1], mode), -2, padding[0], last[0], mode)


def check_string_output_size(padding: str, in_hw: List[int], out_hw: List[int],
                              output_size: Optional[List[int]], non_spatial: int):
    """torch's ValueError where ``forward``'s ``output_size`` (its spatial sizes, or with
    batch and channels ``non_spatial`` sizes more) is not what ``padding`` gives."""
    if output_size is None:
        return
    wanted = output_size[len(output_size) - len(out_hw):] \
        if len(output_size) == len(out_hw) + non_spatial else output_size
    if len(wanted) != len(out_hw):
        raise ValueError(f"ConvTranspose{len(out_hw)}D: output_size must have {len(out_hw)} or "
                         f"{len(out_hw) + non_spatial} elements (got {len(output_size)})")
    if list(wanted) != out_hw:
        raise ValueError(f"requested an output size of {output_size}, but padding='{padding}' "
                         f"gives {out_hw} (for an input of {in_hw})")


def conv_transpose2d_string(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                            stride: List[int], padding: str, groups: int, dilation: List[int],
                            padding_mode: str) -> Tensor:
    """``fastconvt.conv_transpose2d`` with ``padding`` 'same' or 'valid' in torch
    operations: the unpadded output, zero-extended where the mode's size is larger, then
    cropped (zeros) or folded (the other modes), then the bias."""
    z = F.conv_transpose2d(input, weight, None, stride, [0, 0], [0, 0], groups, dilation)
    starts, ends, out_hw = crop(padding, [input.size(-2), input.size(-1)],
                                [weight.size(-2), weight.size(-1)], stride, dilation)
    check_size([input.size(-2), input.size(-1)], out_hw)
    extra = [starts[i] + out_hw[i] + ends[i] - z.size(i - 2) for i in range(2)]
    if extra[0] > 0 or extra[1] > 0:
        z = F.pad(z, [0, extra[1], 0, extra[0]])
    if padding_mode == "zeros":
        out = z.narrow(-2, starts[0], out_hw[0]).narrow(-1, starts[1], out_hw[1])
    else:
        out = fold_borders(z, starts, padding_mode, ends)
    if bias is not None:
        out = out + bias.reshape(-1, 1, 1)
    return out


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                     padding: List[int], output_padding: List[int], groups: int,
                     dilation: List[int], padding_mode: str) -> Tensor:
    """``fastconvt.conv_transpose2d`` in torch operations (pairs already normalised)."""
    if padding_mode == "zeros":
        return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                                  dilation)
    z = F.conv_transpose2d(input, weight, None, stride, [0, 0], output_padding, groups,
                           dilation)
    out = fold_borders(z, padding, padding_mode)
    if bias is not None:
        out = out + bias.reshape(-1, 1, 1)
    return out
