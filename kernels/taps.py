"""Which input pixels a kernel tap brings onto which outputs, shared by the direct and
column forms: output ``o`` gets input ``i`` through tap ``k`` when
``o = i * stride - padding + k * dilation``. Inlined into the kernels that call them."""
from numba import njit

from ._config import JIT


@njit(inline="always", **JIT)
def tap_range(offset, stride, n_in, n_out):
    """Input indices ``i`` in ``[lo, hi)`` with ``0 <= i * stride + offset < n_out``."""
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(n_in, (n_out - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(inline="always", **JIT)
def input_row(oh, ph, kh, dh, sh, h_in):
    """The input row that kernel row ``kh`` brings onto output row ``oh``, or -1."""
    num = oh + ph - kh * dh
    ih = num // sh
    return ih if num % sh == 0 and 0 <= ih < h_in else -1


@njit(inline="always", **JIT)
def phase_run(rw, pw, kw, dw, sw, n_q, w_in):
    """Output stride phase ``rw`` of a row holds columns ``rw + sw * q``: kernel column
    ``kw`` adds input columns ``q + t`` onto its entries ``q`` in ``[q_lo, q_hi)``, a
    contiguous run (no zeros multiplied). Returns ``(t, q_lo, q_hi)``; an empty run
    where the tap does not reach the phase."""
    num = rw + pw - kw * dw
    if num % sw != 0:
        return 0, 0, 0
    t = num // sw
    return t, max(0, -t), min(n_q, w_in - t)
