"""The maps as ``torch.library`` custom operators (``fastconvt::...``), for graphs.

``torch.compile`` cannot trace Numba, but it can call an operator it knows the
shapes of: each map is an operator with a fake (meta) implementation and an
autograd formula made of the other operators, so a compiled model keeps the
kernels in one graph, forward and backward, static or dynamic shapes. Eager calls
keep the autograd Functions (``_autograd``): an operator call costs more per call.

Geometry arguments are lists of ints here (the operator schema's ``int[]``).
"""
from typing import List, Optional

import torch
from torch import Tensor

from . import _autograd, _borders, _bridge


def _geometry(stride, padding, dilation, groups):
    return (tuple(stride), tuple(padding), tuple(dilation), groups)


@torch.library.custom_op("fastconvt::conv_transpose2d", mutates_args=())
def conv_transpose2d(x: Tensor, w: Tensor, b: Optional[Tensor], stride: List[int],
                     padding: List[int], dilation: List[int], groups: int,
                     size: List[int]) -> Tensor:
    """``T(x, w) + b`` into an output of spatial ``size``."""
    shape = (x.shape[0], w.shape[1] * groups, *size)
    return _autograd._compute("conv_transpose2d", shape, (x, w, b),
                              _geometry(stride, padding, dilation, groups), tuple(size))


@torch.library.custom_op("fastconvt::conv2d", mutates_args=())
def conv2d(y: Tensor, w: Tensor, stride: List[int], padding: List[int], dilation: List[int],
           groups: int, size: List[int]) -> Tensor:
    """``C(y, w)``, the input adjoint, into an input of spatial ``size``."""
    shape = (y.shape[0], w.shape[0], *size)
    return _autograd._compute("conv2d", shape, (y, w),
                              _geometry(stride, padding, dilation, groups), tuple(size))


