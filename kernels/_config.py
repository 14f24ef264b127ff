"""Compilation and threading policy for every kernel, defined once.

``FASTMATH`` allows contraction (FMA), reassociation (vectorised reductions)
and ignoring the sign of zero, but never ``nnan``/``ninf``: a NaN or Inf in
the input reaches the output exactly as it does in PyTorch.

``CACHE`` is Numba's on-disk cache; set ``FASTCONVT_NO_CACHE=1`` to turn it off
(``NUMBA_CACHE_DIR`` relocates it, e.g. for a read-only site-packages).
"""
import os
from contextlib import contextmanager

import numba

FASTMATH = {"contract", "reassoc", "nsz", "arcp"}
CACHE = os.environ.get("FASTCONVT_NO_CACHE", "0") in ("", "0")
FLOAT_DTYPES = ("float32", "float64")


@contextmanager
def num_threads(n):
    """Run Numba parallel regions on ``n`` threads (capped at Numba's pool
    size) inside the block; restore the caller's setting afterwards.

    ``numba.set_num_threads`` is per calling thread, so this never changes
    what another Python thread sees.
    """
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    previous = numba.get_num_threads()
    if n == previous:
        yield
        return
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
