"""Tensors to NumPy and back around the kernels: zero-copy views in the layout a map
computes in, outputs allocated by torch (its allocation errors and layouts), and kernel
calls on torch's thread count, reported once when a first call compiles or measures."""
import time

import torch

from . import _plans, kernels


def _np(t, channels_last=False):
    """A NumPy view of ``t``'s values (conjugate and negative views resolved),
    NCHW-contiguous, or with ``channels_last`` also a channels-last tensor's own
    memory (the dispatcher picks the layout it computes in)."""
    if t is None:
        return None
    if t.is_complex():
        t = t.resolve_conj().resolve_neg()
    if not (t.is_contiguous() or (channels_last and _is_channels_last(t))):
        t = t.contiguous()
    return t.numpy(force=False) if not t.requires_grad else t.detach().numpy()


def _is_channels_last(t):
    """Whether ``t`` is a 4-D channels-last tensor and not also NCHW-contiguous."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last)


def _empty_like_layout(shape, like):
    """An empty tensor of ``shape`` and ``like``'s dtype, channels-last where ``like``
    is (the layout its map computes in)."""
    if _is_channels_last(like):
        return torch.empty(shape, dtype=like.dtype, memory_format=torch.channels_last)
    return torch.empty(shape, dtype=like.dtype)


def _conj(t):
    """Complex conjugate (differentiable); real tensors as they are. Each map is
    bilinear without conjugation, so for complex tensors the gradient of one operand
    (torch's convention: the adjoint applied to the output gradient) uses the
    conjugate of the other."""
    return t.conj_physical() if t.is_complex() else t


# a call slower than this that compiled kernels or measured plans is reported, once per
# process: a user should not wonder why a layer's first call took seconds
SLOW_FIRST_CALL_SECONDS = 1.0
_reported_slow_call = False


def _report_slow_call(seconds, compiled, measured):
    global _reported_slow_call
    _reported_slow_call = True
    what = " and ".join(
        [f"Numba compiling {compiled} kernels (once per machine: later processes load them "
         "from Numba's on-disk cache)"] * bool(compiled)
        + [f"timing the layer's plans (once per layer shape and machine: kept in "
           f"{_plans.cache_dir()})"] * bool(measured))
    _plans.log.warning("fastconvt: a first call took %.1f s: %s. Later calls take "
                       "milliseconds; fastconvt.warmup() compiles up front. (Reported once "
                       "per process, logger 'fastconvt'.)", seconds, what)


def _on_torch_threads(call, *args):
    """``call(*args)`` with Numba on as many threads as torch uses; torch's own
    count is restored afterwards, since Numba's first parallel launch can reset it
    (numba#9387)."""
    threads = torch.get_num_threads()
    if not _reported_slow_call:
        start = time.perf_counter()
        compiled, measured = kernels.compilations(), _plans.measurements()
    try:
        return kernels.on_threads(threads, call, *args)
    finally:
        if not _reported_slow_call and time.perf_counter() - start > SLOW_FIRST_CALL_SECONDS:
            compiled, measured = (kernels.compilations() - compiled,
                                  _plans.measurements() - measured)
            if compiled or measured:
                _report_slow_call(time.perf_counter() - start, compiled, measured)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
