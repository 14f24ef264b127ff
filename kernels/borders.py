"""Border kernels for the non-zero padding modes.

``nn.Conv2d(padding_mode=m)`` pads its input ``x`` of shape ``(N, C, H, W)`` to
``z`` of shape ``(N, C, H + 2 ph, W + 2 pw)`` by copying: padded row ``a`` is a
copy of row ``source(a)`` (likewise columns), where ``source`` wraps around
(circular), mirrors without repeating the edge (reflect) or clamps to the edge
(replicate). ``pad_borders`` is that copy; ``fold_borders``, its adjoint, adds
every padded element back onto the element it was copied from. The transposed
convolution in mode ``m`` is ``fold_borders`` after a zeros-mode transposed
convolution with no padding. One job per ``(n, c)`` plane.

``padding`` is ``(ph, pw)``, the same border at both ends of an axis, or
``((top, bottom), (left, right))`` (``padding='same'`` crops asymmetrically).
"""
import numpy as np
from numba import njit, prange, uint64

from ._config import JIT, launch
from .direct import _check, _output

MODES = {"reflect": 0, "replicate": 1, "circular": 2}


@njit(inline="always", **JIT)
def _source(a, n, p, mode):
    """The index in ``[0, n)`` that padded index ``a`` (in ``[0, n + 2p)``) copies;
    reflect needs ``p < n``, circular ``p <= n``."""
    i = a - p
    if mode == 2:
        return i % n
    if mode == 1:
        return min(max(i, 0), n - 1)
    if i < 0:
        return -i
    return i if i < n else 2 * (n - 1) - i


@njit(**JIT)
def _fold_planes(z, bias, x, ph, pw, mode, job_lo, job_hi):
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    h_pad, w_pad = z.shape[2], z.shape[3]
    for job in range(job_lo, job_hi):  # job -> plane x[n, ch]
        n, ch = job // c, job % c
        b = bias[ch] if bias.shape[0] > 0 else 0
        # unsigned indices: no negative-index wraparound, so the copy vectorises
        zw, m = uint64(pw), uint64(w)
        for i in range(h):
            for j in range(m):
                x[n, ch, i, j] = z[n, ch, i + ph, zw + j] + b
        for a in range(h_pad):
            i = _source(a, h, ph, mode)
            if ph <= a < ph + h:  # an interior row: only its border columns are left
                for col in range(pw):
                    x[n, ch, i, _source(col, w, pw, mode)] += z[n, ch, a, col]
                for col in range(pw + w, w_pad):
                    x[n, ch, i, _source(col, w, pw, mode)] += z[n, ch, a, col]
            else:
                for col in range(w_pad):
                    x[n, ch, i, _source(col, w, pw, mode)] += z[n, ch, a, col]


@njit(parallel=True, **JIT)
def _fold_parallel(z, bias, x, ph, pw, mode, n_chunks):
    n_jobs = x.shape[0] * x.shape[1]
    for t in prange(n_chunks):
        _fold_planes(z, bias, x, ph, pw, mode, t * n_jobs // n_chunks,
                     (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _pad_planes(x, z, ph, pw, mode, job_lo, job_hi):
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    h_pad, w_pad = z.shape[2], z.shape[3]
    for job in range(job_lo, job_hi):  # job -> plane z[n, ch]
        n, ch = job // c, job % c
        for a in range(h_pad):
            i = _source(a, h, ph, mode)
            for col in range(pw):
                z[n, ch, a, col] = x[n, ch, i, _source(col, w, pw, mode)]
            for j in range(uint64(w)):
                z[n, ch, a, uint64(pw) + j] = x[n, ch, i, j]
            for col in range(pw + w, w_pad):
                z[n, ch, a, col] = x[n, ch, i, _source(col, w, pw, mode)]


@njit(parallel=True, **JIT)
def _pad_parallel(x, z, ph, pw, mode, n_chunks):
    n_jobs = x.shape[0] * x.shape[1]
    for t in prange(n_chunks):
        _pad_planes(x, z, ph, pw, mode, t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


def borders(padding):
    """``padding`` as ``((top, bottom), (left, right))``."""
    return tuple(tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in padding)


def _mode(mode, padding, hw):
    """``mode``'s code, after checking that it can pad an axis of each size in ``hw``
    by the matching ``padding`` (``borders``) at each end."""
    if mode not in MODES:
        raise ValueError(f"padding mode must be one of {tuple(MODES)}, got {mode!r}")
    if min(min(p) for p in padding) < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    limit = {"reflect": 1, "replicate": None, "circular": 0}[mode]
    if min(hw) < 1 or (limit is not None and any(max(p) > n - limit
                                                 for p, n in zip(padding, hw))):
        raise ValueError(f"{mode} padding {padding} cannot fold onto size {tuple(hw)}")
    return MODES[mode]


def _bias(name, bias, channels, dtype):
    """``bias`` checked to be ``(channels,)``, or an empty array for None."""
    if bias is None:
        return np.empty(0, dtype)
    if bias.shape != (channels,):
        raise ValueError(f"{name}: bias must have shape ({channels},), got {bias.shape}")
    return bias


def fold_borders(z, bias, padding, mode, out=None, parallel=None):
    """``(N, C, H + top + bottom, W + left + right) -> (N, C, H, W)``: the adjoint of
    ``pad_borders`` (each padded element added onto its source), plus ``bias``
    ``(C,)`` or None."""
    (top, bottom), (left, right) = padding = borders(padding)
    shape = (z.shape[0], z.shape[1], z.shape[2] - top - bottom, z.shape[3] - left - right)
    code = _mode(mode, padding, shape[2:])
    bias = _bias("fold_borders", bias, z.shape[1], z.dtype)
    _check("fold_borders", z, bias)
    x = _output("fold_borders", out, shape, z.dtype)
    launch(_fold_planes, _fold_parallel, (z, bias, x, top, left, code),
           shape[0] * shape[1], z.size, parallel)
    return x


def pad_borders(x, padding, mode, out=None, parallel=None):
    """``(N, C, H, W) -> (N, C, H + top + bottom, W + left + right)``, padded by copying
    as ``mode`` pads (``F.pad(x, (left, right, top, bottom), mode)``)."""
    (top, bottom), (left, right) = padding = borders(padding)
    code = _mode(mode, padding, x.shape[2:])
    _check("pad_borders", x)
    shape = (x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right)
    z = _output("pad_borders", out, shape, x.dtype)
    launch(_pad_planes, _pad_parallel, (x, z, top, left, code), shape[0] * shape[1], z.size,
           parallel)
    return z
