"""The sub-pixel forms of the GEMM family, where each kernel size is a multiple of its
stride (dilation 1): when they apply and pay, their Numba kernels (the weight by phase
and shift, the input's phase columns, the pixel shuffle) and the drivers of the forward
(one product per group, then a pixel shuffle) and of both backward maps (one product per
shift over a phase gather of the output gradient). See :mod:`.gemm`."""
import numpy as np
from numba import njit, prange, uint64

from ._config import JIT, launch
from .columns import _grid_copy, _im2col_jobs, _im2col_parallel
from .workspace import _chunk_images, _one_image_fits


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
    ``periodic`` reads ``x``'s periodic extension. Returns ``y``, or None (nothing
    written) where a tap is Inf or NaN and ``x`` is not periodic.
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
        # NaN, in outputs torch leaves finite): the caller's column form pairs real
        # pixels only
        return None
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
               (gy, g_all, n0, 0, h_a, w_a, (sh, sw, ph, pw, 1, 1, sh, sw), periodic),
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
    return gx, gw
