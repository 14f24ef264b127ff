"""The layer in torch operations, for whatever cannot run Numba: TorchScript
(``torch.jit.script`` compiles it), tracing (``torch.jit.trace`` and the
TorchScript ONNX exporter record it), other devices and ``__torch_function__``
subclasses.

The zeros mode is ``F.conv_transpose2d`` itself. A padding mode is torch's
zeros-mode transposed convolution without padding, then :func:`fold_borders`:
slices, ``F.pad`` with zeros, ``flip``, ``sum`` and additions, all standard,
differentiable and exportable operators.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _place(t: Tensor, dim: int, before: int, after: int) -> Tensor:
    """``t`` zero-padded by ``before`` and ``after`` along ``dim`` (-2 or -1)."""
    if dim == -1:
        return F.pad(t, [before, after])
    return F.pad(t, [0, 0, before, after])


def check_foldable(mode: str, padding: List[int], out_shape: List[int]):
    """Raise what ``nn.Conv2d(padding_mode=mode)`` raises for an input of ``out_shape``
    ``(N, C, H, W)`` that it cannot pad by ``padding``."""
    if mode == "circular" and (padding[0] > out_shape[2] or padding[1] > out_shape[3]):
        raise RuntimeError("Padding value causes wrapping around more than once.")
    if mode == "reflect":
        for dim, argument in [(3, 4), (2, 6)]:  # torch checks the width first
            p = padding[dim - 2]
            if p >= out_shape[dim]:
                raise RuntimeError(
                    f"Argument #{argument}: Padding size should be less than the corresponding "
                    f"input dimension, but got: padding ({p}, {p}) at dimension {dim} of input "
                    f"{out_shape}")


def _fold_axis(z: Tensor, dim: int, p: int, mode: str) -> Tensor:
    """Fold the ``p`` padded entries at each end of axis ``dim`` of ``z`` onto the
    entries ``mode`` copies them from (the adjoint of padding that axis)."""
    n = z.size(dim) - 2 * p
    out = z.narrow(dim, p, n)
    if p == 0:
        return out
    head, tail = z.narrow(dim, 0, p), z.narrow(dim, p + n, p)  # indices -p..-1, n..n+p-1
    if mode == "circular":
        return out + _place(head, dim, n - p, 0) + _place(tail, dim, 0, n - p)
    if mode == "reflect":  # index -i mirrors onto i, index n - 1 + i onto n - 1 - i
        return (out + _place(head.flip([dim]), dim, 1, n - 1 - p)
                + _place(tail.flip([dim]), dim, n - 1 - p, 1))
    # replicate: every padded entry lands on the edge
    return (out + _place(head.sum(dim, keepdim=True), dim, 0, n - 1)
            + _place(tail.sum(dim, keepdim=True), dim, n - 1, 0))


def fold_borders(z: Tensor, padding: List[int], mode: str) -> Tensor:
    """``(..., H + 2 ph, W + 2 pw) -> (..., H, W)``: every padded element of ``z``
    added onto the element that ``mode`` (reflect, replicate, circular) copies
    into that position; raises as ``nn.Conv2d(padding_mode=mode)`` does where it
    could not pad ``(H, W)`` by ``padding``."""
    h, w = z.size(-2) - 2 * padding[0], z.size(-1) - 2 * padding[1]
    if h <= 0 or w <= 0:
        raise RuntimeError(f"Calculated output size per channel: ({h} x {w}). "
                           "Output size is too small")
    check_foldable(mode, padding, [1, 1, h, w] if z.dim() == 3 else [z.size(0), z.size(1), h, w])
    return _fold_axis(_fold_axis(z, -1, padding[1], mode), -2, padding[0], mode)


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
