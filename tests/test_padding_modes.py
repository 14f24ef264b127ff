"""``padding_mode`` 'reflect', 'replicate' and 'circular': the transposed convolution
as the exact adjoint of torch's ``nn.Conv2d(padding_mode=m)`` with the same weight.

The oracle is torch's Conv2d in that mode, evaluated in float64: ``convT_m(y)`` is
the gradient of ``<conv_m(x), y>`` with respect to ``x``, plus the bias. It is
built with ``create_graph=True``, so its own gradients (in ``y``, the weight and
the bias) are torch's too. The Conv2d maps the transposed convolution's output
space to its input space: ``nn.Conv2d(C_out, C_in, ...)``, whose weight layout
``(C_in, C_out / groups, kH, kW)`` is the transposed convolution's weight.
"""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st
from torch.autograd import gradcheck, gradgradcheck

import fastconvt
from conftest import (DTYPES, LAYOUTS, RTOL, assert_close, check_values_and_gradients,
                      draw_layer, reference, with_layout)

MODES = ("zeros", "reflect", "replicate", "circular")
FOLDING_MODES = MODES[1:]
FAMILIES = tuple(fastconvt.kernels.FAMILIES)

# ---------------------------------------------------------------------------
# the oracle: torch's Conv2d in each mode


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_hw(in_hw, kernel, kw):
    """The zeros mode's output (H, W), which every mode keeps."""
    s, p, op, d = (_pair(kw[a]) for a in ("stride", "padding", "output_padding", "dilation"))
    return tuple((i - 1) * s_ - 2 * p_ + d_ * (k - 1) + op_ + 1
                 for i, k, s_, p_, op_, d_ in zip(in_hw, kernel, s, p, op, d))


def _foldable(mode, padding, out_hw):
    """Whether torch's Conv2d(padding_mode=mode) accepts an input of size ``out_hw``."""
    if mode == "reflect":
        return all(p < n for p, n in zip(_pair(padding), out_hw))
    if mode == "circular":
        return all(p <= n for p, n in zip(_pair(padding), out_hw))
    return True


def _torch_conv(mode, weight, kw):
    """torch's ``nn.Conv2d(padding_mode=mode)`` with ``weight``, as a function of its
    input (3-D or 4-D, in the transposed convolution's output space)."""
    conv = nn.Conv2d(weight.shape[1] * kw["groups"], weight.shape[0], tuple(weight.shape[2:]),
                     kw["stride"], kw["padding"], kw["dilation"], kw["groups"], bias=False,
                     padding_mode=mode, device="meta")
    return lambda x: torch.func.functional_call(conv, {"weight": weight}, (x,))


def _conv(mode, x, weight, kw, y_hw):
    """``conv_m(x)`` cut to the transposed convolution's input size ``y_hw`` (larger
    only where ``output_padding >= stride``, which a dilation above the stride allows;
    the transposed convolution is then the adjoint of the cut map, in every mode)."""
    return _torch_conv(mode, weight, kw)(x)[..., :y_hw[0], :y_hw[1]]


def _oracle(y, weight, bias, kw, mode):
    """``convT_m(y) + bias`` in float64, as the input-gradient of torch's Conv2d;
    differentiable in ``y``, ``weight`` and ``bias`` (the upcasts are)."""
    y, weight = y.double(), weight.double()
    out_hw = _out_hw(y.shape[-2:], weight.shape[2:], kw)
    x = torch.zeros(y.shape[:-3] + (weight.shape[1] * kw["groups"],) + out_hw,
                    dtype=torch.float64, requires_grad=True)
    out, = torch.autograd.grad(_conv(mode, x, weight, kw, y.shape[-2:]), x, y,
                               create_graph=True)
    return out if bias is None else out + bias.double()[:, None, None]


