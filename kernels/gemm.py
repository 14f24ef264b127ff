"""GEMM kernels: each map as one large matrix product per group and batch chunk,
plus Numba gathers/scatters between image and column layouts.

With ``kk = kH * kW``, group ``g``'s weight is the matrix
``W_g = w[g*C_in_g:(g+1)*C_in_g].reshape(C_in_g, C_out_g * kk)`` and a batch chunk
of ``nc`` images is ``X_g`` of shape ``(C_in_g, nc * H_in * W_in)`` (channels
first, batch folded into the columns, built by :func:`_channels_first_jobs`). The
column matrix ``cols`` has rows ``(c, kh, kw)`` and columns ``(n, ih, iw)``:

* ``conv_transpose2d``: ``cols = W_g.T @ X_g``, then ``_col2im`` adds each
  ``cols[(c, kh, kw), (n, ih, iw)]`` into ``y[n, co, ih*sh - ph + kh*dh, iw*sw - pw + kw*dw]``.
* ``conv2d``: ``_im2col`` gathers ``cols`` from ``y`` (zero off the image), then
  ``X_g = W_g @ cols``.
* ``weight_correlation``: ``_im2col`` as above, then ``W_g += X_g @ cols.T`` over chunks.

Where each kernel size is a multiple of its stride (dilation 1) the sub-pixel forms
split the kernel by stride phase ``r`` and shift ``m`` (``k = r + s * m``): the
forward is one product per group over the input's phase columns followed by a pixel
shuffle (:func:`_subpixel_conv_transpose2d`), and both backward maps are one product
per shift over a phase gather of ``gy`` (:func:`_subpixel_gradients`). ``periodic``
variants read the input (forward) or the output gradient (backward) as periodic
images: the circular mode where the output is ``stride`` times the input.

Matrix products go through ``gemm(a, b, out, accumulate)`` (``out = a @ b`` or
``out += a @ b``); the default uses NumPy's BLAS, and callers may pass another
(fastconvt passes torch's, which shares torch's thread pool). The batch is
processed in chunks so that the workspace (``X_g`` and ``cols``) stays within
``workspace_bytes``.
"""
import numpy as np

from . import subpixel
from ._config import launch
from .columns import (_channels_first, _col2im_by_taps, _col2im_jobs, _col2im_parallel,
                      _col2im_taps_jobs, _col2im_taps_parallel, _grid_copy, _im2col_jobs,
                      _im2col_parallel)
from .direct import _check_layer, _output
from .subpixel import (_subpixel_conv_transpose2d, _use_subpixel_gradients, subpixel_applies,
                       uses_subpixel)
from .workspace import _Blocks, numpy_gemm


def _pointwise(in_hw, padding, dilation, kernel_hw, out_hw):
    """Whether each 1x1 input image maps onto exactly one whole kernel-sized output
    (DCGAN's first layer): then ``y[n]`` is the row ``x[n] @ W`` itself, no columns."""
    return (tuple(in_hw) == (1, 1) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)
            and tuple(out_hw) == tuple(kernel_hw))

def _weight_matrix(w, g, c_in_g):
    """``W_g``: group ``g``'s weight as a ``(C_in_g, C_out_g * kH * kW)`` matrix."""
    return w[g * c_in_g:(g + 1) * c_in_g].reshape(c_in_g, w.shape[1] * w.shape[2] * w.shape[3])

def _writeable(*arrays):
    """``arrays``, read-only ones copied: the layout kernels copy both ways in one
    compiled function (into a buffer, or back into an output), which Numba cannot
    compile for a read-only array."""
    return tuple(a if a.flags.writeable else a.copy() for a in arrays)

