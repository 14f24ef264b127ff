"""The padding modes' border fold (the adjoint of ``nn.Conv2d``'s padding in that mode)
and its adjoint, the pad, on tensors and as autograd Functions: each one's backward is
the other, so gradients of every order go through them."""
import torch

from . import _transforms, kernels
from ._bridge import _np, _on_torch_threads


def _fold_borders(z, b, padding, mode):
    (top, bottom), (left, right) = kernels.borders.borders(padding)
    shape = z.shape[:2] + (z.shape[2] - top - bottom, z.shape[3] - left - right)
    out = torch.empty(shape, dtype=z.dtype)
    _on_torch_threads(kernels.borders.fold_borders, _np(z), _np(b), padding, mode, out.numpy())
    return out


def _pad_borders(x, padding, mode):
    (top, bottom), (left, right) = kernels.borders.borders(padding)
    shape = x.shape[:2] + (x.shape[2] + top + bottom, x.shape[3] + left + right)
    out = torch.empty(shape, dtype=x.dtype)
    _on_torch_threads(kernels.borders.pad_borders, _np(x), padding, mode, out.numpy())
    return out


class FoldBordersFunction(_transforms.Function):
    """``(z (N, C, H + 2 ph, W + 2 pw), b, (ph, pw), mode) -> (N, C, H, W)``: every
    padded element added onto its source, then the bias (borders as in
    :mod:`fastconvt.kernels.borders`: also ``((top, bottom), (left, right))``)."""

    @staticmethod
    def forward(z, b, padding, mode):
        return _fold_borders(z, b, padding, mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, ctx.padding, ctx.mode = inputs
        ctx.out_shape = output.shape

    @staticmethod
    def backward(ctx, gx):
        gz = gb = None
        if ctx.needs_input_grad[0]:
            gz = PadBordersFunction.apply(gx, ctx.padding, ctx.mode)
        if ctx.needs_input_grad[1]:
            gb = gx.sum((0, 2, 3))
        return gz, gb, None, None

    @staticmethod
    def jvp(ctx, dz, db, *_):
        fold = None if dz is None else FoldBordersFunction.apply(dz, None, ctx.padding, ctx.mode)
        return _transforms.tangent([fold], ctx.out_shape, dz if db is None else db, db)

    @staticmethod
    def vmap(info, in_dims, z, b, padding, mode):
        return _transforms.vmap_fold(
            lambda z, b: FoldBordersFunction.apply(z, b, padding, mode), in_dims[:2], z, b)


class PadBordersFunction(_transforms.Function):
    """``(x (N, C, H, W), (ph, pw), mode) -> (N, C, H + 2 ph, W + 2 pw)``, as
    ``F.pad(x, (pw, pw, ph, ph), mode)``: the adjoint of the fold."""

    @staticmethod
    def forward(x, padding, mode):
        return _pad_borders(x, padding, mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.padding, ctx.mode = inputs

    @staticmethod
    def backward(ctx, gz):
        return FoldBordersFunction.apply(gz, None, ctx.padding, ctx.mode), None, None

    @staticmethod
    def jvp(ctx, dx, *_):
        return PadBordersFunction.apply(dx, ctx.padding, ctx.mode)

    @staticmethod
    def vmap(info, in_dims, x, padding, mode):
        return _transforms.vmap_fold(lambda x, _: PadBordersFunction.apply(x, padding, mode),
                                     (in_dims[0], None), x, None)
