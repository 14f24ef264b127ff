"""Each kernel family called directly on NumPy arrays, against torch and against
the adjoint identities that tie its three maps together."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fastconvt import kernels

FAMILIES = kernels.FAMILIES
RTOL = {np.float32: 1e-4, np.float64: 1e-10}


@st.composite
def geometries(draw):
    groups = draw(st.integers(1, 3))
    pair = lambda lo, hi: (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))  # noqa: E731
    kernel, stride, dilation, size = pair(1, 5), pair(1, 4), pair(1, 3), pair(1, 7)
    padding = pair(0, 4)
    # any output size works for the kernels, not only the formula's
    out_hw = tuple(max(1, (i - 1) * s - 2 * p + d * (k - 1) + 1 + draw(st.integers(-2, 2)))
                   for i, s, p, d, k in zip(size, stride, padding, dilation, kernel))
    shapes = dict(n=draw(st.integers(0, 3)), c_in=groups * draw(st.integers(1, 3)),
                  c_out_g=draw(st.integers(1, 3)), size=size, kernel=kernel, out_hw=out_hw)
    return (stride, padding, dilation, groups), shapes, draw(st.sampled_from([np.float32,
                                                                              np.float64]))


def _arrays(geometry, shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    groups = geometry[3]
    x = rng.standard_normal((shapes["n"], shapes["c_in"]) + shapes["size"]).astype(dtype)
    w = rng.standard_normal((shapes["c_in"], shapes["c_out_g"]) + shapes["kernel"]).astype(dtype)
    y = rng.standard_normal((shapes["n"], shapes["c_out_g"] * groups)
                            + shapes["out_hw"]).astype(dtype)
    b = rng.standard_normal(shapes["c_out_g"] * groups).astype(dtype)
    return x, w, y, b


def _torch_conv_transpose(x, w, b, geometry, out_hw):
    """torch's transposed convolution for any output size: the uncropped
    (padding 0) result, shifted by the padding and cut or zero-extended."""
    stride, padding, dilation, groups = geometry
    t = lambda a: torch.from_numpy(a).double()  # noqa: E731
    full = F.conv_transpose2d(t(x), t(w), None, stride, 0, 0, groups, dilation)
    out = torch.zeros(full.shape[:2] + out_hw, dtype=torch.float64)
    (ph, pw), (h, w_) = padding, out_hw
    window = full[:, :, ph:ph + h, pw:pw + w_]
    out[:, :, :window.shape[2], :window.shape[3]] = window
    if b is not None:
        out += t(b)[:, None, None]
    return out.numpy()


def _close(actual, expected, dtype, scale):
    """Error within RTOL of ``scale``, the largest sum of the terms' magnitudes."""
    assert actual.shape == expected.shape and actual.dtype == dtype
    error = np.abs(actual.astype(np.float64) - expected).max() if expected.size else 0.0
    assert error <= RTOL[dtype] * max(scale, 1e-30), (error, scale)