def _tensors(in_shape, c_out, groups, kernel, bias, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return (make(*in_shape), make(in_shape[-3], c_out // groups, *_pair(kernel)),
            make(c_out) if bias else None)


# ---------------------------------------------------------------------------
# checks


def _check_adjoint(y, weight, kw, mode, seed=0):
    """``<conv_m(x), y> == <x, convT_m(y)>`` in float64, relative to the sum of the
    magnitudes of the terms."""
    y, weight = y.double(), weight.double()
    out = fastconvt.conv_transpose2d(y, weight, None, **kw, padding_mode=mode)
    x = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lhs = (_conv(mode, x, weight, kw, y.shape[-2:]) * y).sum().item()
    rhs = (x * out).sum().item()
    scale = (_conv(mode, x.abs(), weight.abs(), kw, y.shape[-2:]) * y.abs()).sum().item()
    assert abs(lhs - rhs) <= RTOL[torch.float64] * max(scale, 1e-30), (lhs, rhs, scale)


def _check_forward_backward(y, weight, bias, kw, mode):
    """Output, memory format and the gradients in ``y``, weight and bias against the
    float64 oracle."""
    out, _ = check_values_and_gradients(
        lambda y, w, b: fastconvt.conv_transpose2d(y, w, b, **kw, padding_mode=mode),
        lambda y, w, b: _oracle(y, w, b, kw, mode), (y, weight, bias), y.dtype)
    zeros_out = reference(y, weight, bias, **kw)
    assert out.shape == zeros_out.shape
    if out.dim() == 4:  # the zeros mode's rule: channels_last if the input or weight is
        for fmt in (torch.contiguous_format, torch.channels_last):
            assert out.is_contiguous(memory_format=fmt) == zeros_out.is_contiguous(
                memory_format=fmt)


# ---------------------------------------------------------------------------
# the sweep


@st.composite
def problems(draw, mode):
    """A random call whose padding ``mode`` can fold: tensors and keyword arguments."""
    # the padding is cut to what the mode folds (b: the output size plus twice the padding)
    limit = {"reflect": lambda b: (b - 1) // 3, "circular": lambda b: b // 3}.get(mode)
    (groups, c_in, c_out, kernel, stride, dilation, size, padding,
     output_padding) = draw_layer(draw, st, channels=2, padding=4, padding_limit=limit)
    shape = (draw(st.integers(1, 2)), c_in) + size
    y, weight, bias = _tensors(shape, c_out, groups, kernel, draw(st.booleans()),
                               seed=draw(st.integers(0, 2**31)))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "weight_channels_last",
                                   "unbatched"]))
    y, weight = with_layout(y, weight, layout)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
              dilation=dilation)
    assert _foldable(mode, padding, _out_hw(size, kernel, kw))
    return y, weight, bias, kw


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data())
def test_sweep(mode, family, data):
    """Adjoint identity in float64; float64 and float32 results and gradients against
    the input-gradient of torch's Conv2d in the same mode."""
    y, weight, bias, kw = data.draw(problems(mode))
    with fastconvt.use_family(family):
        _check_adjoint(y, weight, kw, mode)
        for dtype in DTYPES:
            _check_forward_backward(y.to(dtype), weight.to(dtype),
                                    None if bias is None else bias.to(dtype), kw, mode)


# (input shape, C_out, groups, kernel, stride, padding, output_padding, dilation, bias)
CASES = {
    "plain": ((1, 2, 3, 3), 2, 1, 3, 2, 1, 1, 1, True),
    "padding-over-half-output": ((1, 2, 3, 2), 1, 1, (5, 6), (2, 1), (4, 2), (1, 0), (2, 1),
                                 True),
    "groups-stride-op": ((2, 4, 2, 3), 2, 2, 3, (3, 2), (1, 2), (2, 1), 1, True),
    "op-above-stride": ((1, 2, 3, 3), 2, 1, 2, 1, 1, 1, 2, False),
    "unbatched": ((2, 3, 2), 2, 1, 3, 2, 1, 0, 1, True),
    "padding-equals-output": ((1, 1, 2, 2), 2, 1, 5, 1, 2, 0, 1, True),
    "padding-beyond-output": ((1, 1, 1, 2), 1, 1, (7, 3), 1, (3, 1), 0, 1, True),
    # output = stride x input: circular pads the input instead of folding the output
    "periodic": ((2, 2, 3, 4), 4, 2, (4, 3), 2, (1, 2), (0, 1), (1, 2), True),
    # ... where the GEMM family's sub-pixel forms read the periodic extension directly
    "periodic-subpixel": ((1, 2, 8, 8), 4, 1, 4, 2, 1, 0, 1, True),
}


