"""The dtypes besides float32 and float64: float16 and bfloat16 (computed in float32,
rounded once to the input's dtype), complex64 and complex128 (computed natively),
each against torch's own result in that dtype and an exact float64/complex128
reference; integer and mixed dtypes behave exactly as torch's
``F.conv_transpose2d`` does.

What torch 2.13 does on the CPU (checked when this file was written):
float16, bfloat16, complex64 and complex128 run forward and backward, in every
memory format. float16/bfloat16 accumulate in float32, but where torch takes its
slow path (e.g. dilation > 1) it rounds each kernel tap's partial sum to the
dtype, so its results can be an ulp or so off where fastconvt's are within half
an ulp. Complex gradients are the conjugate Wirtinger derivatives (for
``y = A x``, ``grad_x = A^H grad_y``). int64 is *computed*
(slow_conv_transpose2d); int32, int16, int8, uint8 and bool raise
NotImplementedError; mismatched input/weight dtypes raise RuntimeError, while a
float32/float64 input and weight accept a real bias of another dtype.

torch 2.13's own float16/bfloat16 kernels corrupt the heap (segfaults, or wrong
values in later calls) on some geometries, e.g. (see TORCH_CRASHES):
``F.conv_transpose2d(x, w, stride=3, padding=(0, 1), dilation=3)`` with x
(1, 1, 2, 2) and w (1, 1, 2, 1), float16, then backward to ``x``; and with x
(1, 1, 1, 3), w (1, 3, 4, 4), ``padding=(3, 0), dilation=2``, bfloat16, the
forward alone. So torch's half-precision results serve only on the fixed
cases below (checked under glibc's malloc checking); everything else is
compared with the exact reference, which is stricter anyway.
"""
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.autograd import gradcheck, gradgradcheck

import fastconvt
from conftest import RTOL, assert_close, draw_layer, with_layout

HALF_DTYPES = (torch.float16, torch.bfloat16)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)
NEW_DTYPES = HALF_DTYPES + COMPLEX_DTYPES
INT_DTYPES = (torch.int64, torch.int32, torch.uint8, torch.bool)
FAMILIES = tuple(fastconvt.kernels.FAMILIES)

# float32 accumulation error of a float16/bfloat16 result, relative to the sum of
# the magnitudes of its terms: K terms cost at most K * 2**-24 (the worst case
# for K ~ 300; the bias gradients' longer sums never come near their worst case)
F32_ACCUMULATION = 2e-5

_name = lambda d: str(d).split(".")[-1]  # noqa: E731

# (N, C_in, C_out, groups, H, W, kernel, stride, padding, output_padding, dilation)
CASES = {
    "stride2-op": (2, 8, 6, 1, 5, 4, 3, 2, 1, 1, 1),  # the rule's GEMM choice
    "groups": (2, 6, 4, 2, 5, 4, 3, 2, 1, 1, 1),
    "depthwise": (2, 4, 4, 4, 6, 5, 4, 2, 1, 0, 1),
    "non-square-dilated": (1, 3, 2, 1, 4, 7, (3, 2), (2, 3), (1, 0), (1, 2), (1, 2)),
    "1x1-kernel-op": (2, 5, 1, 1, 5, 4, 1, 4, 0, 3, 1),
}
# enough multiply-adds for the kernels' parallel drivers (grad_weight's per-thread buffers)
PARALLEL_CASE = (2, 16, 16, 1, 6, 6, 4, 2, 1, 0, 1)
LAYOUTS = ("contiguous", "channels_last", "weight_channels_last", "unbatched")  # of conftest's


def _upcast(t):
    """``t`` exactly in float64, or complex128 if complex."""
    if t is None:
        return None
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def _magnitude(t):
    return None if t is None else t.abs().to(torch.float64)


