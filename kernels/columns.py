"""The column form's layout kernels: image <-> column gathers and scatters around the
GEMM family's products (see :mod:`.gemm` for the layouts), and the channels-first copy
of a batch chunk. One serial kernel over a range of jobs and its ``prange`` driver each.
``geometry`` is ``(sh, sw, ph, pw, dh, dw, kH, kW)``: strides, paddings, dilations and
the kernel size."""
import numpy as np
from numba import njit, prange, uint64

from ._config import JIT, launch
from .taps import input_row, phase_run, tap_range


@njit(**JIT)
def _channels_first_jobs(x, n0, xt, to_xt, h_a, w_a, job_lo, job_hi):
    """Copy between images ``x[n0 + n, ci, i, j]`` and channels-first columns on a grid
    of ``h_a x w_a >= H x W`` points per image, ``xt[ci, n * h_a * w_a + i * w_a + j]``:
    into ``xt`` if ``to_xt`` (its points beyond the image set to 0), else back into
    ``x``; job -> (n, ci)."""
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    na = h_a * w_a
    for job in range(job_lo, job_hi):
        n, ci = job // c_in, job % c_in
        image, columns = x[n0 + n, ci].ravel(), xt[ci, n * na:(n + 1) * na]
        if w_a == w:  # rows back to back: one run
            src, dst = (image, columns) if to_xt else (columns, image)
            for p in range(h * w):
                dst[p] = src[p]
            if to_xt:
                columns[h * w:] = 0.0
            continue
        if to_xt:
            columns[:] = 0.0
        for i in range(h):
            # unsigned indices: no negative-index wraparound, so it vectorises
            a, b = uint64(i * w), uint64(i * w_a)
            if to_xt:
                for j in range(uint64(w)):
                    columns[b + j] = image[a + j]
            else:
                for j in range(uint64(w)):
                    image[a + j] = columns[b + j]