def _dot(a, b):
    return float(np.vdot(a.astype(np.float64), b.astype(np.float64)))


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=150, deadline=None)
@given(problem=geometries())
def test_family_against_torch(family, parallel, problem):
    geometry, shapes, dtype = problem
    k = FAMILIES[family]
    x, w, y, b = _arrays(geometry, shapes, dtype)
    out = k.conv_transpose2d(x, w, b, *geometry, shapes["out_hw"], parallel=parallel)
    bound = _torch_conv_transpose(abs(x), abs(w), abs(b), geometry, shapes["out_hw"])
    _close(out, _torch_conv_transpose(x, w, b, geometry, shapes["out_hw"]), dtype,
           bound.max() if bound.size else 0.0)


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=150, deadline=None)
@given(problem=geometries())
def test_family_adjoints(family, parallel, problem):
    """<T(x, w), y> == <x, C(y, w)> == <w, W(x, y)> for any output size."""
    geometry, shapes, dtype = problem
    k = FAMILIES[family]
    x, w, y, _ = _arrays(geometry, shapes, dtype)
    t = _dot(k.conv_transpose2d(x, w, None, *geometry, shapes["out_hw"], parallel=parallel), y)
    c = _dot(x, k.conv2d(y, w, *geometry, shapes["size"], parallel=parallel))
    wc = _dot(w, k.weight_correlation(x, y, *geometry, shapes["kernel"], parallel=parallel))
    scale = np.sqrt(x.size * y.size * w.size) + 1.0
    tol = RTOL[dtype] * scale
    assert abs(t - c) <= tol and abs(t - wc) <= tol, (t, c, wc)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_rejects_bad_arrays(family):
    k = FAMILIES[family]
    x = np.ones((1, 2, 3, 3), np.float32)
    w = np.ones((2, 1, 2, 2), np.float64)
    geometry = ((1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(TypeError, match="dtype"):
        k.conv_transpose2d(x, w, None, *geometry, (4, 4))
    with pytest.raises(ValueError, match="contiguous"):
        k.conv_transpose2d(x[..., ::2], w.astype(np.float32), None, *geometry, (3, 2))
    with pytest.raises(TypeError, match="dtype"):
        k.conv2d(x.astype(np.int64), w.astype(np.int64), *geometry, (3, 3))


_X, _W, _Y = np.ones((1, 4, 3, 3)), np.ones((4, 2, 2, 2)), np.ones((1, 2, 4, 4))
_LAYER = ((1, 1), (0, 0), (1, 1), 1)
_MISFITS = [  # (map, operands, geometry, size, what the message names)
    ("conv_transpose2d", (_X, _W, np.ones(3)), _LAYER, (4, 4), r"bias must have shape \(2,\)"),
    ("conv_transpose2d", (_X, _W, np.ones((2, 1))), _LAYER, (4, 4), "bias must have shape"),
    ("conv_transpose2d", (_X, np.ones((3, 2, 2, 2)), None), _LAYER, (4, 4),
     "3 input channels, x has 4"),
    ("conv_transpose2d", (_X[0], _W, None), _LAYER, (4, 4), "x must be 4-D"),
    ("conv_transpose2d", (_X, _W, None), ((1, 1), (0, 0), (1, 1), 3), (4, 4),
     "not divisible by groups=3"),
    ("conv_transpose2d", (_X, _W, None), ((0, 1), (0, 0), (1, 1), 1), (4, 4), "stride must be"),
    ("conv_transpose2d", (_X, _W, None), ((1, 1), (-1, 0), (1, 1), 1), (4, 4),
     "padding must be"),
    ("conv_transpose2d", (_X, _W, None), _LAYER, (4, -1), "size must be"),
    ("conv2d", (np.ones((1, 3, 4, 4)), _W), _LAYER, (3, 3), "has 3 channels"),
    ("conv2d", (_Y, _W), ((1, 1), (0, 0), (1, 1), 0), (3, 3), "groups must be"),
    ("weight_correlation", (_X, np.ones((2, 2, 4, 4))), _LAYER, (2, 2), "batch sizes differ"),
    ("weight_correlation", (_X, np.ones((1, 3, 4, 4))), ((1, 1), (0, 0), (1, 1), 2), (2, 2),
     "3 output channels are not divisible"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, operands, geometry, size, message", _MISFITS)
def test_family_rejects_operands_that_do_not_fit_one_layer(family, name, operands, geometry,
                                                           size, message):
    """The kernels index by the operands' shapes without bounds checks: a bias, weight,
    batch or geometry that does not fit the layer raises ValueError naming it, before
    anything reads past an array."""
    with pytest.raises(ValueError, match=message):
        getattr(FAMILIES[family], name)(*operands, *geometry, size)


def test_gemm_backward_rejects_a_gradient_that_does_not_fit():
    with pytest.raises(ValueError, match="has 3 channels"):
        kernels.gemm.conv_transpose2d_backward(_X, _W, np.ones((1, 3, 4, 4)), *_LAYER)


@pytest.mark.parametrize("form", [{}, {"subpixel": False}, {"subpixel": True}],
                         ids=["direct", "gemm-columns", "gemm-sub-pixel"])
def test_read_only_arrays(form):
    """Read-only inputs (memory maps, ``np.frombuffer``) give the same results as
    writeable ones."""
    k = FAMILIES["direct" if not form else "gemm"]
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((4, 3, 4, 4)), np.ones(3)
    geometry = ((2, 2), (1, 1), (1, 1), 1)
    y = k.conv_transpose2d(x, w, b, *geometry, (10, 10), **form)
    calls = [lambda *a: k.conv_transpose2d(*a[:3], *geometry, (10, 10), **form),
             lambda *a: k.conv2d(a[3], a[1], *geometry, (5, 5), **form),
             lambda *a: k.weight_correlation(a[0], a[3], *geometry, (4, 4), **form)]
    if form:
        calls.append(lambda *a: k.conv_transpose2d_backward(a[0], a[1], a[3], *geometry, **form))
    frozen = [a.copy() for a in (x, w, b, y)]
    for a in frozen:
        a.flags.writeable = False
    for call in calls:
        got, want = call(*frozen), call(x, w, b, y)
        for got, want in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want))):
            np.testing.assert_array_equal(got, want)


def _products():
    """The GEMM family's products: NumPy's (the kernels' default) and the ones the
    dispatcher passes (torch.mm, oneDNN's where available)."""
    from fastconvt import _dispatch, _plans

    return {"numpy": kernels.workspace.numpy_gemm, "torch-mm": _dispatch.torch_gemm,
            **({"onednn": _dispatch.onednn_gemm} if _plans.onednn_available() else {})}


@pytest.mark.parametrize("product", list(_products()))
@pytest.mark.parametrize("workspace_bytes", [1, 600], ids=["one-channel", "few-images"])
@settings(max_examples=40, deadline=None)
@given(problem=geometries())
def test_gemm_chunks(workspace_bytes, product, problem):
    """Small workspaces split the batch into chunks, and a single image's products
    into blocks of output channels; results do not change, with every product."""
    gemm = _products()[product]
    geometry, shapes, dtype = problem
    x, w, y, b = _arrays(geometry, shapes, dtype)
    g = kernels.gemm
    images, channels = kernels.workspace.chunking(x.shape[0], x.shape[1], w.shape[1],
                                                  shapes["kernel"], shapes["size"], x.itemsize,
                                                  workspace_bytes)
    assert images >= 1 and 1 <= channels <= w.shape[1]
    if workspace_bytes == 1:
        assert (images, channels) == (1, 1)
    for name, args, size in [("conv_transpose2d", (x, w, b), shapes["out_hw"]),
                             ("conv2d", (y, w), shapes["size"]),
                             ("weight_correlation", (x, y), shapes["kernel"])]:
        whole = getattr(g, name)(*args, *geometry, size, gemm=gemm)
        chunked = getattr(g, name)(*args, *geometry, size, workspace_bytes=workspace_bytes,
                                   gemm=gemm)
        bound = np.abs(whole).max() if whole.size else 0.0
        _close(chunked, whole.astype(np.float64), dtype, bound * 10)


@st.composite
def subpixel_geometries(draw):
    """Kernel sizes that are multiples of the strides, dilation 1: where the GEMM
    family's sub-pixel forward applies (forced in the test that uses this)."""
    geometry, shapes, dtype = draw(geometries())
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    kernel = tuple(s * draw(st.integers(1, 3)) for s in stride)
    padding = tuple(draw(st.integers(0, k)) for k in kernel)
    out_hw = tuple(max(1, (i - 1) * s - 2 * p + k + draw(st.integers(0, s - 1)))
                   for i, s, p, k in zip(shapes["size"], stride, padding, kernel))
    shapes = dict(shapes, kernel=kernel, out_hw=out_hw)
    return (stride, padding, (1, 1), geometry[3]), shapes, dtype


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
@settings(max_examples=100, deadline=None)
@given(problem=subpixel_geometries())
def test_gemm_subpixel_forward(parallel, problem):
    geometry, shapes, dtype = problem
    x, w, _, b = _arrays(geometry, shapes, dtype)
    out = kernels.gemm.conv_transpose2d(x, w, b, *geometry, shapes["out_hw"], parallel=parallel,
                                        subpixel=True)
    bound = _torch_conv_transpose(abs(x), abs(w), abs(b), geometry, shapes["out_hw"])
    _close(out, _torch_conv_transpose(x, w, b, geometry, shapes["out_hw"]), dtype,
           bound.max() if bound.size else 0.0)


def _torch_gradients(x, w, y, geometry, out_hw):
    """``(C(y, w), W(x, y))``, the input and weight gradients of ``<T(x, w), y>``,
    by torch's autograd through :func:`_torch_conv_transpose` in float64."""
    xt, wt = (torch.from_numpy(a).double().requires_grad_() for a in (x, w))
    stride, padding, dilation, groups = geometry
    full = F.conv_transpose2d(xt, wt, None, stride, 0, 0, groups, dilation)
    out = torch.zeros(full.shape[:2] + out_hw, dtype=torch.float64)
    window = full[:, :, padding[0]:padding[0] + out_hw[0], padding[1]:padding[1] + out_hw[1]]
    out[:, :, :window.shape[2], :window.shape[3]] = window
    gx, gw = torch.autograd.grad((out * torch.from_numpy(y).double()).sum(), (xt, wt),
                                 allow_unused=True)
    return tuple(np.zeros(a.shape) if g is None else g.numpy() for g, a in ((gx, x), (gw, w)))


def _gemm_gradients(x, w, y, geometry, shapes, **options):
    """``(gx, gw)`` of the GEMM family's fused backward, then of its two maps apart."""
    g = kernels.gemm
    return (g.conv_transpose2d_backward(x, w, y, *geometry, **options)
            + (g.conv2d(y, w, *geometry, shapes["size"], **options),
               g.weight_correlation(x, y, *geometry, shapes["kernel"], **options)))


@pytest.mark.parametrize("workspace_bytes", [None, 600], ids=["whole", "few-images"])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
@settings(max_examples=60, deadline=None)
@given(problem=subpixel_geometries())
def test_gemm_subpixel_backward(parallel, workspace_bytes, problem):
    """The sub-pixel form of both gradients (forced), fused and map by map, against
    torch's autograd."""
    geometry, shapes, dtype = problem
    x, w, y, _ = _arrays(geometry, shapes, dtype)
    got = _gemm_gradients(x, w, y, geometry, shapes, parallel=parallel,
                          workspace_bytes=workspace_bytes, subpixel=True)
    bounds = _torch_gradients(abs(x), abs(w), abs(y), geometry, shapes["out_hw"])
    for got, want, bound in zip(got, 2 * _torch_gradients(x, w, y, geometry, shapes["out_hw"]),
                                2 * bounds):
        _close(got, want, dtype, bound.max() if bound.size else 0.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=60, deadline=None)
@given(problem=subpixel_geometries(), value=st.sampled_from([np.inf, -np.inf, np.nan]),
       where=st.floats(0, 1, exclude_max=True))
def test_gemm_subpixel_backward_non_finite_gradient_as_torch(problem, value, where):
    """An Inf or NaN in the output gradient reaches both gradients exactly where it does
    in torch's (the sub-pixel grid's zero overhang must not turn it into NaN elsewhere)."""
    geometry, shapes, _ = problem
    x, w, y, _ = _arrays(geometry, shapes, np.float64)
    if y.size == 0:
        return
    y.ravel()[int(where * y.size)] = value
    fused = kernels.gemm.conv_transpose2d_backward(x, w, y, *geometry, subpixel=True)
    for got, want in zip(fused, _torch_gradients(x, w, y, geometry, shapes["out_hw"])):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
@settings(max_examples=60, deadline=None)
@given(problem=subpixel_geometries(), value=st.sampled_from([np.inf, -np.inf, np.nan]),
       where=st.floats(0, 1, exclude_max=True))
def test_gemm_subpixel_forward_non_finite_weight_as_torch(parallel, problem, value, where):
    """An Inf or NaN weight reaches the output exactly where it does in torch's (the
    phase columns' zeros off the image must not turn it into NaN elsewhere)."""
    geometry, shapes, _ = problem
    x, w, _, b = _arrays(geometry, shapes, np.float64)
    if w.size == 0:
        return
    w.ravel()[int(where * w.size)] = value
    got = kernels.gemm.conv_transpose2d(x, w, b, *geometry, shapes["out_hw"], parallel=parallel,
                                        subpixel=True)
    want = _torch_conv_transpose(x, w, b, geometry, shapes["out_hw"])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


def test_gemm_subpixel_forward_only_where_it_applies():
    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 1, 3, 3))
    with pytest.raises(ValueError, match="sub-pixel form needs kernel sizes"):
        kernels.gemm.conv_transpose2d(x, w, None, (2, 2), (1, 1), (1, 1), 1, (6, 6),
                                      subpixel=True)


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
@settings(max_examples=60, deadline=None)
@given(problem=subpixel_geometries())
def test_gemm_periodic_forward(parallel, problem):
    """``periodic=True`` reads the input's periodic extension: torch's transposed
    convolution of the input tiled far enough on each side that every contributing
    pixel is in it, with the padding shifted by the tiling."""
    geometry, shapes, dtype = problem
    x, w, _, b = _arrays(geometry, shapes, dtype)
    if shapes["n"] == 0:
        return
    out = kernels.gemm.conv_transpose2d(x, w, b, *geometry, shapes["out_hw"], parallel=parallel,
                                        periodic=True)
    stride, padding, dilation, groups = geometry
    tiles = [(k + p + o) // s + 1 for k, p, o, s in zip(shapes["kernel"], padding,
                                                        shapes["out_hw"], stride)]
    tiled = np.pad(x, ((0, 0), (0, 0), (tiles[0],) * 2, (tiles[1],) * 2), mode="wrap")
    shifted = (stride, tuple(p + t * s for p, t, s in zip(padding, tiles, stride)), dilation,
               groups)
    bound = _torch_conv_transpose(abs(tiled), abs(w), abs(b), shifted, shapes["out_hw"])
    _close(out, _torch_conv_transpose(tiled, w, b, shifted, shapes["out_hw"]), dtype,
           bound.max() if bound.size else 0.0)


