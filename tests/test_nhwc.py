"""The channels-last column form (``kernels.nhwc``): its kernels on NHWC arrays against
torch in float64, over several batch chunks and groups; the dispatcher's layouts around
it (channels-last outputs, NCHW operands copied in); the workspace bound it keeps."""
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import fastconvt
from conftest import DTYPES, assert_close, reference
from fastconvt.kernels import nhwc


def _nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous().numpy()


@st.composite
def layers(draw):
    """A float64 layer: any kernel, stride, padding, dilation, groups."""
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k, s, d = (tuple(draw(st.integers(lo, hi)) for _ in range(2))
               for lo, hi in ((1, 4), (1, 3), (1, 2)))
    size = tuple(draw(st.integers(1, 6)) for _ in range(2))
    p = tuple(draw(st.integers(0, ((n - 1) * si + di * (ki - 1)) // 2))
              for n, si, di, ki in zip(size, s, d, k))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = torch.randn(draw(st.integers(1, 5)), c_in, *size, generator=g, dtype=torch.float64)
    w = torch.randn(c_in, c_out // groups, *k, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=groups)


@settings(max_examples=60, deadline=None)
@given(layer=layers(), chunk_images=st.integers(1, 3), parallel=st.booleans())
def test_maps_against_torch_over_batch_chunks(layer, chunk_images, parallel):
    x, w, b, kw = layer
    y = F.conv_transpose2d(x, w, b, **kw)
    hw, (k_h, k_w) = x.shape[2] * x.shape[3], w.shape[2:]
    with mock.patch.object(nhwc, "CHUNK_BYTES", chunk_images * hw * k_h * k_w * w.shape[1] * 8):
        _check_maps(x, w, b, kw, y, parallel)


def _check_maps(x, w, b, kw, y, parallel):
    geometry = tuple(kw[name] for name in ("stride", "padding", "dilation", "groups"))
    xn, wn = _nhwc(x), _nhwc(w)
    got = nhwc.conv_transpose2d(xn, wn, b.numpy(), *geometry, y.shape[2:], parallel=parallel)
    np.testing.assert_allclose(got, _nhwc(y), atol=1e-12)
    gy = torch.randn_like(y)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    want_gx, want_gw = torch.autograd.grad(F.conv_transpose2d(xg, wg, b, **kw), (xg, wg), gy)
    gyn = _nhwc(gy)
    gx = nhwc.conv2d(gyn, wn, *geometry, x.shape[2:], parallel=parallel)
    gw = nhwc.weight_correlation(xn, gyn, *geometry, w.shape[2:], parallel=parallel)
    np.testing.assert_allclose(gx, _nhwc(want_gx), atol=1e-12)
    np.testing.assert_allclose(gw, _nhwc(want_gw), atol=1e-12)
    both = nhwc.conv_transpose2d_backward(xn, wn, gyn, *geometry, parallel=parallel)
    np.testing.assert_array_equal(both[0], gx)
    np.testing.assert_allclose(both[1], gw, atol=1e-12)


def test_chunks_are_whole_images_within_the_chunk_bytes():
    with mock.patch.object(nhwc, "CHUNK_BYTES", 2 * 3 * 4 * 2 * 2 * 5 * 8):
        layer = nhwc._Layer(5, (3, 4), 6, (6, 2, 2, 5), 1, ((1, 1),) * 3, np.float64, None)
        assert [chunk[:4] for chunk in layer.chunks()] == [
            (0, 2, 0, 24), (2, 2, 24, 48), (4, 1, 48, 60)]


def test_tap_table_lists_the_taps_that_reach_each_output():
    table = nhwc.tap_table(7, 3, 2, 1, 2, 3)  # o = 2 i - 1 + 2 k
    for o in range(7):
        taps = [(k, i) for k in range(3) for i in range(3) if 2 * i - 1 + 2 * k == o]
        assert table[o, 0] == len(taps)
        assert [tuple(table[o, 1 + 2 * t:3 + 2 * t]) for t in range(len(taps))] == taps


def test_workspace_bound_is_kept_or_refused():
    x, w = np.ones((2, 4, 4, 3)), np.ones((3, 2, 2, 5))
    with pytest.raises(ValueError, match="workspace"):
        nhwc.conv_transpose2d(x, w, None, (2, 2), (0, 0), (1, 1), 1, (8, 8),
                              workspace_bytes=4 * 4 * 2 * 2 * 5 * 8 - 1)
    assert nhwc.fits((4, 4), (2, 2), 5, 8, 4 * 4 * 2 * 2 * 5 * 8)


def test_rejects_non_contiguous_and_complex():
    x = np.ones((2, 4, 4, 3))
    with pytest.raises(ValueError, match="C-contiguous"):
        nhwc.conv_transpose2d(x[:, ::2], np.ones((3, 2, 2, 5)), None, (2, 2), (0, 0), (1, 1),
                              1, (4, 8))
    with pytest.raises(ValueError, match="real floating"):
        nhwc.conv_transpose2d(x.astype(complex), np.ones((3, 2, 2, 5), complex), None, (2, 2),
                              (0, 0), (1, 1), 1, (8, 8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_layout, w_layout", [("cl", "cl"), ("cl", "nchw"), ("nchw", "cl"),
                                                ("nchw", "nchw")])
def test_forced_plan_in_each_layout(dtype, x_layout, w_layout):
    """Forced, the form computes on any operands (complex ones by the columns form) and
    returns torch's values and output layout; its gradients follow."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(4, 3, 4, 3, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(6, generator=g, dtype=torch.float64).to(dtype)
    cl = torch.channels_last
    x = (x.contiguous(memory_format=cl) if x_layout == "cl" else x).requires_grad_()
    w = (w.contiguous(memory_format=cl) if w_layout == "cl" else w).requires_grad_()
    kw = dict(stride=2, padding=1, groups=2)
    with fastconvt.use_family("gemm", "nhwc"):
        y = fastconvt.conv_transpose2d(x, w, b, **kw)
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
        grads = torch.autograd.grad(y, (x, w), gy)
    want = reference(x, w, b, **kw)
    assert_close(y, want, dtype)
    assert y.is_contiguous(memory_format=cl) == (x_layout == "cl" or w_layout == "cl")
    for got, want_grad in zip(grads, torch.autograd.grad(want, (x, w), gy.double())):
        assert_close(got, want_grad, dtype)


def test_a_callers_workspace_bound_caps_the_chunks():
    layer = nhwc._Layer(64, (8, 8), 4, (4, 3, 3, 8), 1, ((1, 1), (0, 0), (1, 1)), np.float64,
                        8 * 8 * 3 * 3 * 8 * 8 * 2)
    assert layer.images == 2 and layer._cols.nbytes == 8 * 8 * 3 * 3 * 8 * 8 * 2


@pytest.mark.parametrize("parallel", [True, False])
def test_an_empty_input_plane_gives_the_bias(parallel):
    y = nhwc.conv_transpose2d(np.ones((2, 0, 3, 2)), np.ones((2, 3, 3, 1)), np.arange(1.0, 2.0),
                              (1, 1), (0, 0), (1, 1), 1, (2, 5), parallel=parallel)
    np.testing.assert_array_equal(y, np.ones((2, 2, 5, 1)))
    x = nhwc.conv2d(np.ones((1, 2, 5, 1)), np.ones((2, 3, 3, 1)), (1, 1), (0, 0), (1, 1), 1,
                    (0, 3), parallel=parallel)
    assert x.shape == (1, 0, 3, 2)