@njit(parallel=True, **JIT)
def _channels_first_parallel(x, n0, xt, to_xt, h_a, w_a, n_chunks):
    n_jobs = (xt.shape[1] // (h_a * w_a)) * x.shape[1]
    for t in prange(n_chunks):
        _channels_first_jobs(x, n0, xt, to_xt, h_a, w_a, t * n_jobs // n_chunks,
                             (t + 1) * n_jobs // n_chunks)

@njit(**JIT)
def _col2im_jobs(cols, bias, y, n0, co0, h_in, w_in, geometry, job_lo, job_hi):
    """``y[n0 + n, co0 + c] = bias + sum of cols`` over the taps that reach each
    pixel; job -> plane (n, c), images fastest. Like the direct kernel, each output row is split
    into stride phases, so every tap adds a contiguous run of ``cols`` into a
    contiguous accumulator and each pixel is written once. (The phase walk is
    ``direct._conv_transpose2d_rows``'s, its arithmetic shared in :mod:`.taps`; the run
    added differs: one row of ``cols`` here, a weighted sum over input channels there.)"""
    sh, sw, ph, pw, dh, dw, k_h, k_w = geometry
    h_out, w_out = y.shape[2], y.shape[3]
    hw = h_in * w_in
    images = cols.shape[1] // hw
    acc = np.empty((w_out + sw - 1) // sw, y.dtype)
    for job in range(job_lo, job_hi):
        c, n = job // images, job % images
        co = co0 + c
        b = bias[co] if bias.shape[0] > 0 else 0.0
        for oh in range(h_out):
            for rw in range(min(sw, w_out)):
                n_q = (w_out - rw + sw - 1) // sw
                acc[:n_q] = 0.0
                for kh in range(k_h):
                    ih = input_row(oh, ph, kh, dh, sh, h_in)
                    if ih < 0:
                        continue
                    for kw in range(k_w):
                        t, q_lo, q_hi = phase_run(rw, pw, kw, dw, sw, n_q, w_in)
                        if q_hi <= q_lo:
                            continue
                        # unsigned indices: no negative-index wraparound, so it vectorises
                        row = (c * k_h + kh) * k_w + kw
                        a0, m = uint64(q_lo), uint64(q_hi - q_lo)
                        b0 = uint64(n * hw + ih * w_in + q_lo + t)
                        for j in range(m):
                            acc[a0 + j] += cols[row, b0 + j]
                for q in range(n_q):
                    y[n0 + n, co, oh, rw + sw * q] = acc[q] + b

@njit(parallel=True, **JIT)
def _col2im_parallel(cols, bias, y, n0, co0, h_in, w_in, geometry, n_chunks):
    n_jobs = (cols.shape[1] // (h_in * w_in)) * (cols.shape[0] // (geometry[6] * geometry[7]))
    for t in prange(n_chunks):
        _col2im_jobs(cols, bias, y, n0, co0, h_in, w_in, geometry, t * n_jobs // n_chunks,
                     (t + 1) * n_jobs // n_chunks)

@njit(**JIT)
def _col2im_taps_jobs(cols, bias, y, n0, co0, h_in, w_in, geometry, job_lo, job_hi):
    """What ``_col2im_jobs`` computes, tap by tap over the whole plane: for small
    planes, where the phase-split rows are too short to vectorise and their loop
    overhead dominates; job -> plane (n, c), images fastest."""
    sh, sw, ph, pw, dh, dw, k_h, k_w = geometry
    h_out, w_out = y.shape[2], y.shape[3]
    hw = h_in * w_in
    images = cols.shape[1] // hw
    for job in range(job_lo, job_hi):
        c, n = job // images, job % images
        co = co0 + c
        plane = y[n0 + n, co]
        plane[:, :] = bias[co] if bias.shape[0] > 0 else 0.0
        for kh in range(k_h):
            off_h = kh * dh - ph
            ih_lo, ih_hi = tap_range(off_h, sh, h_in, h_out)
            for kw in range(k_w):
                off_w = kw * dw - pw
                iw_lo, iw_hi = tap_range(off_w, sw, w_in, w_out)
                row = (c * k_h + kh) * k_w + kw
                for ih in range(ih_lo, ih_hi):
                    oh, base = ih * sh + off_h, n * hw + ih * w_in
                    for iw in range(iw_lo, iw_hi):
                        plane[oh, iw * sw + off_w] += cols[row, base + iw]

@njit(parallel=True, **JIT)
def _col2im_taps_parallel(cols, bias, y, n0, co0, h_in, w_in, geometry, n_chunks):
    n_jobs = (cols.shape[1] // (h_in * w_in)) * (cols.shape[0] // (geometry[6] * geometry[7]))
    for t in prange(n_chunks):
        _col2im_taps_jobs(cols, bias, y, n0, co0, h_in, w_in, geometry, t * n_jobs // n_chunks,
                          (t + 1) * n_jobs // n_chunks)

@njit(**JIT)
def _im2col_jobs(y, cols, n0, co0, h_in, w_in, geometry, periodic, job_lo, job_hi):
    """``cols[(c, kh, kw), (n, ih, iw)] = y[n0 + n, co0 + c, oh, ow]`` (0 off the
    image, or for ``periodic`` the image's periodic extension: ``oh, ow`` modulo
    its size), ``oh = ih*sh - ph + kh*dh``; job -> row ``(c, kh, kw)``."""
    sh, sw, ph, pw, dh, dw, k_h, k_w = geometry
    h_out, w_out = y.shape[2], y.shape[3]
    hw = h_in * w_in
    n_batch = cols.shape[1] // hw
    su = uint64(sw)
    for job in range(job_lo, job_hi):
        kw = job % k_w
        kh = (job // k_w) % k_h
        co = co0 + job // (k_h * k_w)
        off_h, off_w = kh * dh - ph, kw * dw - pw
        if periodic:
            # columns iw in [iw_lo, iw_hi) read inside the row, the rest wrap around
            iw_lo, iw_hi = tap_range(off_w, sw, w_in, w_out)
            iw_lo, iw_hi = min(iw_lo, w_in), min(iw_hi, w_in)
            m = uint64(iw_hi - iw_lo)
            dst = cols[job]
            for n in range(n_batch):
                image = y[n0 + n, co].ravel()
                for ih in range(h_in):
                    r, a = (ih * sh + off_h) % h_out * w_out, n * hw + ih * w_in
                    for iw in range(iw_lo):
                        dst[a + iw] = image[r + (iw * sw + off_w) % w_out]
                    a0, b0 = uint64(a + iw_lo), uint64(r + iw_lo * sw + off_w)
                    if sw == 2:  # a constant stride vectorises
                        for j in range(m):
                            dst[a0 + j] = image[b0 + j * uint64(2)]
                    else:
                        for j in range(m):
                            dst[a0 + j] = image[b0 + j * su]
                    for iw in range(iw_hi, w_in):
                        dst[a + iw] = image[r + (iw * sw + off_w) % w_out]
            continue
        ih_lo, ih_hi = tap_range(off_h, sh, h_in, h_out)
        iw_lo, iw_hi = tap_range(off_w, sw, w_in, w_out)
        cols[job, :] = 0.0
        if iw_hi <= iw_lo:
            continue
        b0, m = uint64(iw_lo * sw + off_w), uint64(iw_hi - iw_lo)
        for n in range(n_batch):
            for ih in range(ih_lo, ih_hi):
                a0 = uint64(n * hw + ih * w_in + iw_lo)
                oh = ih * sh + off_h
                for j in range(m):
                    cols[job, a0 + j] = y[n0 + n, co, oh, b0 + j * su]

@njit(parallel=True, **JIT)
def _im2col_parallel(y, cols, n0, co0, h_in, w_in, geometry, periodic, n_chunks):
    n_jobs = cols.shape[0]
    for t in prange(n_chunks):
        _im2col_jobs(y, cols, n0, co0, h_in, w_in, geometry, periodic, t * n_jobs // n_chunks,
                     (t + 1) * n_jobs // n_chunks)

def _col2im_by_taps(out_hw, stride):
    """Whether the column scatter goes tap by tap over whole planes: where an output
    row's stride phases are shorter than 16 pixels, too short to vectorise (measured:
    1.2-1.3x on 8x8 and 28x28 outputs at stride 2; 0.7-0.9x on rows of 32 or more)."""
    return -(-out_hw[1] // stride[1]) < 16

def _channels_first(x, n0, xt, parallel):
    """Images ``x[n0:n0 + nc]`` as channels-first columns ``(C, nc * H * W)``: copied
    into ``xt`` (``nc`` from its size), or for one image (``xt`` None) the image
    itself, already channels first."""
    if xt is None:
        return x[n0].reshape(x.shape[1], x.shape[2] * x.shape[3])
    _grid_copy(x, n0, xt.shape[1] // (x.shape[2] * x.shape[3]), xt, True, x.shape[2:], parallel)
    return xt

def _grid_copy(x, n0, nc, xt, to_xt, grid_hw, parallel):
    """:func:`_channels_first_jobs` for images ``n0 .. n0 + nc`` of ``x`` and their
    columns ``xt`` on a ``grid_hw`` grid per image, in the direction ``to_xt``."""
    launch(_channels_first_jobs, _channels_first_parallel, (x, n0, xt, to_xt, *grid_hw),
           nc * x.shape[1], xt.size, parallel)
