"""Winograd F(2x2, 3x3): the forward and input gradient of 3x3 stride-1 layers, forced
through the plan that a measurement may pick, against the float64 oracle; its float32
error against the plain GEMM form's; the switch that keeps measurements from it."""
import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastconvt
from conftest import DTYPES, assert_close, reference, with_layout
from fastconvt import _plans
from fastconvt.kernels import winograd
from test_functional import _check_forward_backward

WINOGRAD_PLANS = [("gemm", "winograd", "mm")] + (
    [("gemm", "winograd", "onednn")] if _plans.onednn_available() else [])


@st.composite
def stride1_problems(draw):
    """A random 3x3 stride-1 call (the geometry Winograd computes): any batch, channels,
    image size (odd sizes leave partial tiles), padding 0-3, bias or not, layout."""
    c_in, c_out = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    padding = tuple(draw(st.integers(0, min(3, (n + 1) // 2))) for n in (h, w))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = torch.randn(draw(st.integers(1, 3)), c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_in, c_out, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64)
    x, weight = with_layout(x.to(dtype), weight.to(dtype), draw(st.sampled_from(
        ["contiguous", "channels_last", "weight_channels_last", "unbatched"])))
    return x, weight, draw(st.sampled_from([b.to(dtype), None])), dict(padding=padding), dtype


@pytest.mark.parametrize("plan", WINOGRAD_PLANS, ids="-".join)
@settings(max_examples=150, deadline=None)
@given(problem=stride1_problems())
def test_sweep(plan, problem):
    with fastconvt.use_family(*plan):
        _check_forward_backward(*problem)


@pytest.mark.parametrize("map_name", ["conv_transpose2d", "conv2d"])
def test_kernels_against_torch_with_partial_tiles(map_name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 7, 4))
    w = rng.standard_normal((5, 3, 3, 3))
    if map_name == "conv_transpose2d":
        got = winograd.conv_transpose2d(x, w, np.arange(3.0), (1, 1), (2, 0), (1, 1), 1, (5, 6))
        want = torch.nn.functional.conv_transpose2d(
            torch.from_numpy(x), torch.from_numpy(w), torch.arange(3.0, dtype=torch.float64),
            padding=(2, 0))
    else:
        y = np.ascontiguousarray(x[:, :3])
        got = winograd.conv2d(y, w, (1, 1), (1, 2), (1, 1), 1, (7, 6))
        want = torch.nn.functional.conv2d(torch.from_numpy(y), torch.from_numpy(w),
                                          padding=(1, 2))
    assert_close(torch.from_numpy(got), want)


def test_rejects_other_geometries():
    x, w = np.ones((1, 2, 4, 4)), np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="Winograd"):
        winograd.conv_transpose2d(x, w, None, (2, 2), (1, 1), (1, 1), 1, (7, 7))
    with pytest.raises(ValueError, match="Winograd"):
        winograd.conv2d(x, np.ones((2, 2, 4, 4)), (1, 1), (1, 1), (1, 1), 1, (3, 3))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_values_give_torchs_pattern(value):
    """The transforms would meet an Inf with its negative; the plain form takes over."""
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    x[0, 1, 2, 3] = value
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    with fastconvt.use_family("gemm", "winograd"):
        got = fastconvt.conv_transpose2d(x, w, padding=1)
    want = reference(x, w, padding=1)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())


def test_float32_error_within_twice_the_plain_forms():
    """The benchmark's stride-1 layer: Winograd's float32 error against the float64
    oracle stays within 2x the plain GEMM form's (the rule for a plan the default
    may pick)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 32, 32, generator=g)
    w = torch.randn(64, 64, 3, 3, generator=g) / 24
    ref = reference(x, w, padding=1)
    errors = {}
    for form in ("columns", "subpixel", "winograd"):
        with fastconvt.use_family("gemm", form):
            out = fastconvt.conv_transpose2d(x, w, padding=1)
        errors[form] = (out.double() - ref).abs().max().item()
    assert errors["winograd"] <= 2 * min(errors["columns"], errors["subpixel"]), errors


def test_the_switch_keeps_measurements_from_it(monkeypatch):
    monkeypatch.setattr(_plans, "MEASURE_MIN_WORK", 0)  # a small layer, timed all the same
    x, w = np.ones((2, 16, 6, 6), np.float32), np.ones((16, 16, 3, 3), np.float32)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    args = ("conv_transpose2d", np.float32, (x.shape, w.shape), geometry, (6, 6),
            ("gemm", "", "mm"))
    assert any(p[1] == "winograd" for p in _plans.candidates(*args))
    monkeypatch.setattr(_plans, "WINOGRAD", False)
    assert not any(p[1] == "winograd" for p in _plans.candidates(*args))
    assert not _plans.valid(("gemm", "winograd", "mm"))
    monkeypatch.setenv("FASTCONVT_WINOGRAD", "0")
    assert importlib.reload(_plans).WINOGRAD is False
    monkeypatch.delenv("FASTCONVT_WINOGRAD")
    assert importlib.reload(_plans).WINOGRAD is True
