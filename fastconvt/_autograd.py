"""The three linear maps of a transposed convolution as autograd Functions.

``y = T(x, w)`` (transposed convolution), ``x = C(y, w)`` (convolution) and
``w = W(x, y)`` (weight correlation) are each other's adjoints, so each
Function's backward calls the other two and every derivative order works.
Forward converts zero-copy to NumPy (after making NCHW-contiguous), calls one
kernel entry point and wraps the result; backward computes only what
``ctx.needs_input_grad`` asks for.
"""
import torch
from torch.autograd import forward_ad

from . import _dispatch, _transforms
from ._borders import FoldBordersFunction, PadBordersFunction, _fold_borders, _pad_borders
from ._bridge import _conj, _empty_like_layout, _np, _on_torch_threads

# geometry: (stride, padding, dilation, groups), each spatial entry a pair of ints


def _compute(map_name, shape, operands, geometry, size):
    """One map on tensors: a torch-allocated output (so allocation errors and
    empty-tensor strides are torch's; channels-last for a channels-last first operand),
    NumPy views in, the dispatcher's plan."""
    out = _empty_like_layout(shape, operands[0]) if len(shape) == 4 else torch.empty(
        shape, dtype=operands[0].dtype)
    _on_torch_threads(_dispatch.run, map_name,
                      tuple(_np(t, channels_last=True) for t in operands), geometry,
                      tuple(size), out.numpy())
    return out


def _both_gradients(x, w, gy, geometry, periodic=False):
    """(grad_input, grad_weight) from one pass over ``gy`` (read as its periodic
    extension if ``periodic``) where the dispatcher allows it, else (None, None)."""
    gx, gw = _empty_like_layout(x.shape, x), _empty_like_layout(w.shape, w)
    fused = _on_torch_threads(_dispatch.run_backward, *(_np(t, channels_last=True)
                                                        for t in (x, w, gy)),
                              geometry, gx.numpy(), gw.numpy(), periodic)
    return (gx, gw) if fused else (None, None)


def _needs_graph(*tensors):
    """Whether the Functions must run: a gradient may be asked for, forward-mode AD or
    a torch.func transform is active (their rules live on the Functions)."""
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        return True
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def conv_transpose2d(x, w, b, geometry, out_hw, padding_mode="zeros", ends=None):
    """``y = T(x, w) + b``; through autograd only when a gradient may be asked for.
    A non-zeros ``padding_mode`` computes ``T`` without padding, then folds the
    borders back in (the adjoint of ``nn.Conv2d``'s padding in that mode): the
    geometry's padding at the start of each axis and ``ends`` (default: the same) at
    its end."""
    stride, padding, dilation, groups = geometry
    ends = padding if ends is None else tuple(ends)
    if padding_mode == "circular" and any(padding) and ends == padding:
        wrap = _periodic_input_padding(x.shape[2:], w.shape[2:], geometry, out_hw)
        if wrap is not None:
            if _needs_graph(x, w, b):
                return PeriodicConvTranspose2dFunction.apply(x, w, b, geometry, out_hw, wrap)
            return _periodic_conv_transpose2d(x, w, b, geometry, out_hw, wrap)
    if padding_mode != "zeros" and (any(padding) or any(ends)):
        full_hw = (out_hw[0] + padding[0] + ends[0], out_hw[1] + padding[1] + ends[1])
        z = conv_transpose2d(x, w, None, (stride, (0, 0), dilation, groups), full_hw)
        borders = padding if ends == padding else tuple(zip(padding, ends))
        if _needs_graph(z, b):
            return FoldBordersFunction.apply(z, b, borders, padding_mode)
        return _fold_borders(z, b, borders, padding_mode)
    if _needs_graph(x, w, b):
        return ConvTranspose2dFunction.apply(x, w, b, geometry, out_hw)
    shape = (x.shape[0], w.shape[1] * geometry[3]) + tuple(out_hw)
    return _compute("conv_transpose2d", shape, (x, w, b), geometry, out_hw)


