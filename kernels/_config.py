"""Compilation, threading and cache policy for every kernel, defined once.

``FASTMATH`` allows contraction (FMA), reassociation (vectorised reductions)
and ignoring the sign of zero, but never ``nnan``/``ninf``: a NaN or Inf in
the input reaches the output exactly as it does in PyTorch.

``CACHE`` is Numba's on-disk cache (in ``CACHE_PATH``, see :mod:`._cache`); set
``FASTCONVT_NO_CACHE=1`` to turn it off (``NUMBA_CACHE_DIR`` relocates it).

Every kernel comes as a serial function over a range of independent jobs plus a
``prange`` driver over contiguous ranges of them; :func:`launch` picks one per call.
The drivers are written out per kernel, four lines each: one generic driver taking the
serial kernel as an argument compiles, but Numba (0.68) cannot cache a function with a
dispatcher argument, so every process would compile it again on first use.
"""
import os
import sys
import threading
from contextlib import contextmanager

import numba
import numba.core.event

from . import _cache

FASTMATH = {"contract", "reassoc", "nsz", "arcp"}
# Numba's on-disk cache, in a folder named for what defines the kernels (_cache)
_CACHE_WANTED = os.environ.get("FASTCONVT_NO_CACHE", "0") in ("", "0")
CACHE_PATH = _cache.cache_path(_cache.kernels_version((sorted(FASTMATH), "nogil"))) \
    if _CACHE_WANTED else None
CACHE = CACHE_PATH is not None
if _CACHE_WANTED and not CACHE:
    _cache.log.warning("fastconvt: no writable folder for compiled kernels (NUMBA_CACHE_DIR, "
                       "the package's __pycache__, ~/.cache); kernels compile in memory, "
                       "in every process")
_cache.use(CACHE_PATH)
JIT = dict(fastmath=FASTMATH, cache=CACHE, nogil=True)
DTYPES = ("float32", "float64", "complex64", "complex128")
# Below this many multiply-adds a parallel region costs more than it saves.
PARALLEL_MIN_WORK = 1 << 16
# prange splits the jobs into this many contiguous ranges per thread (load balance)
CHUNKS_PER_THREAD = 4

# forked after fastconvt's package loaded but before these kernels (loaded on first
# use): the package noted it (read without importing it: the kernels stay torch-free)
_forked_child = bool(getattr(sys.modules.get("fastconvt"), "_forked", False))
_workqueue_lock = threading.Lock()
# per Python thread: the thread count on_threads asked for (launch applies it)
_wanted = threading.local()


def _note_fork():
    global _forked_child, _workqueue_lock
    _forked_child = True
    # a lock held by another thread at the fork stays held forever in the child
    _workqueue_lock = threading.Lock()


os.register_at_fork(after_in_child=_note_fork)


def forked_child():
    """Whether this process was forked from another after this module loaded."""
    return _forked_child


def _threading_layer():
    """Numba's threading layer, or None before its first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def launch(serial, parallel, args, n_jobs, work, use_parallel=None):
    """Run ``serial(*args, 0, n_jobs)`` or ``parallel(*args, n_chunks)``; return its
    result.

    ``use_parallel=None`` decides: parallel only for enough work, more than one
    job and more than one thread, and never in a forked child whose Numba layer is
    GNU OpenMP or not yet started (libgomp cannot start a pool there after torch's).
    The workqueue layer aborts on concurrent launches, so they are serialised
    while the layer is workqueue or not yet known.
    """
    if use_parallel is False or (use_parallel is None and (work < PARALLEL_MIN_WORK
                                                           or n_jobs < 2)):
        return serial(*args, 0, n_jobs)  # no thread-count query: it costs ~1 us
    threads = getattr(_wanted, "threads", None) or numba.get_num_threads()
    # (in a forked child a layer not yet started could be GNU OpenMP: serial too)
    if use_parallel is None and (threads < 2 or (_forked_child
                                                 and _threading_layer() in ("omp", None))):
        return serial(*args, 0, n_jobs)
    n_chunks = min(n_jobs, CHUNKS_PER_THREAD * threads)
    if _threading_layer() in (None, "workqueue"):
        with _workqueue_lock:
            return _on_numba_threads(threads, parallel, *args, n_chunks)
    return _on_numba_threads(threads, parallel, *args, n_chunks)


def _on_numba_threads(n, call, *args):
    previous = numba.get_num_threads()
    if n == previous:
        return call(*args)
    numba.set_num_threads(n)
    try:
        return call(*args)
    finally:
        numba.set_num_threads(previous)


class _CompileCounter(numba.core.event.Listener):
    """Counts Numba compilations in this process (loads from the on-disk cache are
    not compilations)."""

    def __init__(self):
        self.count = 0

    def on_start(self, event):
        pass

    def on_end(self, event):
        self.count += 1


_compiles = _CompileCounter()
numba.core.event.register("numba:compile", _compiles)


def compilations():
    """How many kernels Numba has compiled in this process so far."""
    return _compiles.count


def on_threads(n, call, *args):
    """``call(*args)`` with the parallel regions it launches on ``n`` threads (as
    :func:`num_threads`, without a context manager's cost; a serial kernel, most
    small calls, never pays for setting Numba's thread count)."""
    previous = _want(n)
    try:
        return call(*args)
    finally:
        _wanted.threads = previous


def _want(n):
    """Ask for ``n`` threads (capped at Numba's pool size) in this Python thread's
    parallel regions; return the previous request (None: Numba's own count)."""
    previous = getattr(_wanted, "threads", None)
    _wanted.threads = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    return previous


@contextmanager
def num_threads(n):
    """Run the kernels' parallel regions on ``n`` threads (capped at Numba's pool
    size) inside the block; restore the caller's setting afterwards. Per Python
    thread, like ``numba.set_num_threads``: another thread never sees it."""
    previous = _want(n)
    try:
        yield
    finally:
        _wanted.threads = previous