def test_gemm_periodic_forward_needs_the_subpixel_form():
    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 1, 3, 3))
    with pytest.raises(ValueError, match="periodic input needs the sub-pixel form"):
        kernels.gemm.conv_transpose2d(x, w, None, (2, 2), (1, 1), (1, 1), 1, (6, 6),
                                      periodic=True)


@pytest.mark.parametrize("form, problems", [(False, geometries()),
                                             (True, subpixel_geometries())],
                         ids=["columns", "subpixel"])
@settings(max_examples=60, deadline=None)
@given(data=st.data(), parallel=st.booleans())
def test_gemm_periodic_backward(form, problems, data, parallel):
    """``periodic=True`` reads the output gradient's periodic extension: the gradients
    of ``<full, y_ext>``, where ``full`` is torch's uncropped (padding 0) transposed
    convolution and ``y_ext[f] = y[(f - p) % H_out]`` (float64 autograd)."""
    geometry, shapes, dtype = data.draw(problems)
    x, w, y, _ = _arrays(geometry, shapes, dtype)
    got = _gemm_gradients(x, w, y, geometry, shapes, parallel=parallel, subpixel=form,
                          periodic=True)
    stride, padding, dilation, groups = geometry

    def gradients(x, w, y):
        xt, wt = (torch.from_numpy(a).double().requires_grad_() for a in (x, w))
        full = F.conv_transpose2d(xt, wt, None, stride, 0, 0, groups, dilation)
        rows, cols = ((np.arange(f) - p) % n for f, p, n in zip(full.shape[2:], padding,
                                                                y.shape[2:]))
        y_ext = torch.from_numpy(y[:, :, rows][:, :, :, cols]).double()
        return [g.numpy() for g in torch.autograd.grad((full * y_ext).sum(), (xt, wt))]

    for got, want, bound in zip(got, 2 * gradients(x, w, y),
                                2 * gradients(abs(x), abs(w), abs(y))):
        _close(got, want, dtype, bound.max() if bound.size else 0.0)