def _case(name, dtype=torch.float64):
    shape, c_out, groups, k, s, p, op, d, bias = CASES[name]
    kw = dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)
    return _tensors(shape, c_out, groups, k, bias, dtype=dtype), kw


def _foldable_case(name, mode):
    (y, weight, _), kw = _case(name)
    return _foldable(mode, kw["padding"], _out_hw(y.shape[-2:], weight.shape[2:], kw))


FOLDABLE_CASES = [(name, mode) for name in CASES for mode in MODES if _foldable_case(name, mode)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, mode", FOLDABLE_CASES)
def test_cases(name, mode, family, dtype):
    (y, weight, bias), kw = _case(name, dtype)
    with fastconvt.use_family(family):
        _check_adjoint(y, weight, kw, mode)
        _check_forward_backward(y, weight, bias, kw, mode)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_layouts(mode, layout, dtype):
    (y, weight, bias), kw = _case("groups-stride-op", dtype)
    y, weight = with_layout(y, weight, layout)
    _check_forward_backward(y, weight, bias, kw, mode)
    out = fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode)
    assert out.dim() == y.dim()


# ---------------------------------------------------------------------------
# gradcheck and gradgradcheck


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, mode", [c for c in FOLDABLE_CASES if c[1] != "zeros"])
def test_gradcheck(name, mode, family):
    tensors, kw = _case(name)
    tensors = tuple(t.requires_grad_() for t in tensors if t is not None)
    f = lambda *ts: fastconvt.conv_transpose2d(*ts, **kw, padding_mode=mode)  # noqa: E731
    with fastconvt.use_family(family):
        assert gradcheck(f, tensors)
        assert gradgradcheck(f, tensors)


# ---------------------------------------------------------------------------
# the zeros mode, and paddings with nothing to fold


@pytest.mark.parametrize("family", FAMILIES)
def test_zeros_mode_is_the_default(family, dtype):
    (y, weight, bias), kw = _case("groups-stride-op", dtype)
    leaves = [t.requires_grad_() for t in (y, weight, bias)]
    with fastconvt.use_family(family):
        default = fastconvt.conv_transpose2d(*leaves, **kw)
        zeros = fastconvt.conv_transpose2d(*leaves, **kw, padding_mode="zeros")
        assert torch.equal(default, zeros)
        g = torch.randn(default.shape, dtype=dtype)
        for a, b in zip(torch.autograd.grad(default, leaves, g),
                        torch.autograd.grad(zeros, leaves, g)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_no_padding_means_nothing_to_fold(mode):
    (y, weight, bias), kw = _case("groups-stride-op")
    kw["padding"] = 0
    assert_close(fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode),
                 fastconvt.conv_transpose2d(y, weight, bias, **kw))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_parallel_sized(mode, family):
    """Large enough for the border kernels' parallel launch (on two or more threads)."""
    y, weight, bias = _tensors((2, 4, 32, 32), 8, 1, 4, True)
    kw = dict(stride=2, padding=5, output_padding=1, groups=1, dilation=1)
    with fastconvt.use_family(family):
        _check_forward_backward(y, weight, bias, kw, mode)


@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_empty_batch(mode, dtype):
    (y, weight, bias), kw = _case("groups-stride-op", dtype)
    y = y[:0].requires_grad_()
    out = fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode)
    assert out.shape == reference(y, weight, bias, **kw).shape
    out.sum().backward()
    assert y.grad.shape == y.shape


