"""Direct kernels: the three linear maps of a transposed convolution, computed
tap by tap with no multiplications by inserted zeros.

Geometry shared by all three (per spatial axis; ``s`` stride, ``p`` padding,
``d`` dilation): input pixel ``i`` and kernel tap ``k`` meet output pixel

    o = i * s - p + k * d.

With ``x`` of shape ``(N, C_in, H_in, W_in)``, ``w`` of shape
``(C_in, C_out // groups, kH, kW)`` and ``y`` of shape ``(N, C_out, H_out, W_out)``,
input channel ``ci`` of group ``g = ci // (C_in // groups)`` feeds output
channels ``g * (C_out // groups) + c`` for ``c`` in ``range(C_out // groups)``:

* ``conv_transpose2d``: ``y[n, co, o] = sum_{ci, k} x[n, ci, i] * w[ci, c, k]``
* ``conv2d`` (its adjoint in ``x``): ``x[n, ci, i] = sum_{co, k} y[n, co, o] * w[ci, c, k]``
* ``weight_correlation`` (its adjoint in ``w``): ``w[ci, c, k] = sum_{n, i} x[n, ci, i] * y[n, co, o]``

Each job owns one output row (or one weight slice), so jobs run in parallel
with no write conflicts and no reductions across threads: ``_*_rows`` /
``_*_slices`` compute a range of jobs serially, ``_*_parallel`` spreads all
jobs over ``prange`` in ``n_chunks`` contiguous ranges. Arrays are C-contiguous
float32, float64, complex64 or complex128, all of one dtype; sizes of
``H_out``/``W_out`` and ``H_in``/``W_in`` are taken from the arrays, so any output
size works (taps that land outside it are dropped).
"""
import numpy as np
from numba import njit, prange, uint64

from ._config import DTYPES, JIT, launch
from .taps import input_row, phase_run, tap_range


