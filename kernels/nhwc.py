"""Channels-last (NHWC) column form: each map as matrix products over pixel rows.

With channels innermost, a batch of images ``x (N, H, W, C_in)`` is already the
matrix ``X`` of shape ``(N * H * W, C_in)``: no layout copy precedes the product.
With the weight as ``w (C_in, kH, kW, C_out_g)`` (a channels-last torch weight's
memory order), group ``g``'s weight is ``W_g`` of shape ``(C_in_g, kH * kW * C_out_g)``
and the column matrix ``cols`` has rows ``(n, ih, iw)`` and columns ``(kh, kw, c)``:

* ``conv_transpose2d``: ``cols = X_g @ W_g``, then :func:`_col2im_jobs` sums, for
  each output pixel, the column blocks of the taps that reach it (a gather over
  output rows: no two jobs write one pixel, and every access is a run of channels).
* ``conv2d``: :func:`_im2col_jobs` gathers ``cols`` from ``y`` (zero off the image),
  then ``X_g = cols @ W_g.T``.
* ``weight_correlation``: ``cols`` as for ``conv2d``, then ``W_g += X_g.T @ cols``.

Batches go in chunks of whole images, so ``cols`` stays near ``CHUNK_BYTES`` (in the
last-level cache between the gather and the product); a layer whose single image
needs more than the workspace bound is not computed here (:func:`fits`).
Products go through ``gemm(a, b, out, accumulate)`` as in :mod:`.gemm`.
"""
import functools

import numpy as np
from numba import njit, prange, uint64

from ._config import JIT, launch
from .workspace import CHUNK_BYTES, DEFAULT_WORKSPACE_BYTES, numpy_gemm


