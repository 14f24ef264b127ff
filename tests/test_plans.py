"""Plans: measured on the machine at hand, remembered in a bounded cache and a JSON
file keyed by CPU and versions, the rule where measuring is off, forced by use_family.
Every plan a measurement can pick is also forced through the sweeps
(``test_functional.test_sweep_plans``) and gradcheck (``test_gradcheck``)."""
import json
import logging

import numpy as np
import pytest
import torch

import fastconvt
from conftest import assert_close, reference
from fastconvt import _dispatch, _plans


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Autotuning on, with a fresh plan directory, for layers of any size (the small
    ones here would not be timed); off again afterwards."""
    monkeypatch.setenv("FASTCONVT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_plans, "MEASURE_MIN_WORK", 0)
    fastconvt.set_autotune(True)
    yield tmp_path
    fastconvt.set_autotune(False)


def _layer(dtype=torch.float32, batch=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, 5, 5, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(16, 8, 4, 4, generator=g, dtype=dtype, requires_grad=True)
    return x, w, dict(stride=2, padding=1)


def _plan_file(directory):
    files = list(directory.glob("plans-*.json"))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_measured_plans_compute_torch_results_and_persist(measuring, dtype):
    x, w, kw = _layer(dtype)
    out = fastconvt.conv_transpose2d(x, w, **kw)
    gx, gw = torch.autograd.grad(out, (x, w), torch.ones_like(out))
    ref = reference(x, w, **kw)
    rgx, rgw = torch.autograd.grad(ref, (x, w), torch.ones_like(ref))
    for got, want in ((out, ref), (gx, rgx), (gw, rgw)):
        assert_close(got, want, dtype)
    data = json.loads(_plan_file(measuring).read_text())
    assert data["format"] == _plans.FORMAT and data["machine"] == _plans.machine()
    maps = {json.loads(key)[0] for key in data["plans"]}
    assert {"conv_transpose2d", "backward"} <= maps
    assert all(_plans.valid(plan) for plan in data["plans"].values())
    # the same results from the remembered plans
    again = fastconvt.conv_transpose2d(x, w, **kw)
    assert torch.equal(out, again)


def test_a_new_process_reads_the_plans_instead_of_measuring(measuring, monkeypatch):
    x, w, kw = _layer()
    with torch.no_grad():
        fastconvt.conv_transpose2d(x, w, **kw)
    stored = json.loads(_plan_file(measuring).read_text())["plans"]
    _dispatch._choices.clear()
    _dispatch._store.clear()  # as a new process starts

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(_plans, "measure", no_measuring)
    with torch.no_grad():
        fastconvt.conv_transpose2d(x, w, **kw)
    assert [tuple(p) for p in stored.values()] == [
        p for k, p in _dispatch._choices.items() if json.dumps(k) in stored]


def test_small_layers_take_the_rule_untimed_and_unstored(measuring, monkeypatch):
    """A layer below MEASURE_MIN_WORK multiply-adds per map is not timed and leaves
    no plan file (ever-new small shapes cost nothing); oneDNN's product is a
    candidate only from ONEDNN_MIN_WORK on."""
    monkeypatch.undo()
    monkeypatch.setenv("FASTCONVT_CACHE_DIR", str(measuring))
    fastconvt.set_autotune(True)
    measure = _plans.measure  # (with fewer than two plans it times nothing)
    monkeypatch.setattr(_plans, "measure", lambda run, plans, *a, **k: pytest.fail("measured")
                        if len(plans) > 1 else measure(run, plans, *a, **k))
    x, w, kw = _layer()  # 3 * 5 * 5 * 16 * 8 * 4 * 4 multiply-adds
    assert 3 * 5 * 5 * w.numel() < _plans.MEASURE_MIN_WORK
    fastconvt.conv_transpose2d(x, w, **kw).sum().backward()
    assert not list(measuring.glob("plans-*.json"))
    geometry = ((2, 2), (1, 1), (1, 1), 1)
    rule = ("gemm", "", "mm")
    for batch, onednn in ((32, False), (128, True)):  # 1.6M and 6.6M multiply-adds
        shapes = ((batch, 16, 5, 5), (16, 8, 4, 4))
        plans = _plans.candidates("conv_transpose2d", np.float32, shapes, geometry, (10, 10),
                                  rule)
        assert len(plans) > 1
        assert any(p[2] == "onednn" for p in plans) == (onednn and _plans.onednn_available())


def test_measure_times_nothing_for_fewer_than_two_plans():
    before = _plans.measurements()
    for plans in ([], [("gemm", "", "mm")]):
        assert _plans.measure(lambda p: pytest.fail("ran"), plans) == (None, {})
    assert _plans.measurements() == before


def test_measure_picks_the_fastest_and_drops_the_hopeless():
    calls = []

    def run(plan):
        calls.append(plan)
        import time
        time.sleep({"a": 0.002, "b": 0.0005, "c": 0.02}[plan])

    best, times = _plans.measure(run, ["a", "b", "c"], rounds=4)
    assert best == "b"
    assert calls.count("c") == 3  # warm-up and two timed rounds, then dropped
    assert calls.count("b") == 5 and set(times) == {"a", "b", "c"}


@pytest.mark.parametrize("content, why", [
    ("{not json", "unreadable"),
    (json.dumps({"format": 1, "machine": {"cpu": "another"}, "plans": {}}), "another"),
    (json.dumps({"format": 99, "plans": {}}), "another"),
])
def test_a_corrupt_or_foreign_plan_file_is_ignored_with_a_log_line(measuring, caplog, content,
                                                                   why):
    path = _dispatch._store.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    x, w, kw = _layer()
    with caplog.at_level(logging.WARNING, logger="fastconvt"):
        out = fastconvt.conv_transpose2d(x.detach(), w.detach(), **kw)
    assert_close(out, reference(x, w, **kw))
    assert any(why in r.getMessage() for r in caplog.records), caplog.text
    # and replaced by a valid one
    assert json.loads(path.read_text())["machine"] == _plans.machine()


def test_invalid_entries_are_dropped(measuring, caplog):
    x, w, kw = _layer()
    key = json.dumps(_dispatch._key("conv_transpose2d", (x.shape, w.shape), np.float32,
                                    ((2, 2), (1, 1), (1, 1), 1), (10, 10)))
    path = _dispatch._store.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": _plans.FORMAT, "machine": _plans.machine(),
                                "plans": {key: ["winograd", "", ""],
                                          key.replace("conv_transpose2d", "conv2d"):
                                          ["separate", "", ""],
                                          "not a key": ["gemm", "", "mm"]}}))
    with caplog.at_level(logging.WARNING, logger="fastconvt"):
        out = fastconvt.conv_transpose2d(x.detach(), w.detach(), **kw)
    assert_close(out, reference(x, w, **kw))
    assert "ignoring 3 invalid entries" in caplog.text
    assert _plans.valid(json.loads(path.read_text())["plans"][key])


def test_an_unwritable_cache_keeps_plans_in_memory(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCONVT_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    monkeypatch.setattr(_plans, "MEASURE_MIN_WORK", 0)
    fastconvt.set_autotune(True)
    try:
        x, w, kw = _layer()
        with caplog.at_level(logging.WARNING, logger="fastconvt"):
            out = fastconvt.conv_transpose2d(x.detach(), w.detach(), **kw)
        assert "cannot write plan file" in caplog.text
        assert len(_dispatch._choices) == 1
    finally:
        fastconvt.set_autotune(False)
    assert_close(out, reference(x, w, **kw))


def test_the_in_memory_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(_plans, "MAX_PLANS", 3)
    for size in range(2, 8):
        x = torch.randn(1, 8, size, size)
        fastconvt.conv_transpose2d(x, torch.randn(8, 8, 3, 3))
    assert len(_dispatch._choices) == 3


def test_rule_only_is_deterministic():
    fastconvt.set_autotune(False)
    x, w, kw = _layer()
    with torch.no_grad():
        fastconvt.conv_transpose2d(x, w, **kw)
    assert set(_dispatch._choices.values()) == {("gemm", "", "mm")}


def test_use_family_form_and_product():
    x, w, kw = _layer()
    ref = reference(x, w, **kw)
    for plan in [("gemm", "columns"), ("gemm", "subpixel", "mm"), ("direct",)]:
        with fastconvt.use_family(*plan):
            assert_close(fastconvt.conv_transpose2d(x, w, **kw), ref)
    with pytest.raises(ValueError, match="no form or product"):
        with fastconvt.use_family("direct", "columns"):
            pass
    with pytest.raises(ValueError, match="unknown form"):
        with fastconvt.use_family("gemm", "fft"):
            pass


@pytest.mark.skipif(not _plans.onednn_available(), reason="torch without oneDNN")
@pytest.mark.parametrize("accumulate", [False, True])
def test_onednn_product(accumulate):
    """oneDNN's product on plain operands, torch.mm's on the rest: both exact to rounding."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((37, 50), np.float32), rng.standard_normal((50, 29), np.float32)
    cases = [(a, b), (np.asfortranarray(a), b), (a, b[:, ::2]), (a.T.copy().T, b.T.copy().T),
             (a[:0], b), (a.astype(np.float64), b.astype(np.float64))]
    for left, right in cases:
        out = np.ones((left.shape[0], right.shape[1]), left.dtype)
        _dispatch.onednn_gemm(left, right, out, accumulate)
        want = left.astype(np.float64) @ right.astype(np.float64) + (1 if accumulate else 0)
        assert np.abs(out - want).max(initial=0) <= 1e-4 * np.abs(want).max(initial=1)