@torch.library.custom_op("fastconvt::weight_correlation", mutates_args=())
def weight_correlation(x: Tensor, y: Tensor, stride: List[int], padding: List[int],
                       dilation: List[int], groups: int, size: List[int]) -> Tensor:
    """``W(x, y)``, the weight adjoint, for a kernel of spatial ``size``."""
    shape = (x.shape[1], y.shape[1] // groups, *size)
    return _autograd._compute("weight_correlation", shape, (x, y),
                              _geometry(stride, padding, dilation, groups), tuple(size))


@torch.library.custom_op("fastconvt::periodic_conv_transpose2d", mutates_args=())
def periodic_conv_transpose2d(x: Tensor, w: Tensor, b: Optional[Tensor], stride: List[int],
                              padding: List[int], dilation: List[int], groups: int,
                              size: List[int], wrap: List[int]) -> Tensor:
    """The circular mode where the output is ``stride`` times the input."""
    return _autograd._periodic_conv_transpose2d(
        x, w, b, _geometry(stride, padding, dilation, groups), tuple(size), tuple(wrap))


@torch.library.custom_op("fastconvt::fold_borders", mutates_args=())
def fold_borders(z: Tensor, b: Optional[Tensor], padding: List[int], mode: str) -> Tensor:
    """The padded borders of ``z`` folded onto their sources, plus ``b``; ``padding``
    ``[ph, pw]`` or ``[top, bottom, left, right]``."""
    return _borders._fold_borders(z, b, _sides(padding), mode)


@torch.library.custom_op("fastconvt::pad_borders", mutates_args=())
def pad_borders(x: Tensor, padding: List[int], mode: str) -> Tensor:
    """``F.pad(x, ..., mode)``: the fold's adjoint."""
    return _borders._pad_borders(x, _sides(padding), mode)


def _sides(padding):
    """An operator's ``padding`` list as ``((top, bottom), (left, right))``."""
    if len(padding) == 2:
        return tuple((p, p) for p in padding)
    return (tuple(padding[:2]), tuple(padding[2:]))


# fake implementations: the outputs' shapes, dtypes and layouts, as the kernels give them

@conv_transpose2d.register_fake
def _(x, w, b, stride, padding, dilation, groups, size):
    return _bridge._empty_like_layout((x.shape[0], w.shape[1] * groups, *size), x)


@conv2d.register_fake
def _(y, w, stride, padding, dilation, groups, size):
    return _bridge._empty_like_layout((y.shape[0], w.shape[0], *size), y)


@weight_correlation.register_fake
def _(x, y, stride, padding, dilation, groups, size):
    return _bridge._empty_like_layout((x.shape[1], y.shape[1] // groups, *size), x)


@periodic_conv_transpose2d.register_fake
def _(x, w, b, stride, padding, dilation, groups, size, wrap):
    return x.new_empty((x.shape[0], w.shape[1] * groups, *size))


@fold_borders.register_fake
def _(z, b, padding, mode):
    (top, bottom), (left, right) = _sides(padding)
    return z.new_empty((*z.shape[:2], z.shape[2] - top - bottom, z.shape[3] - left - right))


@pad_borders.register_fake
def _(x, padding, mode):
    (top, bottom), (left, right) = _sides(padding)
    return x.new_empty((*x.shape[:2], x.shape[2] + top + bottom, x.shape[3] + left + right))


# autograd: each map's adjoints are the other two (conjugated for complex operands)

def _save(ctx, inputs, output):
    """The two operands, and the arguments after them (a bias, if any, skipped)."""
    ctx.save_for_backward(*inputs[:2])
    ctx.args = inputs[3:] if inputs[2] is None or isinstance(inputs[2], Tensor) else inputs[2:]


def _geometry_args(ctx):
    return ctx.args[:4]  # stride, padding, dilation, groups


def _bias_grad(ctx, gy, index=2):
    return gy.sum((0, 2, 3)) if ctx.needs_input_grad[index] else None


def _conv_transpose2d_backward(ctx, gy):
    x, w = map(_bridge._conj, ctx.saved_tensors)
    geometry = _geometry_args(ctx)
    gx = conv2d(gy, w, *geometry, list(x.shape[2:])) if ctx.needs_input_grad[0] else None
    gw = weight_correlation(x, gy, *geometry, list(w.shape[2:])) \
        if ctx.needs_input_grad[1] else None
    return (gx, gw, _bias_grad(ctx, gy)) + (None,) * 5


def _conv2d_backward(ctx, gx):
    y, w = map(_bridge._conj, ctx.saved_tensors)
    geometry = _geometry_args(ctx)
    gy = conv_transpose2d(gx, w, None, *geometry, list(y.shape[2:])) \
        if ctx.needs_input_grad[0] else None
    gw = weight_correlation(gx, y, *geometry, list(w.shape[2:])) \
        if ctx.needs_input_grad[1] else None
    return (gy, gw) + (None,) * 5


def _weight_correlation_backward(ctx, gw):
    x, y = map(_bridge._conj, ctx.saved_tensors)
    geometry = _geometry_args(ctx)
    gx = conv2d(y, gw, *geometry, list(x.shape[2:])) if ctx.needs_input_grad[0] else None
    gy = conv_transpose2d(x, gw, None, *geometry, list(y.shape[2:])) \
        if ctx.needs_input_grad[1] else None
    return (gx, gy) + (None,) * 5


def _periodic_backward(ctx, gy):
    """The zeros-mode gradients over the output gradient's periodic extension."""
    x, w = map(_bridge._conj, ctx.saved_tensors)
    stride, padding, dilation, groups = _geometry_args(ctx)
    gz = pad_borders(gy, padding, "circular")
    geometry = (stride, [0, 0], dilation, groups)
    gx = conv2d(gz, w, *geometry, list(x.shape[2:])) if ctx.needs_input_grad[0] else None
    gw = weight_correlation(x, gz, *geometry, list(w.shape[2:])) \
        if ctx.needs_input_grad[1] else None
    return (gx, gw, _bias_grad(ctx, gy)) + (None,) * 6


def _save_borders(ctx, inputs, output):
    ctx.padding, ctx.mode = inputs[-2:]


def _fold_backward(ctx, gx):
    gz = pad_borders(gx, ctx.padding, ctx.mode) if ctx.needs_input_grad[0] else None
    return gz, _bias_grad(ctx, gx, 1), None, None


def _pad_backward(ctx, gz):
    return fold_borders(gz, None, ctx.padding, ctx.mode), None, None


for _op, _backward, _setup in (
        (conv_transpose2d, _conv_transpose2d_backward, _save),
        (conv2d, _conv2d_backward, _save),
        (weight_correlation, _weight_correlation_backward, _save),
        (periodic_conv_transpose2d, _periodic_backward, _save),
        (fold_borders, _fold_backward, _save_borders),
        (pad_borders, _pad_backward, _save_borders)):
    _op.register_autograd(_backward, setup_context=_setup)


def layer(x, w, b, geometry, out_hw, padding_mode="zeros", ends=None):
    """:func:`fastconvt._autograd.conv_transpose2d` in operators: ``T(x, w) + b``, a
    non-zeros ``padding_mode`` as the unpadded map and a fold (or the periodic map)."""
    stride, padding, dilation, groups = (list(v) if isinstance(v, tuple) else v
                                         for v in geometry)
    ends = padding if ends is None else list(ends)
    if padding_mode == "circular" and any(padding) and ends == padding:
        wrap = _autograd._periodic_input_padding(x.shape[2:], w.shape[2:], geometry, out_hw)
        if wrap is not None:
            return periodic_conv_transpose2d(x, w, b, stride, padding, dilation, groups,
                                             list(out_hw), list(wrap))
    if padding_mode != "zeros" and (any(padding) or any(ends)):
        full = [out_hw[0] + padding[0] + ends[0], out_hw[1] + padding[1] + ends[1]]
        z = conv_transpose2d(x, w, None, stride, [0, 0], dilation, groups, full)
        borders = padding if ends == padding else [padding[0], ends[0], padding[1], ends[1]]
        return fold_borders(z, b, borders, padding_mode)
    return conv_transpose2d(x, w, b, stride, padding, dilation, groups, list(out_hw))
