"""fastconvt.conv_transpose2d against torch: values, gradients, shapes, dtypes and
memory formats, on hand-picked cases and a hypothesis sweep."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastconvt
from conftest import (DTYPES, PLANS, assert_close, check_values_and_gradients, draw_layer,
                      plan_id, reference, with_layout)

# (N, C_in, C_out, groups, H, W, kernel, stride, padding, output_padding, dilation)
CASES = {
    "article": (1, 1, 1, 1, 4, 4, 3, 2, 1, 0, 1),
    "article-op1": (1, 1, 3, 1, 4, 4, 3, 2, 1, 1, 1),
    "dcgan-like": (2, 8, 4, 1, 4, 4, 4, 2, 1, 0, 1),
    "dcgan-first-layer": (3, 8, 4, 1, 1, 1, 4, 1, 0, 0, 1),
    "pointwise-groups": (2, 6, 4, 2, 1, 1, (3, 2), 2, 0, 0, 1),
    "1x1-input-padded": (2, 8, 4, 1, 1, 1, 4, 1, 1, 0, 1),
    "stride1": (2, 3, 5, 1, 5, 6, 3, 1, 1, 0, 1),
    "groups": (2, 6, 4, 2, 5, 4, 3, 2, 1, 1, 1),
    "depthwise": (2, 4, 4, 4, 6, 5, 4, 2, 1, 0, 1),
    "depthwise-multiplier": (1, 3, 6, 3, 5, 5, 3, 2, 0, 1, 1),
    "non-square": (2, 3, 2, 1, 4, 7, (3, 2), (2, 3), (1, 0), (1, 2), (1, 2)),
    "dilated-op": (1, 2, 3, 1, 5, 5, 3, 1, 2, 1, 2),
    "large-kernel-stride": (1, 2, 2, 2, 3, 2, 8, 4, 2, 0, 1),
    "1x1-kernel-op": (3, 5, 1, 1, 9, 6, 1, 4, 0, 3, 1),
    "padding-crops-to-1x1": (1, 2, 2, 1, 3, 3, 5, 1, 3, 0, 1),
}


def _case_tensors(case, dtype, bias=True, seed=0):
    n, c_in, c_out, groups, h, w, k, s, p, op, d = case
    k = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64).to(dtype)
    weight = torch.randn(c_in, c_out // groups, *k, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(c_out, generator=g, dtype=torch.float64).to(dtype) if bias else None
    return x, weight, b, dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)


def _check_forward_backward(x, weight, b, kw, dtype):
    """Output, memory format and all three gradients against the float64 oracle."""
    out, ref = check_values_and_gradients(
        lambda x, w, b: fastconvt.conv_transpose2d(x, w, b, **kw),
        lambda x, w, b: reference(x, w, b, **kw), (x, weight, b), dtype)
    for fmt in (torch.contiguous_format, torch.channels_last):
        if out.dim() == 4:
            assert out.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("family", fastconvt.kernels.FAMILIES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", CASES)
def test_cases(name, bias, family, dtype):
    with fastconvt.use_family(family):
        _check_forward_backward(*_case_tensors(CASES[name], dtype, bias), dtype)


@pytest.mark.parametrize("name", ["groups", "non-square", "dilated-op"])
def test_unbatched(name, dtype):
    x, weight, b, kw = _case_tensors(CASES[name], dtype)
    _check_forward_backward(x[0], weight, b, kw, dtype)
    assert fastconvt.conv_transpose2d(x[0], weight, b, **kw).dim() == 3


@pytest.mark.parametrize("layout", ["channels_last", "weight_channels_last", "both",
                                    "transposed", "sliced"])
@pytest.mark.parametrize("name", ["groups", "1x1-kernel-op", "depthwise"])
def test_memory_layouts(name, layout, dtype):
    # "1x1-kernel-op" on a channels_last input is the case whose float32 backward
    # corrupts torch's heap; the float64 oracle keeps it safe to test.
    x, weight, b, kw = _case_tensors(CASES[name], dtype)
    if layout == "sliced":
        x = torch.cat([x, x], dim=3)[..., ::2]
    else:
        x, weight = with_layout(x, weight, layout)
    assert layout == "weight_channels_last" or not x.is_contiguous()
    _check_forward_backward(x, weight, b, kw, dtype)


def test_empty_batch(dtype):
    x, weight, b, kw = _case_tensors(CASES["groups"], dtype)
    x = x[:0].requires_grad_()
    out = fastconvt.conv_transpose2d(x, weight, b, **kw)
    assert out.shape == reference(x, weight, b, **kw).shape
    assert out.shape[0] == 0
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_nan_propagates_like_torch(dtype):
    x, weight, b, kw = _case_tensors(CASES["groups"], dtype)
    x[0, 1, 2, 3] = float("nan")
    weight[1, 0, 0, 0] = float("inf")
    out = fastconvt.conv_transpose2d(x, weight, b, **kw)
    ref = reference(x, weight, b, **kw)
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.isinf(), ref.isinf())


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_output_gradient_reaches_the_gradients_like_torch(value):
    """A DCGAN-like layer whose gradients take the GEMM family's sub-pixel backward: an
    Inf or NaN in the output gradient reaches the same entries of both gradients as in
    torch, no more."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 16, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 8, 32, 32, dtype=torch.float64)
    grad[0, 0, 0, 31] = value
    got = torch.autograd.grad(fastconvt.conv_transpose2d(x, weight, stride=2, padding=1),
                              (x, weight), grad)
    want = torch.autograd.grad(reference(x, weight, None, stride=2, padding=1), (x, weight),
                               grad)
    for g, r in zip(got, want):
        assert torch.equal(g.isnan(), r.isnan()) and torch.equal(g.isinf(), r.isinf())