def _periodic_input_padding(in_hw, kernel_hw, geometry, out_hw):
    """Circular padding ``(qh, qw)`` of the input that makes the circular mode a
    zeros-mode transposed convolution with padding ``p + q * s``, or None.

    Where the output is ``s`` times the input (``H_out = H_in * s``), shifting the
    input by ``H_in`` shifts every contribution by exactly ``H_out``: the wrapped
    contributions are those of the input's circular extension. An input row
    ``i`` and tap ``k`` land at ``v = i * s - p + k * d`` in ``[-p, H_out + p)``,
    which wraps from above for ``i < p / s`` and from below for
    ``i >= H_in - ((kH - 1) * d - p) / s``; ``q`` rows on each side cover both, and
    any further rows land outside the output.
    """
    stride, padding, dilation, _ = geometry
    wrap = []
    for n_in, k, s, p, d, n_out in zip(in_hw, kernel_hw, stride, padding, dilation, out_hw):
        if p == 0:
            wrap.append(0)
            continue
        q = max(-(-p // s), -(-((k - 1) * d - p) // s))
        if n_out != n_in * s or q > n_in:
            return None
        wrap.append(q)
    return tuple(wrap)


def _periodic_conv_transpose2d(x, w, b, geometry, out_hw, wrap):
    """The circular mode where the output is periodic in the input: the kernel that
    reads the input's periodic extension where there is one, else the input padded
    circularly by ``wrap`` and the zeros mode with padding ``p + wrap * s``."""
    stride, padding, dilation, groups = geometry
    shape = (x.shape[0], w.shape[1] * groups) + tuple(out_hw)
    out = torch.empty(shape, dtype=x.dtype)
    if _on_torch_threads(_dispatch.run_periodic, _np(x), _np(w), _np(b), geometry,
                         tuple(out_hw), out.numpy()):
        return out
    padding = tuple(p + q * s for p, q, s in zip(padding, wrap, stride))
    return _compute("conv_transpose2d", shape, (_pad_borders(x, wrap, "circular"), w, b),
                    (stride, padding, dilation, groups), out_hw)


def _save_operands(ctx, inputs, output):
    """setup_context of the three maps: the two operands (for backward and jvp), the
    geometry, the size argument and the output's shape."""
    ctx.geometry, ctx.size = inputs[3:5] if len(inputs) > 4 else inputs[2:4]
    ctx.save_for_backward(*inputs[:2])
    ctx.save_for_forward(*inputs[:2])
    ctx.out_shape = output.shape


class ConvTranspose2dFunction(_transforms.Function):
    """``(x (N, C_in, H, W), w, b, geometry, out_hw) -> (N, C_out, *out_hw)``"""

    @staticmethod
    def forward(x, w, b, geometry, out_hw):
        shape = (x.shape[0], w.shape[1] * geometry[3]) + tuple(out_hw)
        return _compute("conv_transpose2d", shape, (x, w, b), geometry, out_hw)

    setup_context = staticmethod(_save_operands)

    @staticmethod
    def backward(ctx, gy):
        return (*_gradients(ctx, gy), None, None)

    @staticmethod
    def jvp(ctx, dx, dw, db, *_):
        x, w = ctx.saved_tensors
        apply = lambda x, w: ConvTranspose2dFunction.apply(  # noqa: E731
            x, w, None, ctx.geometry, ctx.size)
        return _transforms.tangent([None if dx is None else apply(dx, w),
                                    None if dw is None else apply(x, dw)],
                                   ctx.out_shape, x, db)

    @staticmethod
    def vmap(info, in_dims, x, w, b, geometry, out_hw):
        return _transforms.vmap_forward(
            lambda x, w, b, geometry: ConvTranspose2dFunction.apply(x, w, b, geometry, out_hw),
            info, in_dims[:3], x, w, b, geometry)


def _gradients(ctx, gy, periodic=False):
    """(grad_input, grad_weight, grad_bias) of ``T(x, w) + b`` with ``x, w`` and the
    geometry saved in ``ctx``. ``periodic``: the output wraps around (the periodic
    circular case), so ``gy`` enters the adjoints as its periodic extension: read so
    by the fused kernel, else padded circularly by ``p`` for the padding-0 maps."""
    x, w = map(_conj, ctx.saved_tensors)
    needs, geometry = ctx.needs_input_grad, ctx.geometry
    gx = gw = gb = None
    if needs[0] and needs[1] and not torch.is_grad_enabled():
        # no graph to record: fuse
        gx, gw = _both_gradients(x, w, gy, geometry, periodic)
    gz = gy
    if periodic and ((needs[0] and gx is None) or (needs[1] and gw is None)):
        stride, padding, dilation, groups = geometry
        gz = (PadBordersFunction.apply(gy, padding, "circular") if _needs_graph(gy)
              else _pad_borders(gy, padding, "circular"))
        geometry = (stride, (0, 0), dilation, groups)
    if needs[0] and gx is None:
        gx = Conv2dFunction.apply(gz, w, geometry, x.shape[2:])
    if needs[1] and gw is None:
        gw = WeightCorrelationFunction.apply(x, gz, geometry, w.shape[2:])
    if needs[2]:
        gb = gy.sum((0, 2, 3))
    return gx, gw, gb


class PeriodicConvTranspose2dFunction(_transforms.Function):
    """``(x, w, b, geometry, out_hw, wrap) -> (N, C_out, *out_hw)``: the circular mode
    where the output is periodic in the input (:func:`_periodic_input_padding`).
    Forward: :func:`_periodic_conv_transpose2d`. Backward: the zeros-mode gradients
    over the unpadded input of the output gradient's periodic extension (no fold,
    fewer columns than the padded input's)."""

    @staticmethod
    def forward(x, w, b, geometry, out_hw, wrap):
        return _periodic_conv_transpose2d(x, w, b, geometry, out_hw, wrap)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_operands(ctx, inputs, output)
        ctx.wrap = inputs[5]

    @staticmethod
    def backward(ctx, gy):
        return (*_gradients(ctx, gy, periodic=True), None, None, None)

    @staticmethod
    def jvp(ctx, dx, dw, db, *_):
        x, w = ctx.saved_tensors
        apply = lambda x, w: PeriodicConvTranspose2dFunction.apply(  # noqa: E731
            x, w, None, ctx.geometry, ctx.size, ctx.wrap)
        return _transforms.tangent([None if dx is None else apply(dx, w),
                                    None if dw is None else apply(x, dw)],
                                   ctx.out_shape, x, db)

    @staticmethod
    def vmap(info, in_dims, x, w, b, geometry, out_hw, wrap):
        return _transforms.vmap_forward(
            lambda x, w, b, geometry: PeriodicConvTranspose2dFunction.apply(
                x, w, b, geometry, out_hw, wrap), info, in_dims[:3], x, w, b, geometry)


class Conv2dFunction(_transforms.Function):
    """``(y (N, C_out, H_out, W_out), w, geometry, in_hw) -> (N, C_in, *in_hw)``"""

    @staticmethod
    def forward(y, w, geometry, in_hw):
        shape = (y.shape[0], w.shape[0]) + tuple(in_hw)
        return _compute("conv2d", shape, (y, w), geometry, in_hw)

    setup_context = staticmethod(_save_operands)

    @staticmethod
    def jvp(ctx, dy, dw, *_):
        y, w = ctx.saved_tensors
        apply = lambda y, w: Conv2dFunction.apply(y, w, ctx.geometry, ctx.size)  # noqa: E731
        return _transforms.tangent([None if dy is None else apply(dy, w),
                                    None if dw is None else apply(y, dw)], ctx.out_shape, y)

    @staticmethod
    def vmap(info, in_dims, y, w, geometry, in_hw):
        return _transforms.vmap_forward(
            lambda y, w, _, geometry: Conv2dFunction.apply(y, w, geometry, in_hw),
            info, (*in_dims[:2], None), y, w, None, geometry)

    @staticmethod
    def backward(ctx, gx):
        y, w = ctx.saved_tensors
        gy = gw = None
        if ctx.needs_input_grad[0]:
            gy = ConvTranspose2dFunction.apply(gx, _conj(w), None, ctx.geometry, y.shape[2:])
        if ctx.needs_input_grad[1]:
            gw = WeightCorrelationFunction.apply(gx, _conj(y), ctx.geometry, w.shape[2:])
        return gy, gw, None, None


class WeightCorrelationFunction(_transforms.Function):
    """``(x (N, C_in, H, W), y (N, C_out, H_out, W_out), geometry, kernel_hw)
    -> (C_in, C_out // groups, *kernel_hw)``"""

    @staticmethod
    def forward(x, y, geometry, kernel_hw):
        shape = (x.shape[1], y.shape[1] // geometry[3]) + tuple(kernel_hw)
        return _compute("weight_correlation", shape, (x, y), geometry, kernel_hw)

    setup_context = staticmethod(_save_operands)

    @staticmethod
    def jvp(ctx, dx, dy, *_):
        x, y = ctx.saved_tensors
        apply = lambda x, y: WeightCorrelationFunction.apply(  # noqa: E731
            x, y, ctx.geometry, ctx.size)
        return _transforms.tangent([None if dx is None else apply(dx, y),
                                    None if dy is None else apply(x, dy)], ctx.out_shape, x)

    @staticmethod
    def vmap(info, in_dims, x, y, geometry, kernel_hw):
        return _transforms.vmap_weight(
            lambda x, y, geometry: WeightCorrelationFunction.apply(x, y, geometry, kernel_hw),
            info, in_dims[:2], x, y, geometry)

    @staticmethod
    def backward(ctx, gw):
        x, y = ctx.saved_tensors
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = Conv2dFunction.apply(_conj(y), gw, ctx.geometry, x.shape[2:])
        if ctx.needs_input_grad[1]:
            gy = ConvTranspose2dFunction.apply(_conj(x), gw, None, ctx.geometry, y.shape[2:])
        return gx, gy, None, None
