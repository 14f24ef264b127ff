"""The dispatcher: the rule's picks, forcing a family, autotuning."""
import pytest
import torch

import fastconvt
from fastconvt import _plans
from conftest import assert_close, reference


def _tensors(n, c_in, c_out, groups, size, k, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, size, size, generator=g, dtype=dtype)
    w = torch.randn(c_in, c_out // groups, k, k, generator=g, dtype=dtype)
    return x, w


def test_rule_picks_gemm_for_channel_heavy_and_direct_for_depthwise():
    x, w = _tensors(4, 64, 32, 1, 8, 4)
    assert fastconvt.select_family(x, w, stride=2, padding=1) == "gemm"
    x, w = _tensors(2, 16, 16, 16, 8, 4)
    assert fastconvt.select_family(x, w, stride=2, padding=1, groups=16) == "direct"
    x, w = _tensors(1, 1, 1, 1, 4, 3)
    assert fastconvt.select_family(x, w, stride=2, padding=1) == "direct"


def test_select_family_reports_torch_for_delegated_inputs():
    x, w = _tensors(1, 8, 8, 1, 4, 3, dtype=torch.float64)
    x, w = x.long(), w.long()
    assert fastconvt.select_family(x, w) == "torch"
    with pytest.raises(RuntimeError, match="channels"):
        fastconvt.select_family(*_tensors(1, 8, 8, 1, 4, 3)[:1], _tensors(1, 4, 8, 1, 4, 3)[1])


def test_use_family_forces_and_restores():
    x, w = _tensors(4, 64, 32, 1, 8, 4)
    with fastconvt.use_family("direct"):
        assert fastconvt.select_family(x, w) == "direct"
        with fastconvt.use_family("gemm"):
            assert fastconvt.select_family(x, w) == "gemm"
        assert fastconvt.select_family(x, w) == "direct"
    assert fastconvt.select_family(x, w) == "gemm"
    with pytest.raises(ValueError, match="unknown kernel family"):
        with fastconvt.use_family("winograd"):
            pass


def test_forced_family_does_not_leak_into_the_cache():
    x, w = _tensors(3, 32, 16, 1, 5, 3)
    with fastconvt.use_family("direct"):
        fastconvt.conv_transpose2d(x, w, stride=2)
    assert fastconvt.select_family(x, w, stride=2) == "gemm"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autotune_picks_a_family_and_keeps_results(dtype, monkeypatch):
    x, w = _tensors(2, 16, 16, 1, 6, 3, dtype)
    x.requires_grad_()
    monkeypatch.setattr(_plans, "MEASURE_MIN_WORK", 0)  # a small layer, timed all the same
    fastconvt.set_autotune(True)
    try:
        measured = _plans.measurements()
        out = fastconvt.conv_transpose2d(x, w, stride=2, padding=1)
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert _plans.measurements() > measured  # the first calls measured their plans
        measured = _plans.measurements()
        again = fastconvt.conv_transpose2d(x, w, stride=2, padding=1)
        torch.autograd.grad(again.sum(), x)
        assert _plans.measurements() == measured  # and later calls reuse them
    finally:
        fastconvt.set_autotune(False)
    ref = reference(x, w, stride=2, padding=1)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    assert_close(out, ref, dtype)
    assert torch.equal(out, again)
    assert_close(grad, ref_grad, dtype)


def _slow_call_messages(monkeypatch, caplog, compiles):
    """Messages of two calls that each take longer than the threshold (set to 0), with
    ``compiles`` giving kernels.compilations()'s successive answers."""
    import logging

    from fastconvt import _bridge

    monkeypatch.setattr(_bridge, "_reported_slow_call", False)
    monkeypatch.setattr(_bridge, "SLOW_FIRST_CALL_SECONDS", 0.0)
    monkeypatch.setattr(fastconvt.kernels, "compilations", compiles)
    x, w = torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.randn(2, 2, 3, 3,
                                                                    dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="fastconvt"):
        fastconvt.conv_transpose2d(x, w)
        fastconvt.conv_transpose2d(x, w, stride=2)
    return [r.getMessage() for r in caplog.records if "first call took" in r.getMessage()]


def test_a_slow_call_that_compiled_is_reported_once(monkeypatch, caplog):
    counts = iter(range(1000))
    messages = _slow_call_messages(monkeypatch, caplog, lambda: next(counts))
    assert len(messages) == 1 and "Numba compiling 1 kernels" in messages[0]


def test_a_slow_call_that_compiled_nothing_is_not_reported(monkeypatch, caplog):
    assert _slow_call_messages(monkeypatch, caplog, lambda: 0) == []