def test_select_plan_reports_the_measured_plans(measuring):
    x, w, kw = _layer()
    before = fastconvt.select_plan(x, w, **kw)
    assert before["forward"] == _dispatch._rule(
        _dispatch._key("conv_transpose2d", (x.shape, w.shape), np.float32,
                       ((2, 2), (1, 1), (1, 1), 1), (10, 10)), None)
    out = fastconvt.conv_transpose2d(x, w, **kw)
    torch.autograd.grad(out, (x, w), torch.ones_like(out))
    after = fastconvt.select_plan(x, w, **kw)
    assert set(after) >= {"forward", "backward"} and all(map(_plans.valid, after.values()))
    assert after["forward"] == [p for k, p in _dispatch._choices.items()
                                if k[0] == "conv_transpose2d"][0]
    assert fastconvt.select_plan(x.long(), w.long(), **kw) == {}


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("where", ["input", "grad_output"])
def test_padded_subpixel_keeps_torchs_non_finite_pattern(value, where):
    """A kernel that is not a multiple of its stride (3 at stride 2) runs the sub-pixel
    form with zero taps appended; an Inf meeting them would give NaN where torch keeps
    Inf, so such inputs take the family's other form."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    gy = torch.randn(2, 3, 10, 10, generator=g, dtype=torch.float64)
    (x if where == "input" else gy)[0, 1, 2, 3] = value
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    with fastconvt.use_family("gemm", "subpixel"):
        out = fastconvt.conv_transpose2d(*leaves, stride=2, padding=1, output_padding=1)
        got = [out, *torch.autograd.grad(out, leaves, gy)]
    ref_leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    ref = reference(*ref_leaves, stride=2, padding=1, output_padding=1)
    want = [ref, *torch.autograd.grad(ref, ref_leaves, gy)]
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
        finite = a.isfinite()
        assert_close(torch.where(finite, a, 0), torch.where(finite, b, 0))
