"""The padding modes on named cases: a worked example of each mode, an oracle by
explicit slicing, the periodic (circular) paths and the cases' gradients; the oracles
and cases of ``test_padding_modes``."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fastconvt
from fastconvt import _autograd, kernels
from conftest import assert_close
from test_padding_modes import (FAMILIES, FOLDABLE_CASES, FOLDING_MODES, MODES, _case, _oracle,
                                _out_hw, _pair)


# ---------------------------------------------------------------------------
# a worked example, and an oracle by explicit slicing


WORKED = {  # y = [1, 2, 3], w = [1, 10, 100], padding 1: the full result is
    # [1, 12, 123, 230, 300], of which the zeros mode keeps the middle three
    "zeros": [12, 123, 230],
    "circular": [12 + 300, 123, 230 + 1],
    "reflect": [12, 1 + 123 + 300, 230],
    "replicate": [1 + 12, 123, 230 + 300],
}


@pytest.mark.parametrize("axis", ["width", "height"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_worked_example(mode, family, axis, dtype):
    y = torch.tensor([[[[1.0, 2.0, 3.0]]]], dtype=dtype)
    w = torch.tensor([[[[1.0, 10.0, 100.0]]]], dtype=dtype)
    expected = torch.tensor([[[WORKED[mode]]]], dtype=dtype)
    padding = (0, 1)
    if axis == "height":
        y, w, expected, padding = y.mT, w.mT, expected.mT, (1, 0)
    with fastconvt.use_family(family):
        out = fastconvt.conv_transpose2d(y, w, padding=padding, padding_mode=mode)
    assert torch.equal(out, expected)


def _fold(full, dim, p, mode):
    """Fold the ``p`` border entries on each side of ``full`` along ``dim`` back into
    the ``n = full.shape[dim] - 2p`` middle ones, as ``mode`` pads."""
    n = full.shape[dim] - 2 * p
    left, right = full.narrow(dim, 0, p), full.narrow(dim, p + n, p)
    out = full.narrow(dim, p, n).clone()
    if mode == "circular":
        out.narrow(dim, n - p, p).add_(left)
        out.narrow(dim, 0, p).add_(right)
    elif mode == "reflect":
        out.narrow(dim, 1, p).add_(left.flip(dim))
        out.narrow(dim, n - 1 - p, p).add_(right.flip(dim))
    elif mode == "replicate":
        out.narrow(dim, 0, 1).add_(left.sum(dim, keepdim=True))
        out.narrow(dim, n - 1, 1).add_(right.sum(dim, keepdim=True))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, mode", FOLDABLE_CASES)
def test_matches_manual_fold(name, mode, family):
    """The full (unpadded) transposed convolution, folded with explicit slicing, then
    the bias: an oracle that shares nothing with torch's Conv2d or fastconvt."""
    (y, weight, bias), kw = _case(name)
    ph, pw = _pair(kw["padding"])
    full = F.conv_transpose2d(y, weight, None, kw["stride"], 0, kw["output_padding"],
                              kw["groups"], kw["dilation"])
    expected = _fold(_fold(full, -2, ph, mode), -1, pw, mode)
    if bias is not None:
        expected = expected + bias[:, None, None]
    with fastconvt.use_family(family):
        out = fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode)
    assert_close(out, expected)


def test_periodic_case_pads_the_input():
    """The "periodic" case takes the circular mode's input-padding path (its
    values are checked with every other case)."""
    (y, weight, _), kw = _case("periodic")
    out_hw = _out_hw(y.shape[-2:], weight.shape[2:], kw)
    geometry = tuple(_pair(kw[k]) for k in ("stride", "padding", "dilation")) + (kw["groups"],)
    assert out_hw == tuple(n * s for n, s in zip(y.shape[-2:], geometry[0]))
    assert _autograd._periodic_input_padding(y.shape[-2:], weight.shape[2:], geometry,
                                             out_hw) is not None


def test_periodic_subpixel_case_reads_the_periodic_input(monkeypatch):
    """With the GEMM family, the "periodic-subpixel" case runs the kernels that read
    the periodic extension of the input (forward) and of the output gradient
    (backward), not the padding path (its values are checked with every other case)."""
    (y, weight, bias), kw = _case("periodic-subpixel")
    calls = []
    for name in ("conv_transpose2d", "conv_transpose2d_backward"):
        original = getattr(kernels.gemm, name)
        monkeypatch.setattr(kernels.gemm, name, lambda *args, _f=original, _n=name, **kws:
                            calls.append((_n, kws.get("periodic"))) or _f(*args, **kws))
    with fastconvt.use_family("gemm"):
        out = fastconvt.conv_transpose2d(y.requires_grad_(), weight.requires_grad_(), bias, **kw,
                                         padding_mode="circular")
        torch.autograd.grad(out.sum(), (y, weight))
    assert calls == [("conv_transpose2d", True), ("conv_transpose2d_backward", True)]


