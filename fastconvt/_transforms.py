"""vmap and jvp rules of the autograd Functions, from the maps' bilinearity.

A map ``M(a, b)`` linear in each operand (the transposed convolution, its two
adjoints) has the tangent ``M(da, b) + M(a, db)``. Under vmap, an operand batched
over samples that the map treats independently (the images of an input) folds into
the batch; one that mixes them (per-sample weights, ensembles) folds into groups: B
layers of G groups are one layer of B * G groups over the channel-stacked input.
Each rule calls the Functions again, so every transform composes with the others.
"""
import torch


class Function(torch.autograd.Function):
    """torch's autograd Function without its per-call argument binding outside
    torch.func transforms: with ``setup_context`` defined, torch binds every call's
    arguments through ``inspect.signature`` (about 40 us, most of a small layer's
    call) only to fill in defaults, and every call here passes all arguments.
    (Dynamo never traces these Functions: compiled code gets :mod:`fastconvt._ops`.)"""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)


def batched(t, dim, size):
    """``t`` with its vmapped dimension first (expanded to ``size`` if it has none)."""
    return t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


def stack_channels(t, dim, size):
    """``(B, N, C, H, W)`` (``t`` batched as in :func:`batched`) as ``(N, B * C, H, W)``."""
    t = batched(t, dim, size)
    return t.transpose(0, 1).reshape(t.shape[1], -1, *t.shape[3:])


def fold_batch(t, dim):
    """``(B, N, ...)`` as ``(B * N, ...)``, and B."""
    t = t.movedim(dim, 0)
    return t.reshape(-1, *t.shape[2:]), t.shape[0]


def vmap_forward(apply, info, in_dims, x, w, b, geometry):
    """vmap of ``y = apply(x, w, b, geometry)``, a map from images to images that mixes
    no two images (the transposed convolution, ``b`` None for its adjoint ``C``).
    Returns (output, its batched dimension)."""
    bx, bw, bb = in_dims
    if bw is None and bb is None:  # per-sample inputs: more images
        flat, size = fold_batch(x, bx)
        y = apply(flat, w, b, geometry)
        return y.reshape(size, -1, *y.shape[1:]), 0
    size = info.batch_size
    stride, padding, dilation, groups = geometry
    x = stack_channels(x, bx, size)
    w = batched(w, bw, size)
    w = w.reshape(-1, *w.shape[2:])
    b = None if b is None else batched(b, bb, size).reshape(-1)
    y = apply(x, w, b, (stride, padding, dilation, size * groups))
    return y.reshape(y.shape[0], size, -1, *y.shape[2:]), 1


def vmap_weight(apply, info, in_dims, x, y, geometry):
    """vmap of ``gw = apply(x, y, geometry)`` (the weight correlation, a sum over
    images): the samples' layers become groups."""
    size = info.batch_size
    stride, padding, dilation, groups = geometry
    x, y = stack_channels(x, in_dims[0], size), stack_channels(y, in_dims[1], size)
    gw = apply(x, y, (stride, padding, dilation, size * groups))
    return gw.reshape(size, -1, *gw.shape[1:]), 0


def vmap_fold(apply, in_dims, z, b):
    """vmap of ``apply(z, b)`` (the border fold plus a bias, or the pad with ``b`` None)."""
    bz, bb = in_dims
    if bz is None:
        out = apply(z, None).unsqueeze(0)
    else:
        flat, size = fold_batch(z, bz)
        out = apply(flat, b if bb is None else None)
        out = out.reshape(size, -1, *out.shape[1:])
    if bb is not None:
        out = out + b.movedim(bb, 0).reshape(b.shape[bb], 1, -1, 1, 1)
    return out, 0


def tangent(parts, shape, like, bias=None):
    """The sum of the tangents in ``parts`` (None: no tangent) plus a bias tangent
    broadcast over channels: a tensor of ``shape`` always (zeros if no part)."""
    out = None
    for part in parts:
        if part is not None:
            out = part if out is None else out + part
    if bias is not None:
        out = (out if out is not None else torch.zeros(shape, dtype=like.dtype)) \
            + bias.reshape(-1, 1, 1)
    return out if out is not None else torch.zeros(shape, dtype=like.dtype)