# ---------------------------------------------------------------------------
# errors


# input (3, 3), kernel 7, stride 1: the output is 9 - 2 * padding in each dimension
@pytest.mark.parametrize("batch", ["batched", "unbatched", "empty"])
@pytest.mark.parametrize("padding", [(2, 2), (3, 0), (0, 3), (3, 3), (4, 0), (0, 4), (4, 4)])
@pytest.mark.parametrize("mode", MODES)
def test_unfoldable_padding_raises_as_conv2d(mode, padding, batch):
    """Whatever torch's Conv2d(padding_mode=mode) does on an input of the output
    size, fastconvt does: the same exception type, or a result."""
    y, weight, bias = _tensors((1, 2, 3, 3), 2, 1, 7, True)
    y = {"batched": y, "unbatched": y[0], "empty": y[:0]}[batch]
    kw = dict(stride=1, padding=padding, output_padding=0, groups=1, dilation=1)
    out_hw = _out_hw((3, 3), (7, 7), kw)
    try:
        _torch_conv(mode, weight, kw)(torch.zeros(y.shape[:-3] + (2,) + out_hw,
                                                  dtype=torch.float64))
        expected = None
    except Exception as e:  # noqa: BLE001 -- the type is what is compared
        expected = type(e)
    assert (expected is None) == _foldable(mode, padding, out_hw)
    if expected is None:
        out = fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode)
        assert out.shape[-2:] == out_hw
    else:
        with pytest.raises(expected):
            fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode)


@pytest.mark.parametrize("bad", ["bogus", "Reflect", "reflection", "zero", ""])
def test_unknown_mode_raises_value_error(bad):
    (y, weight, bias), kw = _case("plain")
    with pytest.raises(ValueError):
        fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=bad)
    with pytest.raises(ValueError):
        nn.Conv2d(2, 3, 3, padding_mode=bad)
    with pytest.raises(ValueError):
        fastconvt.ConvTranspose2d(2, 3, 3, padding_mode=bad)


def test_padding_mode_is_keyword_only():
    (y, weight, bias), kw = _case("plain")
    with pytest.raises(TypeError):
        fastconvt.conv_transpose2d(y, weight, bias, 2, 1, 1, 1, 1, "circular")


# ---------------------------------------------------------------------------
# the module

MODULE_CONFIG = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1),
                     padding=(1, 1), output_padding=(1, 0), groups=2, dilation=(1, 2))


@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_module(mode):
    with pytest.raises(ValueError):
        nn.ConvTranspose2d(**MODULE_CONFIG, padding_mode=mode)
    torch.manual_seed(0)
    m = fastconvt.ConvTranspose2d(**MODULE_CONFIG, padding_mode=mode, dtype=torch.float64)
    tm = nn.ConvTranspose2d(**MODULE_CONFIG, dtype=torch.float64)
    assert m.padding_mode == mode
    assert m.extra_repr() == tm.extra_repr() + f", padding_mode={mode}"
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [
        (k, v.shape) for k, v in tm.state_dict().items()]
    m.load_state_dict(tm.state_dict())

    x = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    out = m(x)
    assert torch.equal(out, fastconvt.conv_transpose2d(
        x, m.weight, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation,
        padding_mode=mode))
    kw = dict(stride=m.stride, padding=m.padding, output_padding=m.output_padding,
              groups=m.groups, dilation=m.dilation)
    assert_close(out, _oracle(x, m.weight, m.bias, kw, mode))
    # output_size picks the output_padding: (5, 4) is output_padding (0, 0)
    assert out.shape[-2:] == (6, 4)
    assert torch.equal(m(x, output_size=(5, 4)), fastconvt.conv_transpose2d(
        x, m.weight, m.bias, m.stride, m.padding, 0, m.groups, m.dilation, padding_mode=mode))
    assert torch.equal(copy.deepcopy(m)(x), out)
