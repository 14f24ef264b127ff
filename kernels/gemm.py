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
from numba import njit, prange, uint64

from ._config import JIT, launch
from .direct import _check_layer, _output

DEFAULT_WORKSPACE_BYTES = 64 << 20
# Batch chunks aim at this many bytes of workspace even where more would fit: the
# column buffer then stays in the last-level cache between the Numba pass and the
# product (measured: 10-40% faster backward for DCGAN-like and FCN layers).
CHUNK_BYTES = 16 << 20


def numpy_gemm(a, b, out, accumulate):
    """``out = a @ b`` or ``out += a @ b`` with NumPy's BLAS."""
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)


# a copy of direct._tap_range: Numba's on-disk cache does not see edits to njit
# functions in other modules, so kernels that call each other share a module
@njit(inline="always", **JIT)
def _tap_range(offset, stride, n_in, n_out):
    """Input indices ``i`` in ``[lo, hi)`` with ``0 <= i * stride + offset < n_out``."""
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(n_in, (n_out - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


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
def _col2im_jobs(cols, bias, y, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w,
                 job_lo, job_hi):
    """``y[n0 + n, co0 + c] = bias + sum of cols`` over the taps that reach each
    pixel; job -> plane (n, c), images fastest. Like the direct kernel, each output row is split
    into stride phases, so every tap adds a contiguous run of ``cols`` into a
    contiguous accumulator and each pixel is written once."""
    h_out, w_out = y.shape[2], y.shape[3]
    c_out_g = cols.shape[0] // (k_h * k_w)
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
                    num_h = oh + ph - kh * dh
                    ih = num_h // sh
                    if num_h % sh != 0 or ih < 0 or ih >= h_in:
                        continue
                    for kw in range(k_w):
                        num_w = rw + pw - kw * dw
                        if num_w % sw != 0:
                            continue
                        t = num_w // sw
                        q_lo, q_hi = max(0, -t), min(n_q, w_in - t)
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
def _col2im_parallel(cols, bias, y, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w,
                     n_chunks):
    n_jobs = (cols.shape[1] // (h_in * w_in)) * (cols.shape[0] // (k_h * k_w))
    for t in prange(n_chunks):
        _col2im_jobs(cols, bias, y, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w,
                     t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _col2im_taps_jobs(cols, bias, y, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w,
                      job_lo, job_hi):
    """What ``_col2im_jobs`` computes, tap by tap over the whole plane: for small
    planes, where the phase-split rows are too short to vectorise and their loop
    overhead dominates; job -> plane (n, c), images fastest."""
    h_out, w_out = y.shape[2], y.shape[3]
    c_out_g = cols.shape[0] // (k_h * k_w)
    hw = h_in * w_in
    images = cols.shape[1] // hw
    for job in range(job_lo, job_hi):
        c, n = job // images, job % images
        co = co0 + c
        plane = y[n0 + n, co]
        plane[:, :] = bias[co] if bias.shape[0] > 0 else 0.0
        for kh in range(k_h):
            off_h = kh * dh - ph
            ih_lo, ih_hi = _tap_range(off_h, sh, h_in, h_out)
            for kw in range(k_w):
                off_w = kw * dw - pw
                iw_lo, iw_hi = _tap_range(off_w, sw, w_in, w_out)
                row = (c * k_h + kh) * k_w + kw
                for ih in range(ih_lo, ih_hi):
                    oh, base = ih * sh + off_h, n * hw + ih * w_in
                    for iw in range(iw_lo, iw_hi):
                        plane[oh, iw * sw + off_w] += cols[row, base + iw]


@njit(parallel=True, **JIT)
def _col2im_taps_parallel(cols, bias, y, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h,
                          k_w, n_chunks):
    n_jobs = (cols.shape[1] // (h_in * w_in)) * (cols.shape[0] // (k_h * k_w))
    for t in prange(n_chunks):
        _col2im_taps_jobs(cols, bias, y, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h,
                          k_w, t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _im2col_jobs(y, cols, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w, periodic,
                 job_lo, job_hi):
    """``cols[(c, kh, kw), (n, ih, iw)] = y[n0 + n, co0 + c, oh, ow]`` (0 off the
    image, or for ``periodic`` the image's periodic extension: ``oh, ow`` modulo
    its size), ``oh = ih*sh - ph + kh*dh``; job -> row ``(c, kh, kw)``."""
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
            iw_lo, iw_hi = _tap_range(off_w, sw, w_in, w_out)
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
        ih_lo, ih_hi = _tap_range(off_h, sh, h_in, h_out)
        iw_lo, iw_hi = _tap_range(off_w, sw, w_in, w_out)
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
def _im2col_parallel(y, cols, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w, periodic,
                     n_chunks):
    n_jobs = cols.shape[0]
    for t in prange(n_chunks):
        _im2col_jobs(y, cols, n0, co0, h_in, w_in, sh, sw, ph, pw, dh, dw, k_h, k_w, periodic,
                     t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _phase_taps_jobs(w, taps, to_taps, job_lo, job_hi):
    """``taps[g, mh, mw, ci, co, rh, rw] = w[g * C_in_g + ci, co, rh + sh * mh, rw + sw * mw]``
    (``taps`` C-contiguous, of shape ``(groups, kq_h, kq_w, C_in_g, C_out_g, sh, sw)``):
    the kernel by stride phase ``(rh, rw)`` and shift ``(mh, mw)``, copied into
    ``taps`` if ``to_taps``, else back into ``w``; job -> kernel block ``(g, ci, co)``.
    Returns how many of the values copied into ``taps`` are Inf or NaN."""
    groups, kq_h, kq_w, c_in_g, c_out_g, sh, sw = taps.shape
    k_h, k_w = w.shape[2], w.shape[3]
    kk, shifts, phases, blocks = k_h * k_w, kq_h * kq_w, sh * sw, c_in_g * c_out_g
    # offset[m, r]: where tap (shift m, phase r) sits in its block w[ci, co].ravel()
    offset = np.empty((shifts, phases), np.int64)
    for mh in range(kq_h):
        for mw in range(kq_w):
            for rh in range(sh):
                for rw in range(sw):
                    offset[mh * kq_w + mw, rh * sw + rw] = (rh + sh * mh) * k_w + rw + sw * mw
    flat_w, flat_taps = w.reshape(-1), taps.reshape(-1)
    non_finite = 0
    for job in range(job_lo, job_hi):
        g, block = job // blocks, job % blocks
        src = job * kk
        for m in range(shifts):
            dst = ((g * shifts + m) * blocks + block) * phases
            if to_taps:
                for r in range(phases):
                    value = flat_w[src + offset[m, r]]
                    flat_taps[dst + r] = value
                    non_finite += not np.isfinite(value)
            else:
                for r in range(phases):
                    flat_w[src + offset[m, r]] = flat_taps[dst + r]
    return non_finite


@njit(parallel=True, **JIT)
def _phase_taps_parallel(w, taps, to_taps, n_chunks):
    n_jobs = taps.shape[0] * taps.shape[3] * taps.shape[4]
    non_finite = 0
    for t in prange(n_chunks):
        non_finite += _phase_taps_jobs(w, taps, to_taps, t * n_jobs // n_chunks,
                                       (t + 1) * n_jobs // n_chunks)
    return non_finite


def _phase_taps(w, taps, to_taps, parallel=None):
    """:func:`_phase_taps_jobs` over every kernel block."""
    return launch(_phase_taps_jobs, _phase_taps_parallel, (w, taps, to_taps),
                  taps.shape[0] * taps.shape[3] * taps.shape[4], taps.size, parallel)


def _taps_of(w, groups, stride, parallel=None):
    """The :func:`_phase_taps_jobs` layout of ``w``, as ``(groups, kq_h * kq_w, C_in_g,
    C_out_g * sh * sw)``, and whether every tap is finite."""
    (sh, sw), (c_in, c_out_g, k_h, k_w) = stride, w.shape
    taps = np.empty((groups, k_h // sh, k_w // sw, c_in // groups, c_out_g, sh, sw), w.dtype)
    finite = _phase_taps(w, taps, True, parallel) == 0
    shape = (groups, (k_h // sh) * (k_w // sw), c_in // groups, c_out_g * sh * sw)
    return taps.reshape(shape), finite


@njit(**JIT)
def _phase_im2col_jobs(x, n0, xc, a0h, a0w, na_h, na_w, kq_h, kq_w, ci0, periodic, job_lo,
                       job_hi):
    """``xc[(mh, mw, ci), (n, ah, aw)] = x[n0 + n, ci0 + ci, a0h + ah - mh, a0w + aw - mw]``
    (0 off the image, or for ``periodic`` the image's periodic extension: indices
    modulo its size, on a grid at most one period wide); job -> row ``(mh, mw, ci)``."""
    h_in, w_in = x.shape[2], x.shape[3]
    na = na_h * na_w
    n_batch = xc.shape[1] // na
    c_rows = xc.shape[0] // (kq_h * kq_w)
    for job in range(job_lo, job_hi):
        ci, mh, mw = ci0 + job % c_rows, job // c_rows // kq_w, job // c_rows % kq_w
        off_w = a0w - mw  # input column of aw = 0
        if periodic:
            # from column off_w (mod w_in) to the row's end, then around from its start;
            # unsigned indices: no negative-index wraparound, so it vectorises
            d = off_w % w_in
            run, rest = uint64(min(na_w, w_in - d)), uint64(max(0, na_w - (w_in - d)))
            dst = xc[job]
            for n in range(n_batch):
                image = x[n0 + n, ci].ravel()
                for ah in range(na_h):
                    a, r = uint64(n * na + ah * na_w), uint64((a0h + ah - mh) % h_in * w_in)
                    a1, r1 = a + run, r + uint64(d)
                    for j in range(run):
                        dst[a + j] = image[r1 + j]
                    for j in range(rest):
                        dst[a1 + j] = image[r + j]
            continue
        aw_lo, aw_hi = max(0, -off_w), min(na_w, w_in - off_w)
        xc[job, :] = 0.0
        if aw_hi <= aw_lo:
            continue
        # unsigned indices: no negative-index wraparound, so it vectorises
        b0, m = uint64(aw_lo + off_w), uint64(aw_hi - aw_lo)
        for n in range(n_batch):
            for ah in range(na_h):
                ih = a0h + ah - mh
                if ih < 0 or ih >= h_in:
                    continue
                a0 = uint64(n * na + ah * na_w + aw_lo)
                for j in range(m):
                    xc[job, a0 + j] = x[n0 + n, ci, ih, b0 + j]


@njit(parallel=True, **JIT)
def _phase_im2col_parallel(x, n0, xc, a0h, a0w, na_h, na_w, kq_h, kq_w, ci0, periodic,
                           n_chunks):
    n_jobs = xc.shape[0]
    for t in prange(n_chunks):
        _phase_im2col_jobs(x, n0, xc, a0h, a0w, na_h, na_w, kq_h, kq_w, ci0, periodic,
                           t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


@njit(inline="always", **JIT)
def _interleave_pairs(even, odd, row, q_first, na_w, pw, b, out):
    """``out[ow] = (even, odd)[t % 2][row + (q_first + t // 2 - pw // 2) % na_w] + b``
    with ``t = ow + pw``: one output row of stride 2 from its two phase rows, stored
    as aligned pairs ``out[2k], out[2k + 1]``."""
    w_out = out.shape[0]
    # ow = 2k reads phase pw % 2 at grid column q_first + k; ow = 2k + 1 the other
    # phase at column q_first + k + pw % 2
    d = pw % 2
    first, second = (odd, even) if d else (even, odd)
    m = w_out // 2
    inside = max(0, min(m, na_w - q_first - d))  # pairs before the grid wraps
    # unsigned indices: no negative-index wraparound, so it vectorises
    s0, du = uint64(row + q_first), uint64(d)
    for k in range(uint64(inside)):
        out[2 * k] = first[s0 + k] + b
        out[2 * k + 1] = second[s0 + k + du] + b
    for k in range(inside, m):
        out[2 * k] = first[row + (q_first + k) % na_w] + b
        out[2 * k + 1] = second[row + (q_first + k + d) % na_w] + b
    if w_out % 2:
        out[w_out - 1] = first[row + (q_first + m) % na_w] + b


@njit(**JIT)
def _pixel_shuffle_jobs(z, bias, y, n0, co0, a0h, a0w, na_h, na_w, sh, sw, ph, pw,
                        job_lo, job_hi):
    """``y[n0 + n, co0 + c, oh, ow] = z[(c, rh, rw), (n, ah, aw)] + bias`` where
    ``oh + ph = sh * (a0h + ah) + rh`` (likewise ow), grid indices ``ah, aw`` modulo
    the grid's size (which wraps only a periodic input's grid, one period long);
    job -> plane (n, c), images fastest."""
    h_out, w_out = y.shape[2], y.shape[3]
    c_out_g = z.shape[0] // (sh * sw)
    na = na_h * na_w
    images = z.shape[1] // na
    su = uint64(sw)
    zero = np.zeros(1, z.dtype)  # a zero bias in z's dtype (0.0 would promote to float64)
    for job in range(job_lo, job_hi):
        c, n = job // images, job % images
        co = co0 + c
        b = bias[co] if bias.shape[0] > 0 else zero[0]
        for oh in range(h_out):
            ah, rh = ((oh + ph) // sh - a0h) % na_h, (oh + ph) % sh
            grid_row = n * na + ah * na_w
            if sw == 2:  # the common stride: pairs of phases, contiguous stores
                row = (c * sh + rh) * 2
                _interleave_pairs(z[row], z[row + 1], grid_row, pw // 2 - a0w, na_w, pw, b,
                                  y[n0 + n, co, oh])
                continue
            for rw in range(sw):
                ow0 = (rw - pw) % sw  # first output column of phase rw
                if ow0 >= w_out:
                    continue
                m = (w_out - ow0 + sw - 1) // sw
                row = (c * sh + rh) * sw + rw
                q0 = (ow0 + pw) // sw - a0w
                inside = max(0, min(m, na_w - q0))
                # unsigned indices: no negative-index wraparound, so it vectorises
                a0, b0 = uint64(grid_row + q0), uint64(ow0)
                for j in range(uint64(inside)):
                    y[n0 + n, co, oh, b0 + j * su] = z[row, a0 + j] + b
                for j in range(inside, m):
                    y[n0 + n, co, oh, ow0 + j * sw] = z[row, grid_row + (q0 + j) % na_w] + b


@njit(parallel=True, **JIT)
def _pixel_shuffle_parallel(z, bias, y, n0, co0, a0h, a0w, na_h, na_w, sh, sw, ph, pw,
                            n_chunks):
    n_jobs = (z.shape[1] // (na_h * na_w)) * (z.shape[0] // (sh * sw))
    for t in prange(n_chunks):
        _pixel_shuffle_jobs(z, bias, y, n0, co0, a0h, a0w, na_h, na_w, sh, sw, ph, pw,
                            t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


def _col2im_by_taps(out_hw, stride):
    """Whether the column scatter goes tap by tap over whole planes: where an output
    row's stride phases are shorter than 16 pixels, too short to vectorise (measured:
    1.2-1.3x on 8x8 and 28x28 outputs at stride 2; 0.7-0.9x on rows of 32 or more)."""
    return -(-out_hw[1] // stride[1]) < 16


def chunking(n_batch, c_in, c_out_g, kernel_hw, in_hw, itemsize, workspace_bytes=None):
    """(images, output channels) per chunk so that ``X_g`` and ``cols`` fit
    ``workspace_bytes``: whole channel groups when one image fits (as many images
    as fit ``CHUNK_BYTES``), else fewer output channels per product (at least one
    image and one channel)."""
    budget = (DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes) // itemsize
    hw, kk = in_hw[0] * in_hw[1], kernel_hw[0] * kernel_hw[1]
    per_image = (c_in + c_out_g * kk) * hw
    if per_image <= budget:
        # (an empty layer has nothing per image: one chunk)
        return max(1, min(n_batch, min(budget, CHUNK_BYTES // itemsize) // max(1, per_image))), \
            c_out_g
    return 1, max(1, min(c_out_g, (budget - c_in * hw) // max(1, kk * hw)))


class _Blocks:
    """The (batch chunk, group, output-channel block) products of one call, with
    the channels-first input and column workspaces they share."""

    def __init__(self, image_shape, groups, c_out_g, kernel_hw, dtype, workspace_bytes):
        self.n_batch, self.c_in, h_in, w_in = image_shape
        self.groups, self.c_out_g, self.kk = groups, c_out_g, kernel_hw[0] * kernel_hw[1]
        self.hw = h_in * w_in
        self.images, self.channels = chunking(self.n_batch, self.c_in, c_out_g, kernel_hw,
                                              (h_in, w_in), np.dtype(dtype).itemsize,
                                              workspace_bytes)
        self._xt = np.empty(self.c_in * self.images * self.hw if self.images > 1 else 0, dtype)
        self._cols = np.empty(self.channels * self.kk * self.images * self.hw, dtype)

    def batches(self):
        """``(n0, nc, xt)``: ``xt`` is a channels-first buffer for ``nc`` images
        (None for a single image, whose own array is already channels first)."""
        for n0 in range(0, self.n_batch, self.images):
            nc = min(self.images, self.n_batch - n0)
            xt = None if nc == 1 else \
                self._xt[:self.c_in * nc * self.hw].reshape(self.c_in, nc * self.hw)
            yield n0, nc, xt

    def products(self, nc):
        """``(g, c0, rows, cols)``: output channels ``c0 .. c0 + rows // kk`` of
        group ``g`` (``rows`` slices the rows of ``W_g.T``) and their column buffer."""
        for g in range(self.groups):
            for c0 in range(0, self.c_out_g, self.channels):
                cb = min(self.channels, self.c_out_g - c0)
                cols = self._cols[:cb * self.kk * nc * self.hw].reshape(cb * self.kk, nc * self.hw)
                yield g, c0, slice(c0 * self.kk, (c0 + cb) * self.kk), cols


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
    if subpixel:
        return _subpixel_conv_transpose2d(x, w, bias, stride, padding, groups, y, parallel,
                                          gemm, workspace_bytes)
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
                   (cols, bias, y, n0, g * c_out_g + c0, h_in, w_in, *geometry),
                   nc * (cols.shape[0] // blocks.kk), cols.size, parallel)
    return y


def uses_subpixel(x_shape, w_shape, stride, padding, dilation, groups, out_hw, itemsize,
                  workspace_bytes=None):
    """Whether :func:`conv_transpose2d` picks the sub-pixel form (``subpixel=None``):
    where it applies and pays, and one image's buffers keep the workspace bound."""
    c_in, h_in, w_in = x_shape[1:]
    c_out_g, k_h, k_w = w_shape[1:]
    phase_hw = _phase_grid(out_hw, stride, padding)[1]
    return (_subpixel_pays((c_in // groups, c_out_g), (k_h, k_w), stride, dilation,
                           (h_in, w_in), phase_hw)
            and subpixel_fits(x_shape, w_shape, stride, padding, groups, out_hw, itemsize,
                              workspace_bytes)[0])


def subpixel_fits(x_shape, w_shape, stride, padding, groups, out_hw, itemsize,
                  workspace_bytes=None):
    """Whether one image's buffers of the sub-pixel forms keep the workspace bound:
    (forward, backward maps), for a layer where they apply (:func:`subpixel_applies`)."""
    c_in, h_in, w_in = x_shape[1:]
    c_out_g, k_h, k_w = w_shape[1:]
    (sh, sw), kq_h, kq_w = stride, k_h // stride[0], k_w // stride[1]
    phase_hw = _phase_grid(out_hw, stride, padding)[1]
    rows = c_in // groups * kq_h * kq_w + c_out_g * sh * sw
    forward = _one_image_fits(rows * phase_hw[0] * phase_hw[1] * itemsize, workspace_bytes)
    grid = (h_in + kq_h - 1) * (w_in + kq_w - 1)
    rows = groups * c_out_g * sh * sw + 2 * c_in  # gathered gy, two input grids
    backward = _one_image_fits(rows * grid * itemsize, workspace_bytes)
    return forward, backward


def subpixel_applies(kernel_hw, stride, dilation):
    """Whether the sub-pixel forms exist: kernel sizes multiples of the strides,
    dilation 1."""
    return (kernel_hw[0] % stride[0], kernel_hw[1] % stride[1], *dilation) == (0, 0, 1, 1)


def _subpixel_pays(channels, kernel_hw, stride, dilation, in_hw, phase_hw):
    """Whether the sub-pixel form applies (kernel sizes multiples of the strides,
    dilation 1) and moves less data than the column form: per input pixel its input
    columns and phase outputs, ``C_in_g * kq^2 + C_out_g * s^2``, against the
    column form's ``C_out_g * k^2`` (``kq = k / s`` per axis). Its phase grid
    (``phase_hw``) also overhangs the input by a border that the padding shifts in,
    which small images pay for in wasted products: allow at most 30% more."""
    (c_in_g, c_out_g), (k_h, k_w), (sh, sw) = channels, kernel_hw, stride
    if not subpixel_applies(kernel_hw, stride, dilation) or in_hw[0] * in_hw[1] == 0:
        return False
    if phase_hw[0] * phase_hw[1] > 1.3 * in_hw[0] * in_hw[1]:
        return False
    kq2 = (k_h // sh) * (k_w // sw)
    return c_in_g * kq2 + c_out_g * sh * sw < c_out_g * k_h * k_w


def _one_image_fits(nbytes, workspace_bytes):
    """Whether a sub-pixel form's buffers for one image (``nbytes``; they never hold
    less) stay within the workspace budget. Where not, the column form, which also
    splits the output channels, keeps the bound."""
    return nbytes <= (DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes)


def _chunk_images(n_batch, per_image, workspace_bytes):
    """Images per batch chunk of a sub-pixel form (``per_image`` workspace bytes)."""
    budget = min(CHUNK_BYTES, DEFAULT_WORKSPACE_BYTES if workspace_bytes is None
                 else workspace_bytes)
    return max(1, min(n_batch, budget // max(per_image, 1)))


def _phase_grid(out_hw, stride, padding):
    """First phase-grid index and its size per axis: output ``o`` sits at
    ``(o + p) // s``, over ``o`` in ``range(out)``."""
    first = tuple(p // s for p, s in zip(padding, stride))
    size = tuple((o - 1 + p) // s - a + 1 for o, p, s, a in zip(out_hw, padding, stride, first))
    return first, size


def _subpixel_conv_transpose2d(x, w, bias, stride, padding, groups, y, parallel, gemm,
                               workspace_bytes, periodic=False):
    """The forward map when each kernel size is a multiple of its stride (dilation 1):
    output phase ``(rh, rw)`` is a stride-1 convolution of the input with the taps
    ``w[..., rh + sh * mh, rw + sw * mw]``, so one product per group gives every
    output pixel once (``z``), then a pixel shuffle writes ``y``: no column scatter.
    With ``o + p = s * a + r``, output ``o`` gets ``x[a - m] * w[r + s * m]``;
    ``periodic`` reads ``x``'s periodic extension.
    """
    n_batch, c_in, h_in, w_in = x.shape
    c_out_g, k_h, k_w = w.shape[1:]
    (sh, sw), (ph, pw) = stride, padding
    c_in_g, kq_h, kq_w = c_in // groups, k_h // sh, k_w // sw
    h_out, w_out = y.shape[2], y.shape[3]
    (a0h, a0w), (na_h, na_w) = _phase_grid((h_out, w_out), stride, padding)
    if periodic:
        # the phases of a periodic input are periodic too: one period of grid suffices
        na_h, na_w = min(na_h, h_in), min(na_w, w_in)
    rows_x, rows_z = c_in_g * kq_h * kq_w, c_out_g * sh * sw
    # W'_g[(mh, mw, ci), (c, rh, rw)] = w[ci, c, rh + sh * mh, rw + sw * mw]
    w_phase, finite = _taps_of(w, groups, stride, parallel)
    if not (finite or periodic):
        # an Inf or NaN tap would meet the phase columns' zeros off the image (0 * Inf =
        # NaN, in outputs torch leaves finite): the column form pairs real pixels only
        return conv_transpose2d(x, w, bias, stride, padding, (1, 1), groups, (h_out, w_out),
                                y, parallel, gemm, workspace_bytes, subpixel=False)
    w_phase = w_phase.reshape(groups, rows_x, rows_z)
    images = _chunk_images(n_batch, (rows_x + rows_z) * na_h * na_w * x.itemsize,
                           workspace_bytes)
    xc_buffer = np.empty(rows_x * images * na_h * na_w, x.dtype)
    z_buffer = np.empty(rows_z * images * na_h * na_w, x.dtype)
    for n0 in range(0, n_batch, images):
        nc = min(images, n_batch - n0)
        xc = xc_buffer[:rows_x * nc * na_h * na_w].reshape(rows_x, nc * na_h * na_w)
        z = z_buffer[:rows_z * nc * na_h * na_w].reshape(rows_z, nc * na_h * na_w)
        for g in range(groups):
            launch(_phase_im2col_jobs, _phase_im2col_parallel,
                   (x, n0, xc, a0h, a0w, na_h, na_w, kq_h, kq_w, g * c_in_g, periodic), rows_x,
                   xc.size, parallel)
            gemm(w_phase[g].T, xc, z, False)
            launch(_pixel_shuffle_jobs, _pixel_shuffle_parallel,
                   (z, bias, y, n0, g * c_out_g, a0h, a0w, na_h, na_w, sh, sw, ph, pw),
                   nc * c_out_g, z.size, parallel)
    return y


def _use_subpixel_gradients(subpixel, n_batch, c_in, c_out_g, groups, kernel_hw, stride,
                            dilation, in_hw, itemsize, workspace_bytes):
    """Whether the backward maps take the sub-pixel form: ``subpixel`` forced (True
    where it applies: kernel sizes multiples of the strides, dilation 1), or where it
    pays and one image's buffers keep the workspace bound.

    Its gather is ``(k / s)^2`` times smaller than the column form's, but it splits
    each product into ``(k / s)^2`` smaller ones over a grid that overhangs the input.
    Measured on the benchmark's layers (1.1-1.6x where chosen, 0.4-0.9x elsewhere): it
    pays where the gather dominates, few input channels per group (at most 64), the
    products keep a depth ``C_out_g * sh * sw`` of at least 16, the kernel is larger
    than the stride, the stride is more than 1 (stride-1 layer: 0.85-0.94x), and the
    grid overhangs the input by at most 30%."""
    (k_h, k_w), (sh, sw), (h_in, w_in) = kernel_hw, stride, in_hw
    if n_batch == 0 or h_in * w_in == 0 or not subpixel_applies(kernel_hw, stride, dilation):
        return False
    if subpixel is not None:
        return subpixel
    grid = (h_in + k_h // sh - 1) * (w_in + k_w // sw - 1)
    if (k_h, k_w) == (sh, sw) or (sh, sw) == (1, 1) or c_in // groups > 64 \
            or c_out_g * sh * sw < 16 or grid > 1.3 * h_in * w_in:
        return False
    rows = groups * c_out_g * sh * sw + 2 * c_in  # gathered gy, two input grids
    return _one_image_fits(rows * grid * itemsize, workspace_bytes)


def _subpixel_gradients(x, w, gy, stride, padding, groups, kernel_hw, gx, gw, parallel, gemm,
                        workspace_bytes, periodic=False):
    """The input gradient ``gx`` (``conv2d(gy, w)``) and/or the weight gradient
    ``gw`` (``weight_correlation(x, gy)``), each an output array or None, when each
    kernel size is a multiple of its stride (dilation 1): the adjoint of the
    sub-pixel forward, with no column gather.

    With ``k = r + s * m`` (phase ``r``, shift ``m < kq = k / s``), input ``i``
    meets output ``s * (i + m) + r - p``. So ``gy`` is gathered once onto a grid
    ``G[(co, rh, rw), (n, ah, aw)] = gy[n, co, sh * ah + rh - ph, sw * aw + rw - pw]``
    of ``Ha x Wa = (H_in + kq_h - 1) x (W_in + kq_w - 1)`` points per image, and the
    input on the same grid (zero beyond ``H_in x W_in``). Flattened, the shift
    ``(mh, mw)`` is the column offset ``mh * Wa + mw``, so each shift is one product
    on a view of ``G``, with ``W_m[ci, (co, rh, rw)] = w[ci, co, rh + sh * mh, rw + sw * mw]``
    (:func:`_phase_taps_jobs`):
    ``gx_grid = sum_m W_m @ G[:, q + off_m]`` and ``gw_m = x_grid @ G[:, q + off_m].T``.
    Grid points beyond the input read past their image; they are discarded (``gx``)
    or multiply zeros (``gw``). ``periodic`` reads ``gy``'s periodic extension.
    """
    (sh, sw), (ph, pw), (k_h, k_w) = stride, padding, kernel_hw
    kq_h, kq_w = k_h // sh, k_w // sw
    n_batch, c_in, h_in, w_in = (gx if gx is not None else x).shape
    c_in_g, rows_g = c_in // groups, gy.shape[1] // groups * sh * sw
    h_a, w_a = h_in + kq_h - 1, w_in + kq_w - 1
    na = h_a * w_a
    offsets = [mh * w_a + mw for mh in range(kq_h) for mw in range(kq_w)]
    grids = (gx is not None) + (gw is not None)  # gridded input and/or input gradient
    images = _chunk_images(n_batch, (groups * rows_g + grids * c_in) * na * gy.itemsize,
                           workspace_bytes)
    g_buffer = np.empty(groups * rows_g * images * na, gy.dtype)
    grid_buffer = np.empty((grids, c_in * images * na), gy.dtype)
    c_out_g = rows_g // (sh * sw)
    if gx is not None:
        taps = _taps_of(w, groups, stride, parallel)[0]
    if gw is not None:
        gw_m = np.empty((groups, kq_h, kq_w, c_in_g, c_out_g, sh, sw), gy.dtype)
        gw_products = gw_m.reshape(groups, kq_h * kq_w, c_in_g, rows_g)
    for n0 in range(0, n_batch, images):
        nc = min(images, n_batch - n0)
        g_all = g_buffer[:groups * rows_g * nc * na].reshape(groups * rows_g, nc * na)
        # G is the column gather of a kernel the size of the stride on the grid
        launch(_im2col_jobs, _im2col_parallel,
               (gy, g_all, n0, 0, h_a, w_a, sh, sw, ph, pw, 1, 1, sh, sw, periodic),
               g_all.shape[0], g_all.size, parallel)
        x_grid, gx_grid = (grid_buffer[i, :c_in * nc * na].reshape(c_in, nc * na)
                           for i in (0, grids - 1))
        if gw is not None:
            _grid_copy(x, n0, nc, x_grid, True, (h_a, w_a), parallel)
        span = nc * na - offsets[-1]  # grid columns whose every shift stays in G
        for g in range(groups):
            ci, rows = slice(g * c_in_g, (g + 1) * c_in_g), slice(g * rows_g, (g + 1) * rows_g)
            for m, offset in enumerate(offsets):
                shifted = g_all[rows, offset:offset + span]
                if gx is not None:
                    gemm(taps[g, m], shifted, gx_grid[ci, :span], m > 0)
                if gw is not None:
                    gemm(x_grid[ci, :span], shifted.T, gw_products[g, m], n0 > 0)
        if gx is not None:
            _grid_copy(gx, n0, nc, gx_grid, False, (h_a, w_a), parallel)
    if gw is not None:
        _phase_taps(gw, gw_m, False, parallel)
        if not np.isfinite(gw).all():
            # an Inf or NaN in gy also meets the grid's zero overhang (0 * Inf = NaN, in
            # taps torch leaves finite): the column form pairs real pixels only
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
                   (y, cols, n0, g * c_out_g + c0, *in_hw, *geometry, periodic),
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
                   (y, cols, n0, g * c_out_g + c0, h_in, w_in, *geometry, periodic),
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
                   (gy, cols, n0, g * c_out_g + c0, h_in, w_in, *geometry, periodic),
                   cols.shape[0],
                   cols.size, parallel)
            group = slice(g * c_in_g, (g + 1) * c_in_g)
            gemm(_weight_matrix(w, g, c_in_g)[:, rows], cols, gx_image[group], c0 > 0)
            gemm(xt[group], cols.T, _weight_matrix(gw, g, c_in_g)[:, rows], n0 > 0)
        if gxt is not None:
            _grid_copy(gx, n0, nc, gxt, False, (h_in, w_in), parallel)
    return gx, gw