@pytest.mark.parametrize("by_taps", [False, True], ids=["rows", "taps"])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
@settings(max_examples=60, deadline=None)
@given(problem=geometries())
def test_gemm_column_forward_both_scatters(by_taps, parallel, problem):
    """The column form's two scatters (the rule picks by output row length)."""
    geometry, shapes, dtype = problem
    x, w, _, b = _arrays(geometry, shapes, dtype)
    out = kernels.gemm.conv_transpose2d(x, w, b, *geometry, shapes["out_hw"], parallel=parallel,
                                        subpixel=False, by_taps=by_taps)
    bound = _torch_conv_transpose(abs(x), abs(w), abs(b), geometry, shapes["out_hw"])
    _close(out, _torch_conv_transpose(x, w, b, geometry, shapes["out_hw"]), dtype,
           bound.max() if bound.size else 0.0)


@pytest.mark.parametrize("workspace_bytes", [None, 1, 600], ids=["whole", "one-channel", "few"])
@settings(max_examples=60, deadline=None)
@given(problem=geometries())
def test_gemm_fused_backward(workspace_bytes, problem):
    """Both gradients from one gather of the output gradient equal the two maps."""
    geometry, shapes, dtype = problem
    x, w, y, _ = _arrays(geometry, shapes, dtype)
    g = kernels.gemm
    gx, gw = g.conv_transpose2d_backward(x, w, y, *geometry, workspace_bytes=workspace_bytes)
    want_x = g.conv2d(y, w, *geometry, shapes["size"])
    want_w = g.weight_correlation(x, y, *geometry, shapes["kernel"])
    for got, want in ((gx, want_x), (gw, want_w)):
        bound = np.abs(want).max() if want.size else 0.0
        _close(got, want.astype(np.float64), dtype, bound * 10)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_misfit_after_a_fitting_call_still_raises(family):
    """Entry points remember operands that fit; what changed is checked again."""
    module = FAMILIES[family]
    x = np.ones((2, 4, 3, 3), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    geometry = ((2, 2), (1, 1), (1, 1), 2)
    module.conv_transpose2d(x, w, np.ones(4, np.float32), *geometry, (5, 5))
    with pytest.raises(ValueError, match="bias"):
        module.conv_transpose2d(x, w, np.ones(3, np.float32), *geometry, (5, 5))
    with pytest.raises(ValueError, match="C-contiguous"):
        module.conv_transpose2d(np.asfortranarray(x), w, None, *geometry, (5, 5))
    with pytest.raises(TypeError, match="dtype"):
        module.conv_transpose2d(x, w.astype(np.float64), None, *geometry, (5, 5))