def _randn(shape, dtype, g):
    """Standard normal in ``dtype`` (complex: independent real and imaginary parts)."""
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=torch.complex128).to(dtype)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _case_tensors(case, dtype, layout="contiguous", bias=True, seed=0):
    n, c_in, c_out, groups, h, w, k, s, p, op, d = case
    k = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(seed)
    x, weight = _randn((n, c_in, h, w), dtype, g), _randn((c_in, c_out // groups) + k, dtype, g)
    b = _randn((c_out,), dtype, g) if bias else None
    x, weight = with_layout(x, weight, layout)
    return x, weight, b, dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)


def _assert_le(error, bound, what):
    excess = error - bound
    i = int(excess.flatten().argmax())
    assert excess.max().item() <= 0, (
        f"{what}: error {error.flatten()[i].item():.3g} > bound {bound.flatten()[i].item():.3g} "
        f"at flat index {i} of {tuple(error.shape)}")


def _check_values(got, want_torch, ref, ref_abs, dtype, what, taps):
    """``got`` (fastconvt, in ``dtype``) against torch's result in ``dtype`` (None:
    not compared) and the exact reference ``ref``; ``ref_abs`` is the reference on
    magnitudes (the sum of the terms' magnitudes, which bounds rounding where terms
    cancel); ``taps`` is kH * kW."""
    assert got.dtype == dtype, (what, got.dtype)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    if ref.numel() == 0:
        return
    got, ref, ref_abs = _upcast(got.detach()), ref.detach(), ref_abs.detach().abs()
    want_torch = None if want_torch is None else _upcast(want_torch.detach())
    if dtype in HALF_DTYPES:
        info = torch.finfo(dtype)
        half_ulp = 0.5 * info.eps * ref.abs()  # correct rounding costs at most this
        slack = F32_ACCUMULATION * ref_abs + 0.5 * info.smallest_normal * info.eps  # subnormals
        error = (got - ref).abs()
        if want_torch is not None:
            torch_error = (want_torch - ref).abs()
            # torch's slow path rounds each tap's partial sum of its column-to-image
            # accumulation (and the bias addition) to the dtype: it may be this far off
            torch_bound = 0.5 * info.eps * (taps + 2) * ref_abs
            _assert_le((got - want_torch).abs(), half_ulp + slack + torch_bound,
                       f"{what}: vs torch")
            # at least about as accurate as torch: its error plus half an ulp
            _assert_le(error, torch_error + half_ulp + slack, f"{what}: less accurate than torch")
        # computed in float32 and rounded once: within half an ulp of the exact value
        _assert_le(error, half_ulp + slack, f"{what}: not rounded once from float32")
    else:
        scale = max(ref_abs.max().item(), 1e-30)
        rtol = RTOL[torch.float64] if dtype == torch.complex128 else RTOL[torch.float32]
        # complex64: the reference only (torch's complex64 has float32 rounding of its own)
        wants = (("torch", want_torch),) if dtype == torch.complex128 else ()
        for name, want in wants + (("reference", ref),):
            if want is not None:
                error = (got - want).abs().max().item()
                assert error <= rtol * scale, \
                    f"{what} vs {name}: error {error:.3g}, scale {scale:.3g}"


@contextmanager
def _torch_serial():
    """torch's own computations on one thread. On a loaded machine its parallel
    regions wait for busy cores: tiny transposed convolutions took ~100 ms
    (measured: 150x the single-threaded time); fastconvt keeps the caller's count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_forward_backward(x, weight, b, kw, dtype, backward=True, against_torch=True):
    """Output (values, dtype, shape, memory format) and the three gradients against
    the exact reference and, unless ``against_torch`` is false, torch in ``dtype``."""
    tensors = [t for t in (x, weight, b) if t is not None]
    call = lambda f, ts: f(ts[0], ts[1], ts[2] if b is not None else None, **kw)  # noqa: E731
    taps = weight.shape[2] * weight.shape[3]
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = call(fastconvt.conv_transpose2d, leaves)
    backward = backward and out.numel() > 0
    if backward:
        grad_out = _randn(out.shape, dtype, torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(out, leaves, grad_out)
    with _torch_serial():
        ref_leaves = [_upcast(t).detach().requires_grad_() for t in tensors]
        abs_leaves = [_magnitude(t).requires_grad_() for t in tensors]
        ref, ref_abs = call(F.conv_transpose2d, ref_leaves), call(F.conv_transpose2d, abs_leaves)
        torch_out = None
        if against_torch:
            with torch.no_grad():
                torch_out = call(F.conv_transpose2d, tensors)
        if backward:
            ref_grads = torch.autograd.grad(ref, ref_leaves, _upcast(grad_out))
            abs_grads = torch.autograd.grad(ref_abs, abs_leaves, _magnitude(grad_out))
            torch_grads = (None,) * len(tensors)
            if against_torch and dtype == torch.complex128:
                torch_grads = ref_grads  # the same computation
            elif against_torch and dtype in HALF_DTYPES:
                # from contiguous copies: torch's channels_last backward has corrupted
                # the heap (float32, 1x1 kernel, output_padding); values do not
                # depend on the layout
                torch_leaves = [t.detach().contiguous().requires_grad_() for t in tensors]
                torch_grads = torch.autograd.grad(call(F.conv_transpose2d, torch_leaves),
                                                  torch_leaves, grad_out)
    _check_values(out, torch_out, ref, ref_abs, dtype, "output", taps)
    if out.dim() == 4:
        layout_oracle = ref if torch_out is None else torch_out
        for fmt in (torch.contiguous_format, torch.channels_last):
            assert out.is_contiguous(memory_format=fmt) == layout_oracle.is_contiguous(
                memory_format=fmt), fmt
    if not backward:
        return
    for name, got, want, exact, bound, leaf in zip("xwb", grads, torch_grads, ref_grads,
                                                    abs_grads, leaves):
        assert got.shape == leaf.shape
        _check_values(got, want, exact, bound, dtype, f"grad_{name}", taps)


# ---------------------------------------------------------------------------
# float16 and bfloat16

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=_name)
def test_half(dtype, name, layout, family):
    with fastconvt.use_family(family):
        _check_forward_backward(*_case_tensors(CASES[name], dtype, layout), dtype)


# geometries on which torch's float16/bfloat16 kernels corrupt the heap: (x, w, kwargs)
TORCH_CRASHES = {
    "float16-grad-input": ((1, 1, 2, 2), (1, 1, 2, 1), dict(stride=3, padding=(0, 1),
                                                          dilation=3)),
    "bfloat16-forward": ((1, 1, 1, 3), (1, 3, 4, 4), dict(padding=(3, 0), dilation=2)),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", TORCH_CRASHES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=_name)
def test_half_where_torch_crashes(dtype, name, family):
    x_shape, w_shape, kw = TORCH_CRASHES[name]
    g = torch.Generator().manual_seed(0)
    x, weight, b = _randn(x_shape, dtype, g), _randn(w_shape, dtype, g), _randn(w_shape[1:2],
                                                                              dtype, g)
    with fastconvt.use_family(family):
        _check_forward_backward(x, weight, b, kw, dtype, against_torch=False)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=_name)
def test_half_no_bias(dtype):
    _check_forward_backward(*_case_tensors(CASES["groups"], dtype, bias=False), dtype)


def test_float16_accumulates_in_float32():
    """Partial sums beyond float16's range (65504) do not overflow; a total beyond
    it is inf, as in torch."""
    x = torch.full((2, 3, 2, 2), 40000.0, dtype=torch.float16)
    w = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float16).reshape(3, 1, 1, 1)
    for family in FAMILIES:
        with fastconvt.use_family(family):
            out, inf = fastconvt.conv_transpose2d(x, w), fastconvt.conv_transpose2d(x, w.abs())
        with _torch_serial():
            assert torch.equal(out, F.conv_transpose2d(x, w))
            assert torch.equal(inf, F.conv_transpose2d(x, w.abs()))
        assert (out == 40000).all() and (inf == float("inf")).all()


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=_name)
def test_half_nan_propagates_like_torch(dtype):
    x, weight, b, kw = _case_tensors(CASES["groups"], dtype)
    x[0, 1, 2, 3] = float("nan")
    weight[1, 0, 0, 0] = float("inf")
    for family in FAMILIES:
        with fastconvt.use_family(family):
            out = fastconvt.conv_transpose2d(x, weight, b, **kw)
        with _torch_serial():
            ref = F.conv_transpose2d(x, weight, b, **kw)
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.isinf(), ref.isinf())


# ---------------------------------------------------------------------------
# complex64 and complex128

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", COMPLEX_DTYPES, ids=_name)
def test_complex(dtype, name, layout, family):
    with fastconvt.use_family(family):
        _check_forward_backward(*_case_tensors(CASES[name], dtype, layout), dtype)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", COMPLEX_DTYPES, ids=_name)
def test_complex_gradients_are_the_adjoint(dtype, family):
    """torch's convention, checked without torch's autograd: for the linear maps
    ``y = A x`` and ``y = B w``, ``<y, g> = <x, A^H g> = <w, B^H g>``; the bias
    gradient is ``g`` summed over batch and pixels (no conjugation)."""
    x, weight, b, kw = _case_tensors(CASES["groups"], dtype)
    x, weight, b = (t.requires_grad_() for t in (x, weight, b))
    with fastconvt.use_family(family):
        y = fastconvt.conv_transpose2d(x, weight, b, **kw)
        g = _randn(y.shape, dtype, torch.Generator().manual_seed(1))
        gx, gw, gb = torch.autograd.grad(y, (x, weight, b), g)
    inner = lambda a, c: (_upcast(a.detach()).conj() * _upcast(c)).sum()  # noqa: E731
    y_linear = y.detach() - b.detach().reshape(-1, 1, 1)
    want = inner(y_linear, g)
    scale = (_magnitude(y_linear) * _magnitude(g)).sum().item()
    rtol = RTOL[torch.float64] if dtype == torch.complex128 else RTOL[torch.float32]
    for name, got in (("x", inner(x, gx)), ("w", inner(weight, gw))):
        assert (got - want).abs().item() <= rtol * scale, (name, got, want)
    bias_scale = _magnitude(g).sum((0, 2, 3)).max().item()
    assert (_upcast(gb) - _upcast(g).sum((0, 2, 3))).abs().max().item() <= rtol * bias_scale


# (input shape, C_out, groups, kernel, stride, padding, output_padding, dilation, bias)
GRADCHECK_CASES = {
    "stride2-op": ((2, 2, 3, 3), 3, 1, 3, 2, 1, 1, 1, True),
    "groups": ((1, 4, 3, 2), 2, 2, 2, 2, 0, 1, 1, True),
    "dilation-op": ((1, 2, 3, 3), 2, 1, 2, 1, 1, 1, 2, True),
    "non-square-no-bias": ((1, 2, 2, 4), 2, 1, (3, 1), (1, 2), (1, 0), (0, 1), (2, 1), False),
    "unbatched": ((2, 3, 2), 2, 1, 3, 2, 1, 0, 1, True),
}


@pytest.mark.parametrize("view", [torch.conj, torch._neg_view], ids=["conj", "neg"])
@pytest.mark.parametrize("family", FAMILIES)
def test_complex_conjugate_and_negative_views(view, family):
    """Inputs that are lazy conjugate / negative views compute as their values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, dtype=torch.complex128, generator=g)
    w = torch.randn(4, 3, 3, 2, dtype=torch.complex128, generator=g)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    with fastconvt.use_family(family):
        got = fastconvt.conv_transpose2d(view(x), view(w), **kw)
    resolved = lambda t: view(t).resolve_conj().resolve_neg()  # noqa: E731
    assert_close(got, F.conv_transpose2d(resolved(x), resolved(w), **kw), torch.float64)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", GRADCHECK_CASES)