def conv_transpose2d(x, w, bias, stride, padding, dilation, groups, out_hw, out=None,
                     parallel=None, gemm=numpy_gemm, workspace_bytes=None, subpixel=None,
                     by_taps=None, periodic=False):
    """Transposed convolution ``(N, C_in, H_in, W_in) -> (N, C_out, *out_hw)``; the
    arguments and result of :func:`fastconvt.kernels.direct.conv_transpose2d`.
    ``subpixel`` forces (True, where kernel sizes are multiples of the strides and
    dilation is 1) or forbids the sub-pixel form; None picks it where it applies.
    ``by_taps`` forces the column form's scatter to go tap by tap over whole planes
    (True) or by stride phases of output rows (False); None picks by the row length.
    ``periodic`` reads ``x`` as its periodic extension (every ``x[i % H_in, j % W_in]``
    for ``i, j`` in Z contributes): the circular mode where the output is ``stride``
    times the input. Only the sub-pixel form computes it (see :func:`subpixel_applies`)."""
    bias = np.empty(0, x.dtype) if bias is None else bias
    _check_layer("conv_transpose2d", (stride, padding, dilation, groups), out_hw, x=x, w=w,
                 bias=bias)
    x, w = _writeable(x, w)
    n_batch, c_in, h_in, w_in = x.shape
    c_in_g, (c_out_g, k_h, k_w) = c_in // groups, w.shape[1:]
    y = _output("conv_transpose2d", out, (n_batch, c_out_g * groups) + tuple(out_hw), x.dtype)
    if periodic:
        if not subpixel_applies((k_h, k_w), stride, dilation) or subpixel is False \
                or h_in * w_in == 0:
            raise ValueError("conv_transpose2d: a periodic input needs the sub-pixel form "
                             "(kernel sizes multiples of the strides, dilation 1) and a "
                             f"non-empty plane; got kernel {(k_h, k_w)}, stride {stride}, "
                             f"dilation {dilation}, input {x.shape}")
        return _subpixel_conv_transpose2d(x, w, bias, stride, padding, groups, y, parallel,
                                          gemm, workspace_bytes, periodic=True)
    if x.size == 0 or w.size == 0:  # no terms to sum: the bias alone
        y[...] = 0.0
        y += bias.reshape(1, -1, 1, 1) if bias.shape[0] else 0.0
        return y
    if _pointwise((h_in, w_in), padding, dilation, (k_h, k_w), out_hw):
        x_rows = x.reshape(n_batch, c_in)
        y_rows = y.reshape(n_batch, groups, c_out_g * k_h * k_w)
        for g in range(groups):
            gemm(x_rows[:, g * c_in_g:(g + 1) * c_in_g], _weight_matrix(w, g, c_in_g),
                 y_rows[:, g], False)
        if bias.shape[0]:
            y += bias.reshape(1, -1, 1, 1)
        return y
    if subpixel is None:
        subpixel = uses_subpixel(x.shape, w.shape, stride, padding, dilation, groups, out_hw,
                                 x.itemsize, workspace_bytes)
    elif subpixel and not subpixel_applies((k_h, k_w), stride, dilation):
        raise ValueError("conv_transpose2d: the sub-pixel form needs kernel sizes that are "
                         f"multiples of the strides and dilation 1; got kernel {(k_h, k_w)}, "
                         f"stride {stride}, dilation {dilation}")
    if subpixel and _subpixel_conv_transpose2d(x, w, bias, stride, padding, groups, y,
                                               parallel, gemm, workspace_bytes) is not None:
        return y  # (None: an Inf or NaN tap, which the column form computes)
    if by_taps is None:
        by_taps = _col2im_by_taps(out_hw, stride)
    scatter = ((_col2im_taps_jobs, _col2im_taps_parallel) if by_taps
               else (_col2im_jobs, _col2im_parallel))
    blocks = _Blocks(x.shape, groups, c_out_g, (k_h, k_w), x.dtype, workspace_bytes)
    geometry = (*stride, *padding, *dilation, k_h, k_w)
    for n0, nc, xt in blocks.batches():
        xt = _channels_first(x, n0, xt, parallel)
        for g, c0, rows, cols in blocks.products(nc):
            gemm(_weight_matrix(w, g, c_in_g).T[rows], xt[g * c_in_g:(g + 1) * c_in_g], cols,
                 False)
            launch(*scatter,
                   (cols, bias, y, n0, g * c_out_g + c0, h_in, w_in, geometry),
                   nc * (cols.shape[0] // blocks.kk), cols.size, parallel)
    return y


def _subpixel_gradients(x, w, gy, stride, padding, groups, kernel_hw, gx, gw, parallel, gemm,
                        workspace_bytes, periodic=False):
    """:func:`.subpixel._subpixel_gradients`; a weight gradient with an Inf or NaN is
    recomputed in the column form: an Inf or NaN in ``gy`` also meets the sub-pixel
    grid's zero overhang (0 * Inf = NaN, in taps torch leaves finite), where the column
    form pairs real pixels only."""
    gx, gw = subpixel._subpixel_gradients(x, w, gy, stride, padding, groups, kernel_hw, gx, gw,
                                          parallel, gemm, workspace_bytes, periodic)
    if gw is not None and not np.isfinite(gw).all():
        weight_correlation(x, gy, stride, padding, (1, 1), groups, kernel_hw, gw, parallel,
                           gemm, workspace_bytes, subpixel=False, periodic=periodic)
    return gx, gw


def conv2d(y, w, stride, padding, dilation, groups, in_hw, out=None, parallel=None,
           gemm=numpy_gemm, workspace_bytes=None, subpixel=None, periodic=False):
    """Strided convolution ``(N, C_out, H_out, W_out) -> (N, C_in, *in_hw)``; the
    arguments and result of :func:`fastconvt.kernels.direct.conv2d`. ``subpixel`` and
    ``periodic`` (``y`` read as its periodic extension) as in
    :func:`conv_transpose2d_backward`."""
    _check_layer("conv2d", (stride, padding, dilation, groups), in_hw, w=w, y=y)
    y, w = _writeable(y, w)
    n_batch = y.shape[0]
    c_in, (c_out_g, k_h, k_w) = w.shape[0], w.shape[1:]
    c_in_g = c_in // groups
    x = _output("conv2d", out, (n_batch, c_in) + tuple(in_hw), y.dtype)
    if y.size == 0 or w.size == 0:
        x[...] = 0.0
        return x
    if _use_subpixel_gradients(subpixel, n_batch, c_in, c_out_g, groups,
                               (k_h, k_w), stride, dilation, in_hw, y.itemsize, workspace_bytes):
        return _subpixel_gradients(None, w, y, stride, padding, groups, (k_h, k_w), x, None,
                                   parallel, gemm, workspace_bytes, periodic)[0]
    if _pointwise(in_hw, padding, dilation, (k_h, k_w), y.shape[2:]):
        x_rows = x.reshape(n_batch, c_in)
        y_rows = y.reshape(n_batch, groups, c_out_g * k_h * k_w)
        for g in range(groups):
            gemm(y_rows[:, g], _weight_matrix(w, g, c_in_g).T,
                 x_rows[:, g * c_in_g:(g + 1) * c_in_g], False)
        return x
    blocks = _Blocks(x.shape, groups, c_out_g, (k_h, k_w), y.dtype, workspace_bytes)
    geometry = (*stride, *padding, *dilation, k_h, k_w)
    for n0, nc, xt in blocks.batches():
        x_image = x[n0].reshape(c_in, blocks.hw) if xt is None else xt
        for g, c0, rows, cols in blocks.products(nc):
            launch(_im2col_jobs, _im2col_parallel,
                   (y, cols, n0, g * c_out_g + c0, *in_hw, geometry, periodic),
                   cols.shape[0],
                   cols.size, parallel)
            gemm(_weight_matrix(w, g, c_in_g)[:, rows], cols,
                 x_image[g * c_in_g:(g + 1) * c_in_g], c0 > 0)
        if xt is not None:
            _grid_copy(x, n0, nc, xt, False, in_hw, parallel)
    return x

def weight_correlation(x, y, stride, padding, dilation, groups, kernel_hw, out=None,
                       parallel=None, gemm=numpy_gemm, workspace_bytes=None, subpixel=None,
                       periodic=False):
    """Weight correlation giving ``(C_in, C_out // groups, *kernel_hw)``; the
    arguments and result of :func:`fastconvt.kernels.direct.weight_correlation`.
    ``subpixel`` and ``periodic`` as in :func:`conv_transpose2d_backward`."""
    _check_layer("weight_correlation", (stride, padding, dilation, groups), kernel_hw, x=x, y=y)
    x, y = _writeable(x, y)
    n_batch, c_in, h_in, w_in = x.shape
    c_in_g, c_out_g = c_in // groups, y.shape[1] // groups
    k_h, k_w = kernel_hw
    w = _output("weight_correlation", out, (c_in, c_out_g, k_h, k_w), x.dtype)
    if x.size == 0 or y.size == 0:
        w[...] = 0.0
        return w
    if _use_subpixel_gradients(subpixel, n_batch, c_in, c_out_g, groups,
                               kernel_hw, stride, dilation, (h_in, w_in), x.itemsize,
                               workspace_bytes):
        return _subpixel_gradients(x, None, y, stride, padding, groups, kernel_hw, None, w,
                                   parallel, gemm, workspace_bytes, periodic)[1]
    if _pointwise((h_in, w_in), padding, dilation, kernel_hw, y.shape[2:]):
        x_rows = x.reshape(n_batch, c_in)
        y_rows = y.reshape(n_batch, groups, c_out_g * k_h * k_w)
        for g in range(groups):
            gemm(x_rows[:, g * c_in_g:(g + 1) * c_in_g].T, y_rows[:, g],
                 _weight_matrix(w, g, c_in_g), False)
        return w
    blocks = _Blocks(x.shape, groups, c_out_g, (k_h, k_w), x.dtype, workspace_bytes)
    geometry = (*stride, *padding, *dilation, k_h, k_w)
    for n0, nc, xt in blocks.batches():
        xt = _channels_first(x, n0, xt, parallel)
        for g, c0, rows, cols in blocks.products(nc):
            launch(_im2col_jobs, _im2col_parallel,
                   (y, cols, n0, g * c_out_g + c0, h_in, w_in, geometry, periodic),
                   cols.shape[0],
                   cols.size, parallel)
            gemm(xt[g * c_in_g:(g + 1) * c_in_g], cols.T, _weight_matrix(w, g, c_in_g)[:, rows],
                 n0 > 0)
    return w

def conv_transpose2d_backward(x, w, gy, stride, padding, dilation, groups, gx_out=None,
                              gw_out=None, parallel=None, gemm=numpy_gemm, workspace_bytes=None,
                              subpixel=None, periodic=False):
    """Both gradients of ``conv_transpose2d`` at once: ``conv2d(gy, w)`` into
    ``gx_out`` and ``weight_correlation(x, gy)`` into ``gw_out`` (each optional),
    sharing one gather of ``gy`` per batch chunk. ``subpixel`` forces (True, where
    kernel sizes are multiples of the strides and dilation is 1) or forbids the
    sub-pixel form; None picks it where it pays. ``periodic`` reads ``gy`` as its
    periodic extension instead of zero beyond its borders: the gradients of a
    transposed convolution whose output wraps around (the circular mode where the
    output is ``stride`` times the input). Returns (gx, gw)."""
    _check_layer("conv_transpose2d_backward", (stride, padding, dilation, groups), x.shape[-2:],
                 x=x, w=w, y=gy)
    x, w, gy = _writeable(x, w, gy)
    if periodic and gy.shape[2] * gy.shape[3] == 0:
        raise ValueError("conv_transpose2d_backward: a periodic output gradient needs a "
                         f"non-empty plane, got {gy.shape}")
    n_batch, c_in, h_in, w_in = x.shape
    c_in_g, (c_out_g, k_h, k_w) = c_in // groups, w.shape[1:]
    if _use_subpixel_gradients(subpixel, n_batch, c_in, c_out_g, groups,
                               (k_h, k_w), stride, dilation, (h_in, w_in), x.itemsize,
                               workspace_bytes):
        return _subpixel_gradients(
            x, w, gy, stride, padding, groups, (k_h, k_w),
            _output("conv_transpose2d_backward", gx_out, x.shape, x.dtype),
            _output("conv_transpose2d_backward", gw_out, w.shape, x.dtype), parallel, gemm,
            workspace_bytes, periodic)
    if n_batch == 0 or _pointwise((h_in, w_in), padding, dilation, (k_h, k_w), gy.shape[2:]):
        # (a pointwise layer reads no pixel off the image: periodic or not alike)
        gx = conv2d(gy, w, stride, padding, dilation, groups, (h_in, w_in), gx_out, parallel,
                    gemm, workspace_bytes)
        gw = weight_correlation(x, gy, stride, padding, dilation, groups, (k_h, k_w), gw_out,
                                parallel, gemm, workspace_bytes)
        return gx, gw
    gx = _output("conv_transpose2d_backward", gx_out, x.shape, x.dtype)
    gw = _output("conv_transpose2d_backward", gw_out, w.shape, x.dtype)
    blocks = _Blocks(x.shape, groups, c_out_g, (k_h, k_w), x.dtype, workspace_bytes)
    xt_buffer = np.empty(c_in * blocks.images * blocks.hw if blocks.images > 1 else 0, x.dtype)
    geometry = (*stride, *padding, *dilation, k_h, k_w)
    for n0, nc, gxt in blocks.batches():
        xt = _channels_first(x, n0, None if gxt is None else
                             xt_buffer[:c_in * nc * blocks.hw].reshape(c_in, nc * blocks.hw),
                             parallel)
        gx_image = gx[n0].reshape(c_in, blocks.hw) if gxt is None else gxt
        for g, c0, rows, cols in blocks.products(nc):
            launch(_im2col_jobs, _im2col_parallel,
                   (gy, cols, n0, g * c_out_g + c0, h_in, w_in, geometry, periodic),
                   cols.shape[0],
                   cols.size, parallel)
            group = slice(g * c_in_g, (g + 1) * c_in_g)
            gemm(_weight_matrix(w, g, c_in_g)[:, rows], cols, gx_image[group], c0 > 0)
            gemm(xt[group], cols.T, _weight_matrix(gw, g, c_in_g)[:, rows], n0 > 0)
        if gxt is not None:
            _grid_copy(gx, n0, nc, gxt, False, (h_in, w_in), parallel)
    return gx, gw