def _complex_oracle(y, weight, bias, kw, mode):
    """The oracle for complex tensors from four real ones (the map is bilinear)."""
    real = lambda a, b: _oracle(a, b, None, kw, mode)  # noqa: E731
    out = torch.complex(real(y.real, weight.real) - real(y.imag, weight.imag),
                        real(y.real, weight.imag) + real(y.imag, weight.real))
    return out if bias is None else out + bias.to(out.dtype)[:, None, None]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_complex(mode, dtype):
    (y, weight, bias), kw = _case("groups-stride-op")
    g = torch.Generator().manual_seed(2)
    y, weight, bias = (torch.complex(t, torch.randn(t.shape, generator=g, dtype=torch.float64))
                       for t in (y, weight, bias))
    out = fastconvt.conv_transpose2d(y.to(dtype), weight.to(dtype), bias.to(dtype), **kw,
                                     padding_mode=mode)
    assert out.dtype == dtype
    expected = _complex_oracle(y.to(dtype).to(torch.complex128),
                               weight.to(dtype).to(torch.complex128),
                               bias.to(dtype).to(torch.complex128), kw, mode)
    scale = _oracle(y.abs(), weight.abs(), bias.abs(), kw, mode).abs().max().item()
    assert_close(out, expected, dtype, scale=2 * scale)


@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_complex_gradcheck(mode):
    (y, weight, bias), kw = _case("groups-stride-op")
    g = torch.Generator().manual_seed(2)
    y, weight, bias = (torch.complex(t, torch.randn(t.shape, generator=g, dtype=torch.float64))
                       .requires_grad_() for t in (y, weight, bias))
    f = lambda y, w, b: fastconvt.conv_transpose2d(y, w, b, **kw, padding_mode=mode)  # noqa: E731
    assert gradcheck(f, (y, weight, bias))
    assert gradgradcheck(f, (y, weight, bias))


@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_half(mode, dtype, rtol):
    """Computed in float32, rounded once: within the dtype's rounding of the float64
    oracle (on the same, exactly representable, inputs)."""
    (y, weight, bias), kw = _case("groups-stride-op", dtype)
    out = fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode)
    assert out.dtype == dtype
    expected = _oracle(y, weight, bias, kw, mode)
    scale = _oracle(y.abs(), weight.abs(), bias.abs(), kw, mode).abs().max().item()
    assert (out.double() - expected).abs().max().item() <= rtol * scale


@pytest.mark.parametrize("mode", FOLDING_MODES)
def test_only_the_bias_requires_grad(mode):
    (y, weight, bias), kw = _case("groups-stride-op")
    bias = bias.detach().requires_grad_()
    out = fastconvt.conv_transpose2d(y, weight, bias, **kw, padding_mode=mode)
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grad, = torch.autograd.grad(out, bias, g)
    assert_close(grad, g.sum((0, 2, 3)))


class _Tagged(torch.Tensor):
    """A ``__torch_function__`` subclass: fastconvt hands such inputs to torch."""


@pytest.mark.parametrize("name, mode", [c for c in FOLDABLE_CASES if c[1] != "zeros"])
def test_delegated_inputs_fold_with_torch(name, mode):
    """Inputs the kernels do not compute (here a tensor subclass) fold with torch
    operations: same values and gradients as the oracle."""
    (y, weight, bias), kw = _case(name)
    y, weight = y.detach().requires_grad_(), weight.detach().requires_grad_()
    tagged = y.detach().as_subclass(_Tagged).requires_grad_()
    assert fastconvt.select_family(tagged, weight) == "torch"
    out = fastconvt.conv_transpose2d(tagged, weight, bias, **kw, padding_mode=mode)
    expected = _oracle(y, weight, bias, kw, mode)
    assert_close(out.as_subclass(torch.Tensor), expected)
    g = torch.randn(expected.shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, (tagged, weight), g)
    expected_grads = torch.autograd.grad(expected, (y, weight), g)
    for actual, wanted in zip(grads, expected_grads):
        assert_close(actual.as_subclass(torch.Tensor), wanted)