def test_complex_gradcheck(name, family):
    shape, c_out, groups, k, s, p, op, d, bias = GRADCHECK_CASES[name]
    k = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(0)
    make = lambda *size: _randn(size, torch.complex128, g).requires_grad_()  # noqa: E731
    x, w = make(*shape), make(shape[-3], c_out // groups, *k)
    b = make(c_out) if bias else None
    kw = dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)
    f = lambda x, w, b: fastconvt.conv_transpose2d(x, w, b, **kw)  # noqa: E731
    with fastconvt.use_family(family):
        assert gradcheck(f, (x, w, b))
        assert gradgradcheck(f, (x, w, b))


# ---------------------------------------------------------------------------
# hypothesis sweeps over the whole argument space, each kernel family forced

@st.composite
def problems(draw, dtypes):
    """A random valid call in one of ``dtypes``: tensors, keyword arguments, dtype."""
    (groups, c_in, c_out, kernel, stride, dilation, size, padding,
     output_padding) = draw_layer(draw, st)
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = _randn((draw(st.integers(1, 3)), c_in) + size, dtype, g)
    weight = _randn((c_in, c_out // groups) + kernel, dtype, g)
    b = _randn((c_out,), dtype, g)
    x, weight = with_layout(x, weight, draw(st.sampled_from(LAYOUTS)))
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
              dilation=dilation)
    return x, weight, draw(st.sampled_from([b, None])), kw, dtype


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=25, deadline=None, database=None)
@given(problem=problems([torch.complex128]))
def test_complex128_sweep(family, problem):
    with fastconvt.use_family(family):
        _check_forward_backward(*problem)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=20, deadline=None, database=None)
@given(problem=problems(HALF_DTYPES))
def test_half_sweep(family, problem):
    """Against the float64 reference only: torch 2.13's float16/bfloat16 kernels
    corrupt the heap on some of these geometries (see the module docstring)."""
    with fastconvt.use_family(family):
        _check_forward_backward(*problem, against_torch=False)
