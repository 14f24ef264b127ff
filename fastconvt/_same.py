"""``padding='same'`` and ``'valid'``: TensorFlow's ``conv2d_transpose`` sizes, which torch
refuses for transposed convolutions.

Per spatial dimension, with ``k_eff = dilation * (kernel - 1) + 1`` and the unpadded output
``full = (in - 1) * stride + k_eff``: ``'same'`` gives ``out = in * stride`` and ``'valid'``
``out = in * stride + max(k_eff - stride, 0)``. Where ``out <= full`` the output is rows
``start .. start + out`` of the unpadded one, ``start = (full - out) // 2`` (the odd row is
cropped at the end); where ``out > full`` the rows past ``full`` are zeros (plus the bias).

So a string padding is the zeros-mode layer with padding ``start`` and the output size given
(the kernels take any size): a ``'same'`` layer costs what its integer twin costs. The
other padding modes fold ``start`` rows at the start of an axis and ``end = max(full - out -
start, 0)`` at its end: the adjoint of ``nn.Conv2d`` in that mode on the output, padded by
``start`` and ``end``.
"""
import warnings

import torch

from . import _arguments, _torch_path, functional

PADDINGS = ("same", "valid")
crop = _torch_path.crop


def check(padding, output_padding, error=RuntimeError):
    """Raise the TypeError torch's argument parser raises for a padding string other
    than 'same' or 'valid', or ``error`` for a non-zero ``output_padding`` beside one."""
    if padding not in PADDINGS:
        raise TypeError(f"conv_transpose2d(): argument 'padding' must be a tuple of ints, "
                        f"'same' or 'valid', not {padding!r}")
    if any(_arguments._pair("output_padding", output_padding)):
        raise error(f"padding={padding!r} sets the output size: output_padding must be 0, "
                    f"but got output_padding={output_padding}")


def check_output_size(layer, input, output_size):
    """torch's ValueError where ``layer.forward``'s ``output_size`` is not the size its
    string padding gives ``input``."""
    if output_size is None:
        return
    dims = len(layer.kernel_size)
    if input.dim() not in (dims + 1, dims + 2):
        return  # the convolution raises torch's error for the input
    in_hw = list(input.shape[-dims:])
    out_hw = crop(layer.padding, in_hw, list(layer.kernel_size), list(layer.stride),
                  list(layer.dilation))[2]
    _torch_path.check_string_output_size(layer.padding, in_hw, out_hw, list(output_size),
                                         input.dim() - dims)


def prepare(input, weight, bias, stride, padding, groups, dilation):
    """``functional._prepare`` for a string ``padding`` (checked): (unbatched, 4-D input,
    geometry with the start crop as its padding, output (H, W), the end crop)."""
    unbatched, x, geometry, _ = functional._prepare(input, weight, bias, stride, 0, 0, groups,
                                                    dilation)
    stride, _, dilation, groups = geometry
    starts, ends, out_hw = crop(padding, list(x.shape[2:]), list(weight.shape[2:]),
                                list(stride), list(dilation))
    _torch_path.check_size(list(x.shape[2:]), out_hw)
    return (unbatched, x, (stride, tuple(starts), dilation, groups), tuple(out_hw),
            tuple(ends))


def with_torch(input, weight, bias, stride, padding, groups, dilation, padding_mode):
    """The layer in torch's operators (tracing, other devices): :mod:`._torch_path`."""
    pair = _arguments._pair
    with warnings.catch_warnings():
        # the sizes are Python values: a trace keeps them as the constants they are for
        # the traced shapes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return _torch_path.conv_transpose2d_string(
            input, weight, bias, list(pair("stride", stride)), padding,
            _arguments._int("groups", groups), list(pair("dilation", dilation)), padding_mode)