@njit(**JIT)
def _conv_transpose2d_rows(x, w, bias, y, sh, sw, ph, pw, dh, dw, groups, job_lo, job_hi):
    c_in, h_in, w_in = x.shape[1], x.shape[2], x.shape[3]
    c_out_g, k_h, k_w = w.shape[1], w.shape[2], w.shape[3]
    c_out, h_out, w_out = y.shape[1], y.shape[2], y.shape[3]
    c_in_g = c_in // groups
    acc = np.empty((w_out + sw - 1) // sw, y.dtype)
    for job in range(job_lo, job_hi):  # job -> output row y[n, co, oh]
        oh = job % h_out
        co = (job // h_out) % c_out
        n = job // (h_out * c_out)
        g = co // c_out_g
        c = co % c_out_g
        b = bias[co] if bias.shape[0] > 0 else 0.0
        # Output phase rw holds columns ow = rw + sw * q; tap kw reaches it from input
        # column iw = q + t when rw + pw - kw * dw = t * sw, so each tap adds a
        # contiguous input run to a contiguous accumulator: no zeros multiplied.
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
                    # unsigned indices: no negative-index wraparound, so the loop vectorises
                    a0, b0, m = uint64(q_lo), uint64(q_lo + t), uint64(q_hi - q_lo)
                    for ci in range(g * c_in_g, (g + 1) * c_in_g):
                        wv = w[ci, c, kh, kw]
                        for j in range(m):
                            acc[a0 + j] += wv * x[n, ci, ih, b0 + j]
            for q in range(n_q):
                y[n, co, oh, rw + sw * q] = acc[q] + b


@njit(parallel=True, **JIT)
def _conv_transpose2d_parallel(x, w, bias, y, sh, sw, ph, pw, dh, dw, groups, n_chunks):
    n_jobs = y.shape[0] * y.shape[1] * y.shape[2]
    for t in prange(n_chunks):
        _conv_transpose2d_rows(x, w, bias, y, sh, sw, ph, pw, dh, dw, groups,
                               t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _conv2d_rows(y, w, x, sh, sw, ph, pw, dh, dw, groups, job_lo, job_hi):
    c_in, h_in, w_in = x.shape[1], x.shape[2], x.shape[3]
    c_out_g, k_h, k_w = w.shape[1], w.shape[2], w.shape[3]
    h_out, w_out = y.shape[2], y.shape[3]
    c_in_g = c_in // groups
    su = uint64(sw)
    for job in range(job_lo, job_hi):  # job -> input row x[n, ci, ih]
        ih = job % h_in
        ci = (job // h_in) % c_in
        n = job // (h_in * c_in)
        g = ci // c_in_g
        x[n, ci, ih, :] = 0.0
        for c in range(c_out_g):
            co = g * c_out_g + c
            for kh in range(k_h):
                oh = ih * sh + kh * dh - ph
                if oh < 0 or oh >= h_out:
                    continue
                for kw in range(k_w):
                    off = kw * dw - pw
                    iw_lo, iw_hi = tap_range(off, sw, w_in, w_out)
                    if iw_hi <= iw_lo:
                        continue
                    wv = w[ci, c, kh, kw]
                    a0, b0, m = uint64(iw_lo), uint64(iw_lo * sw + off), uint64(iw_hi - iw_lo)
                    for j in range(m):
                        x[n, ci, ih, a0 + j] += wv * y[n, co, oh, b0 + j * su]


@njit(parallel=True, **JIT)
def _conv2d_parallel(y, w, x, sh, sw, ph, pw, dh, dw, groups, n_chunks):
    n_jobs = x.shape[0] * x.shape[1] * x.shape[2]
    for t in prange(n_chunks):
        _conv2d_rows(y, w, x, sh, sw, ph, pw, dh, dw, groups,
                     t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _weight_correlation_slices(x, y, w, sh, sw, ph, pw, dh, dw, groups, job_lo, job_hi):
    n_batch, c_in, h_in, w_in = x.shape
    c_out_g, k_h, k_w = w.shape[1], w.shape[2], w.shape[3]
    h_out, w_out = y.shape[2], y.shape[3]
    c_in_g = c_in // groups
    su = uint64(sw)
    for job in range(job_lo, job_hi):  # job -> weight slice w[ci, c]
        ci = job // c_out_g
        c = job % c_out_g
        co = (ci // c_in_g) * c_out_g + c
        for kh in range(k_h):
            off_h = kh * dh - ph
            ih_lo, ih_hi = tap_range(off_h, sh, h_in, h_out)
            for kw in range(k_w):
                off_w = kw * dw - pw
                iw_lo, iw_hi = tap_range(off_w, sw, w_in, w_out)
                acc = 0.0  # float64 accumulator: this sum runs over N * H_in * W_in terms
                if iw_hi > iw_lo:
                    a0, b0 = uint64(iw_lo), uint64(iw_lo * sw + off_w)
                    m = uint64(iw_hi - iw_lo)
                    for n in range(n_batch):
                        for ih in range(ih_lo, ih_hi):
                            oh = ih * sh + off_h
                            for j in range(m):
                                acc += x[n, ci, ih, a0 + j] * y[n, co, oh, b0 + j * su]
                w[ci, c, kh, kw] = acc


@njit(parallel=True, **JIT)
def _weight_correlation_parallel(x, y, w, sh, sw, ph, pw, dh, dw, groups, n_chunks):
    n_jobs = w.shape[0] * w.shape[1]
    for t in prange(n_chunks):
        _weight_correlation_slices(x, y, w, sh, sw, ph, pw, dh, dw, groups,
                                   t * n_jobs // n_chunks, (t + 1) * n_jobs // n_chunks)


_DTYPES = tuple(np.dtype(d) for d in DTYPES)


def _check(name, *arrays):
    dtype = arrays[0].dtype
    for a in arrays:
        if a.dtype != dtype or dtype not in _DTYPES:
            raise TypeError(f"{name}: arrays must share one dtype among {DTYPES}, got "
                            + ", ".join(str(b.dtype) for b in arrays))
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: arrays must be C-contiguous")


# signatures of operands that passed _check_layer: a repeated call checks no more
_FITTING = {}


def _check_layer(name, geometry, size, x=None, w=None, y=None, bias=None):
    """``ValueError`` naming the problem unless the operands present (not None) fit one
    layer: ``x`` ``(N, C_in, H_in, W_in)``, ``w`` ``(C_in, C_out // groups, kH, kW)``,
    ``y`` ``(N, C_out, H_out, W_out)``, ``bias`` ``(C_out,)`` (or empty: none), with
    ``geometry`` (stride, padding, dilation, groups) and ``size`` the result's spatial
    size; and the arrays as :func:`_check` wants them. The kernels index by these
    shapes without bounds checks."""
    try:
        signature = (name, geometry, tuple(size)) + tuple(
            None if a is None else (a.shape, a.dtype.char, a.flags.c_contiguous)
            for a in (x, w, y, bias))
        if signature in _FITTING:
            return
    except TypeError:  # unhashable arguments: check them every time
        signature = None
    _check_layer_once(name, geometry, size, x, w, y, bias)
    if signature is not None:
        if len(_FITTING) >= 1024:
            _FITTING.clear()
        _FITTING[signature] = True


def _check_layer_once(name, geometry, size, x, w, y, bias):
    _check(name, *(a for a in (x, w, y, bias) if a is not None))
    for label, a in (("x", x), ("w", w), ("y", y)):
        if a is not None and a.ndim != 4:
            raise ValueError(f"{name}: {label} must be 4-D, got shape {a.shape}")
    stride, padding, dilation, groups = geometry
    for label, pair, least in (("stride", stride, 1), ("padding", padding, 0),
                               ("dilation", dilation, 1), ("size", size, 0)):
        if len(pair) != 2 or any(int(v) != v or v < least for v in pair):
            raise ValueError(f"{name}: {label} must be two integers >= {least}, got {pair}")
    if int(groups) != groups or groups < 1:
        raise ValueError(f"{name}: groups must be a positive integer, got {groups}")
    c_in = x.shape[1] if x is not None else w.shape[0]
    if groups > max(c_in, 1):  # (an empty layer's jobs would be counted in groups)
        raise ValueError(f"{name}: groups={groups} exceeds the {c_in} input channels")
    if c_in % groups:
        raise ValueError(f"{name}: {c_in} input channels are not divisible by groups={groups}")
    if w is not None and w.shape[0] != c_in:
        raise ValueError(f"{name}: w {w.shape} has {w.shape[0]} input channels, x has {c_in}")
    c_out = None if w is None else w.shape[1] * groups
    if y is not None:
        if c_out is not None and y.shape[1] != c_out:
            raise ValueError(f"{name}: y {y.shape} has {y.shape[1]} channels, w {w.shape} "
                             f"with groups={groups} makes {c_out}")
        if y.shape[1] % groups:
            raise ValueError(f"{name}: {y.shape[1]} output channels are not divisible by "
                             f"groups={groups}")
        if x is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: x and y batch sizes differ: {x.shape[0]} and "
                             f"{y.shape[0]}")
    if bias is not None and bias.shape not in ((c_out,), (0,)):
        raise ValueError(f"{name}: bias must have shape ({c_out},), got {bias.shape}")


def _output(name, out, shape, dtype):
    """``out`` checked against ``shape``/``dtype``, or a new array."""
    if out is None:
        return np.empty(shape, dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"{name}: out must be a C-contiguous {dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def _work(x, w):
    """Multiply-adds of any of the three maps (ignoring taps cropped at the borders)."""
    return x.shape[0] * x.shape[2] * x.shape[3] * w.size


def conv_transpose2d(x, w, bias, stride, padding, dilation, groups, out_hw, out=None,
                     parallel=None):
    """Transposed convolution ``(N, C_in, H_in, W_in) -> (N, C_out, *out_hw)``.

    ``w`` is ``(C_in, C_out // groups, kH, kW)``; ``bias`` is ``(C_out,)`` or None.
    ``out_hw`` is the output's spatial size (normally from the output-size formula);
    the result is written to ``out`` when given. ``parallel`` forces the serial
    (False) or the ``prange`` (True) driver; None picks by the amount of work.
    """
    bias = np.empty(0, x.dtype) if bias is None else bias
    _check_layer("conv_transpose2d", (stride, padding, dilation, groups), out_hw, x=x, w=w,
                 bias=bias)
    y = _output("conv_transpose2d", out, (x.shape[0], w.shape[1] * groups) + tuple(out_hw),
                x.dtype)
    launch(_conv_transpose2d_rows, _conv_transpose2d_parallel,
           (x, w, bias, y, *stride, *padding, *dilation, groups),
           y.shape[0] * y.shape[1] * y.shape[2], _work(x, w), parallel)
    return y


def conv2d(y, w, stride, padding, dilation, groups, in_hw, out=None, parallel=None):
    """Strided convolution ``(N, C_out, H_out, W_out) -> (N, C_in, *in_hw)``: the
    adjoint of ``conv_transpose2d`` in its input (so its input gradient)."""
    _check_layer("conv2d", (stride, padding, dilation, groups), in_hw, w=w, y=y)
    x = _output("conv2d", out, (y.shape[0], w.shape[0]) + tuple(in_hw), y.dtype)
    launch(_conv2d_rows, _conv2d_parallel, (y, w, x, *stride, *padding, *dilation, groups),
           x.shape[0] * x.shape[1] * x.shape[2], _work(x, w), parallel)
    return x


def weight_correlation(x, y, stride, padding, dilation, groups, kernel_hw, out=None,
                       parallel=None):
    """Correlation of ``x`` ``(N, C_in, H_in, W_in)`` with ``y``
    ``(N, C_out, H_out, W_out)`` giving ``(C_in, C_out // groups, *kernel_hw)``:
    the adjoint of ``conv_transpose2d`` in its weight (so its weight gradient)."""
    _check_layer("weight_correlation", (stride, padding, dilation, groups), kernel_hw, x=x, y=y)
    w = _output("weight_correlation", out,
                (x.shape[1], y.shape[1] // groups) + tuple(kernel_hw), x.dtype)
    launch(_weight_correlation_slices, _weight_correlation_parallel,
           (x, y, w, *stride, *padding, *dilation, groups),
           w.shape[0] * w.shape[1], _work(x, w), parallel)
    return w