@functools.lru_cache(maxsize=256)
def tap_table(n_out, n_in, stride, padding, dilation, k):
    """Per output index ``o`` along one axis, the taps that reach it: row ``o`` is
    ``[count, k_0, i_0, k_1, i_1, ...]`` with ``o = i_t * stride - padding + k_t * dilation``
    and ``0 <= i_t < n_in`` (computed once per geometry, so the scatter divides nothing)."""
    num = np.arange(n_out)[:, None] + padding - np.arange(k)[None, :] * dilation
    reach = (num >= 0) & (num % stride == 0) & (num // stride < n_in)
    order = np.argsort(~reach, axis=1, kind="stable")  # reaching taps first, in order
    first = np.take_along_axis(reach, order, 1)
    table = np.zeros((n_out, 1 + 2 * k), np.int64)
    table[:, 0] = reach.sum(1)
    table[:, 1::2] = np.where(first, order, 0)
    table[:, 2::2] = np.where(first, np.take_along_axis(num, order, 1) // stride, 0)
    table.flags.writeable = False
    return table


@njit(**JIT)
def _col2im_jobs(cols, bias, y, n0, co0, h_in, w_in, k_w, taps_h, taps_w, job_lo, job_hi):
    """``y[n0 + n, oh, ow, co0:co0 + C] = bias + sum of cols[(n, ih, iw), (kh, kw, :)]``
    over the taps of ``taps_h[oh]`` and ``taps_w[ow]`` (:func:`tap_table`); job ->
    output row ``(n, oh)``."""
    h_out, w_out = y.shape[1], y.shape[2]
    c = cols.shape[1] // (taps_h.shape[1] // 2 * k_w)
    acc = np.empty(c, y.dtype)
    for job in range(job_lo, job_hi):
        n, oh = job // h_out, job % h_out
        for ow in range(w_out):
            if bias.shape[0] > 0:
                for j in range(c):
                    acc[j] = bias[co0 + j]
            else:
                acc[:] = 0.0
            for a in range(taps_h[oh, 0]):
                kh, ih = taps_h[oh, 1 + 2 * a], taps_h[oh, 2 + 2 * a]
                for b in range(taps_w[ow, 0]):
                    kw, iw = taps_w[ow, 1 + 2 * b], taps_w[ow, 2 + 2 * b]
                    # unsigned indices: no negative-index wraparound, so it vectorises
                    row = uint64((n * h_in + ih) * w_in + iw)
                    col = uint64((kh * k_w + kw) * c)
                    for j in range(c):
                        acc[j] += cols[row, col + j]
            for j in range(c):
                y[n0 + n, oh, ow, co0 + j] = acc[j]


@njit(parallel=True, **JIT)
def _col2im_parallel(cols, bias, y, n0, co0, h_in, w_in, k_w, taps_h, taps_w, n_chunks):
    n_jobs = cols.shape[0] // (h_in * w_in) * y.shape[1]
    for t in prange(n_chunks):
        _col2im_jobs(cols, bias, y, n0, co0, h_in, w_in, k_w, taps_h, taps_w,
                     t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _im2col_jobs(y, cols, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w,
                 job_lo, job_hi):
    """``cols[(n, ih, iw), (kh, kw, :)] = y[n0 + n, ih * sh - ph + kh * dh, ...,
    co0:co0 + C]``, zero off the image; job -> input row ``(n, ih)``."""
    h_out, w_out = y.shape[1], y.shape[2]
    c = cols.shape[1] // (k_h * k_w)
    for job in range(job_lo, job_hi):
        n, ih = job // h_in, job % h_in
        for iw in range(w_in):
            row = uint64((n * h_in + ih) * w_in + iw)
            for kh in range(k_h):
                oh = ih * sh - ph + kh * dh
                for kw in range(k_w):
                    ow = iw * sw - pw + kw * dw
                    col = uint64((kh * k_w + kw) * c)
                    if 0 <= oh < h_out and 0 <= ow < w_out:
                        for j in range(c):
                            cols[row, col + j] = y[n0 + n, oh, ow, co0 + j]
                    else:
                        for j in range(c):
                            cols[row, col + j] = 0.0


@njit(parallel=True, **JIT)
def _im2col_parallel(y, cols, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w,
                     n_chunks):
    n_jobs = cols.shape[0] // w_in if w_in > 0 else 0
    for t in prange(n_chunks):
        _im2col_jobs(y, cols, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w,
                     t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


def fits(in_hw, kernel_hw, c_out_g, itemsize, workspace_bytes=None):
    """Whether one image's columns (``H_in * W_in`` rows of ``kH * kW * C_out_g``) keep
    the workspace bound."""
    bound = DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes
    return in_hw[0] * in_hw[1] * kernel_hw[0] * kernel_hw[1] * c_out_g * itemsize <= bound


class _Layer:
    """One call's sizes, column buffer and batch chunks (whole images)."""

    def __init__(self, n_batch, in_hw, c_in, w_shape, groups, geometry, dtype,
                 workspace_bytes):
        stride, padding, dilation = geometry
        self.c_in_g = c_in // groups
        self.groups, (self.k_h, self.k_w, self.c_out_g) = groups, w_shape[1:]
        self.in_hw, self.n_batch = tuple(in_hw), n_batch
        self.spatial = (*in_hw, *stride, *padding, *dilation, self.k_h, self.k_w)
        width = self.k_h * self.k_w * self.c_out_g
        if not fits(in_hw, (self.k_h, self.k_w), self.c_out_g, np.dtype(dtype).itemsize,
                    workspace_bytes):
            raise ValueError("nhwc: one image's columns exceed the workspace bound; "
                             "use another form")
        per_image = max(1, in_hw[0] * in_hw[1] * width * np.dtype(dtype).itemsize)
        bound = DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes
        self.images = max(1, min(n_batch, min(bound, CHUNK_BYTES) // per_image))
        self._cols = np.empty(self.images * in_hw[0] * in_hw[1] * width, dtype)
        self.width = width

    def chunks(self):
        """``(n0, nc, r0, r1, cols)``: images ``n0 .. n0 + nc``, their pixel rows
        ``r0 .. r1`` of ``X`` and a column buffer for them."""
        hw = self.in_hw[0] * self.in_hw[1]
        for n0 in range(0, self.n_batch, self.images):
            nc = min(self.images, self.n_batch - n0)
            cols = self._cols[:nc * hw * self.width].reshape(nc * hw, self.width)
            yield n0, nc, n0 * hw, (n0 + nc) * hw, cols

    def weight(self, w, g):
        return w[g * self.c_in_g:(g + 1) * self.c_in_g].reshape(self.c_in_g, self.width)

    def channels(self, g):
        return slice(g * self.c_in_g, (g + 1) * self.c_in_g)

    def gather(self, y, cols, n0, nc, g, parallel):
        launch(_im2col_jobs, _im2col_parallel,
               (y, cols, n0, g * self.c_out_g, *self.spatial), nc * self.in_hw[0], cols.size,
               parallel)


def _checked(name, *arrays):
    for a in arrays:
        if a is not None and not (a.ndim in (1, 4) and a.flags.c_contiguous):
            raise ValueError(f"nhwc.{name}: operands must be C-contiguous NHWC arrays")
    dtypes = {a.dtype for a in arrays if a is not None}
    if len(dtypes) != 1 or next(iter(dtypes)).kind != "f":
        raise ValueError(f"nhwc.{name}: operands must share one real floating dtype; "
                         f"got {sorted(map(str, dtypes))}")


def _out(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype)
    if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"nhwc: out must be a C-contiguous {dtype} array of shape {shape}")
    return out


def conv_transpose2d(x, w, bias, stride, padding, dilation, groups, out_hw, out=None,
                     parallel=None, gemm=numpy_gemm, workspace_bytes=None):
    """``y (N, H_out, W_out, C_out)`` from ``x (N, H_in, W_in, C_in)`` and
    ``w (C_in, kH, kW, C_out // groups)``, plus ``bias`` (or None)."""
    _checked("conv_transpose2d", x, w, bias)
    layer = _Layer(x.shape[0], x.shape[1:3], x.shape[3], w.shape, groups,
                   (stride, padding, dilation), x.dtype, workspace_bytes)
    y = _out(out, (x.shape[0], *out_hw, layer.c_out_g * groups), x.dtype)
    bias = np.empty(0, x.dtype) if bias is None else bias
    x_rows = x.reshape(-1, x.shape[3])
    taps = [tap_table(n_out, n_in, s, p, d, k) for n_out, n_in, s, p, d, k in zip(
        out_hw, x.shape[1:3], stride, padding, dilation, w.shape[1:3])]
    for n0, nc, r0, r1, cols in layer.chunks():
        for g in range(groups):
            gemm(x_rows[r0:r1, layer.channels(g)], layer.weight(w, g), cols, False)
            # an empty input plane leaves the bias alone, serially (the parallel driver
            # counts output rows by the column buffer's pixels)
            launch(_col2im_jobs, _col2im_parallel,
                   (cols, bias, y, n0, g * layer.c_out_g, *layer.in_hw, layer.k_w, *taps),
                   nc * out_hw[0], cols.size, parallel if cols.shape[0] else False)
    return y


def conv2d(y, w, stride, padding, dilation, groups, in_hw, out=None, parallel=None,
           gemm=numpy_gemm, workspace_bytes=None):
    """``x (N, H_in, W_in, C_in)`` (the input adjoint) from ``y (N, H_out, W_out,
    C_out)`` and ``w (C_in, kH, kW, C_out // groups)``."""
    _checked("conv2d", y, w)
    layer = _Layer(y.shape[0], in_hw, w.shape[0], w.shape, groups,
                   (stride, padding, dilation), y.dtype, workspace_bytes)
    x = _out(out, (y.shape[0], *in_hw, w.shape[0]), y.dtype)
    _input_gradient(layer, y, w, x, parallel, gemm)
    return x


def _input_gradient(layer, gy, w, gx, parallel, gemm, gw=None, x=None):
    """``gx = C(gy, w)`` and, where ``gw`` is given, ``gw = W(x, gy)`` from the same
    columns."""
    gx_rows = gx.reshape(-1, gx.shape[3])
    x_rows = None if x is None else x.reshape(-1, x.shape[3])
    part = np.empty((layer.images * layer.in_hw[0] * layer.in_hw[1], layer.c_in_g), gx.dtype) \
        if layer.groups > 1 else None
    for n0, nc, r0, r1, cols in layer.chunks():
        for g in range(layer.groups):
            layer.gather(gy, cols, n0, nc, g, parallel)
            if gw is not None:
                gemm(x_rows[r0:r1, layer.channels(g)].T, cols, layer.weight(gw, g), n0 > 0)
            if part is None:
                gemm(cols, layer.weight(w, g).T, gx_rows[r0:r1], False)
            else:
                gemm(cols, layer.weight(w, g).T, part[:r1 - r0], False)
                gx_rows[r0:r1, layer.channels(g)] = part[:r1 - r0]


def weight_correlation(x, y, stride, padding, dilation, groups, kernel_hw, out=None,
                       parallel=None, gemm=numpy_gemm, workspace_bytes=None):
    """``w (C_in, kH, kW, C_out // groups)`` (the weight adjoint) from ``x (N, H_in,
    W_in, C_in)`` and ``y (N, H_out, W_out, C_out)``."""
    _checked("weight_correlation", x, y)
    w_shape = (x.shape[3], *kernel_hw, y.shape[3] // groups)
    layer = _Layer(x.shape[0], x.shape[1:3], x.shape[3], w_shape, groups,
                   (stride, padding, dilation), x.dtype, workspace_bytes)
    gw = _out(out, w_shape, x.dtype)
    if x.shape[0] == 0:
        gw[...] = 0
    x_rows = x.reshape(-1, x.shape[3])
    for n0, nc, r0, r1, cols in layer.chunks():
        for g in range(groups):
            layer.gather(y, cols, n0, nc, g, parallel)
            gemm(x_rows[r0:r1, layer.channels(g)].T, cols, layer.weight(gw, g), n0 > 0)
    return gw


def conv_transpose2d_backward(x, w, gy, stride, padding, dilation, groups, gx_out=None,
                              gw_out=None, parallel=None, gemm=numpy_gemm,
                              workspace_bytes=None):
    """Both gradients ``(gx (N, H_in, W_in, C_in), gw (C_in, kH, kW, C_out // groups))``
    of the transposed convolution from one gather of ``gy`` per chunk."""
    _checked("conv_transpose2d_backward", x, w, gy)
    layer = _Layer(x.shape[0], x.shape[1:3], x.shape[3], w.shape, groups,
                   (stride, padding, dilation), x.dtype, workspace_bytes)
    gx = _out(gx_out, x.shape, x.dtype)
    gw = _out(gw_out, w.shape, x.dtype)
    if x.shape[0] == 0:
        gw[...] = 0
    _input_gradient(layer, gy, w, gx, parallel, gemm, gw=gw, x=x)
    return gx, gw