@st.composite
def problems(draw):
    """A random valid call: tensors, keyword arguments and the dtype."""
    (groups, c_in, c_out, kernel, stride, dilation, size, padding,
     output_padding) = draw_layer(draw, st, size=6)
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    shape = (draw(st.integers(0, 3)), c_in) + size
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    weight = torch.randn(c_in, c_out // groups, *kernel, generator=g,
                         dtype=torch.float64).to(dtype)
    b = torch.randn(c_out, generator=g, dtype=torch.float64).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "channels_last", "weight_channels_last",
                                   "transposed", "unbatched"]))
    if not (layout == "unbatched" and x.shape[0] == 0):
        x, weight = with_layout(x, weight, layout)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
              dilation=dilation)
    return x, weight, draw(st.sampled_from([b, None])), kw, dtype


@pytest.mark.parametrize("family", fastconvt.kernels.FAMILIES)
@settings(max_examples=300, deadline=None)
@given(problem=problems())
def test_sweep(family, problem):
    """Every kernel family, forced, over the whole argument space."""
    with fastconvt.use_family(family):
        _check_forward_backward(*problem)


@pytest.mark.parametrize("plan", [p for p in PLANS if p[1]], ids=plan_id)
@settings(max_examples=100, deadline=None)
@given(problem=problems())
def test_sweep_plans(plan, problem):
    """Every form and product a measured plan can pick, forced, over the whole
    argument space (a form that does not apply falls back to the family's choice)."""
    with fastconvt.use_family(*plan):
        _check_forward_backward(*problem)


@settings(max_examples=100, deadline=None)
@given(problem=problems())
def test_sweep_dispatched(problem):
    """Whatever the dispatcher picks."""
    _check_forward_backward(*problem)


def test_repeated_calls_revalidate_what_changed():
    """A repeated call reuses its validation only for the same operand types, devices,
    dtypes, shapes, strides and argument types."""
    x, weight, b, kw = _case_tensors(CASES["groups"], torch.float32)
    first = fastconvt.conv_transpose2d(x, weight, b, **kw)
    assert_close(first, reference(x, weight, b, **kw))
    # the same shapes in channels_last: another layout, another output format
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = fastconvt.conv_transpose2d(x_cl, weight, b, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, first)
    # bools where ints were: torch's TypeError, not the cached call
    with pytest.raises(TypeError):
        fastconvt.conv_transpose2d(x, weight, b, **dict(kw, stride=(True, 2)))
    # float64 operands with the same shapes
    assert fastconvt.conv_transpose2d(x.double(), weight.double(), b.double(),
                                      **kw).dtype == torch.float64
    # a bias of the wrong length
    with pytest.raises(RuntimeError, match="bias"):
        fastconvt.conv_transpose2d(x, weight, b[:-1], **kw)
    # a __torch_function__ subclass goes to torch
    tagged = x.as_subclass(_Tagged)
    assert type(fastconvt.conv_transpose2d(tagged, weight, b, **kw)) is _Tagged


class _Tagged(torch.Tensor):
    pass


@pytest.mark.parametrize("weight_channels_last", [False, True])
def test_unbatched_input_strides_do_not_set_the_output_layout(weight_channels_last):
    """torch's rule: an unbatched input with channels innermost still gives a contiguous
    output; a channels_last weight a channels_last one ('same' on k4/s2 is padding 1)."""
    x = torch.randn(10, 10, 4).permute(2, 0, 1)
    w = torch.randn(4, 3, 4, 4)
    if weight_channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1)
    for padding in (1, "same"):
        out = fastconvt.conv_transpose2d(x, w, stride=2, padding=padding)
        assert out.stride() == want.stride()
        assert_close(out, want)
