"""``padding='same'`` and ``'valid'``: TensorFlow's ``conv2d_transpose`` sizes and crop.

Two oracles, both in float64. JAX's ``lax.conv_transpose(..., padding='SAME'/'VALID',
transpose_kernel=True)`` with the torch-layout weight (zeros mode, one group). And the
definition in every padding mode: the transposed convolution is the adjoint of
``F.pad(x, (left, right, top, bottom), mode)`` followed by ``F.conv2d`` (the crop's
``start`` rows before, the rest after), computed as that map's input gradient, so the
oracle's own gradients are torch's too.
"""
import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.autograd import gradcheck, gradgradcheck

import fastconvt
import jax
from conftest import PLANS_FLOAT64, assert_close, check_values_and_gradients, plan_id

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")

MODES = ("zeros", "reflect", "replicate", "circular")


def _crop(padding, in_hw, kernel_hw, stride, dilation):
    """(start, end, out) per dimension, from the issue's definition."""
    rows = []
    for n, k, s, d in zip(in_hw, kernel_hw, stride, dilation):
        k_eff = d * (k - 1) + 1
        full = (n - 1) * s + k_eff
        out = n * s if padding == "same" else n * s + max(k_eff - s, 0)
        start = (full - out) // 2 if out <= full else 0
        rows.append((start, full - out - start if out <= full else 0, out))
    return rows


def _conv(mode, x, weight, stride, dilation, groups, rows, in_hw):
    """``nn.Conv2d``'s map in ``mode`` on the output space, padded by the crop's rows."""
    (top, bottom, _), (left, right, _) = rows
    padded = F.pad(x, (left, right, top, bottom), mode="constant" if mode == "zeros" else mode)
    return F.conv2d(padded, weight, None, stride, 0, dilation, groups)[..., :in_hw[0],
                                                                       :in_hw[1]]


def _oracle(y, weight, bias, padding, stride, dilation, groups, mode):
    """The transposed convolution as the input gradient of :func:`_conv`, plus the bias."""
    y, weight = y.double(), weight.double()
    rows = _crop(padding, y.shape[-2:], weight.shape[2:], stride, dilation)
    x = torch.zeros(y.shape[:-3] + (weight.shape[1] * groups, rows[0][2], rows[1][2]),
                    dtype=torch.float64, requires_grad=True)
    out, = torch.autograd.grad(_conv(mode, x, weight, stride, dilation, groups, rows,
                                     y.shape[-2:]), x, y, create_graph=True)
    return out if bias is None else out + bias.double()[:, None, None]


@st.composite
def layers(draw, groups=True):
    g = draw(st.integers(1, 3)) if groups else 1
    kernel = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    return dict(
        shape=(draw(st.integers(1, 2)), g * draw(st.integers(1, 3)),
               draw(st.integers(1, 7)), draw(st.integers(1, 7))),
        c_out=g * draw(st.integers(1, 3)), groups=g, kernel=kernel,
        stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        dilation=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=draw(st.sampled_from(["same", "valid"])), bias=draw(st.booleans()))


def _tensors(layer, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    w = make(layer["shape"][1], layer["c_out"] // layer["groups"], *layer["kernel"])
    return make(*layer["shape"]), w, make(layer["c_out"]) if layer["bias"] else None


def _kw(layer):
    return {k: layer[k] for k in ("stride", "padding", "dilation", "groups")}


def _jax(x, w, layer):
    out = jax.lax.conv_transpose(x.numpy(), w.numpy(), layer["stride"], layer["padding"].upper(),
                                 rhs_dilation=layer["dilation"],
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"), transpose_kernel=True)
    return torch.from_numpy(np.asarray(out))


@pytest.mark.parametrize("plan", [None] + PLANS_FLOAT64,
                         ids=lambda p: plan_id(p) if p else "default")
@settings(max_examples=25, deadline=None, database=None)
@given(layer=layers(groups=False))
def test_equals_jax(plan, layer):
    x, w, b = _tensors(layer)
    with fastconvt.use_family(*plan) if plan else contextlib.nullcontext():
        out = fastconvt.conv_transpose2d(x, w, b, **_kw(layer))
    want = _jax(x, w, layer) + (0 if b is None else b[:, None, None])
    assert_close(out, want)


def _foldable(mode, layer):
    if mode not in ("reflect", "circular"):
        return True
    rows = _crop(layer["padding"], layer["shape"][2:], layer["kernel"], layer["stride"],
                 layer["dilation"])
    limit = 1 if mode == "reflect" else 0
    return all(max(start, end) <= out - limit for start, end, out in rows)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=40, deadline=None, database=None)
@given(layer=layers())
def test_every_mode_is_the_adjoint_of_the_padded_conv2d(mode, dtype, layer):
    x, w, b = _tensors(layer, dtype=dtype)
    kw = _kw(layer)
    if not _foldable(mode, layer):
        with pytest.raises(RuntimeError, match="Padding"):
            fastconvt.conv_transpose2d(x, w, b, **kw, padding_mode=mode)
        return
    check_values_and_gradients(
        lambda x, w, b: fastconvt.conv_transpose2d(x, w, b, **kw, padding_mode=mode),
        lambda x, w, b: _oracle(x, w, b, layer["padding"], layer["stride"], layer["dilation"],
                                layer["groups"], mode), (x, w, b), dtype)


@pytest.mark.parametrize("plan", PLANS_FLOAT64, ids=plan_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_gradcheck_and_gradgradcheck(plan, mode, padding):
    # kernel 3, stride 2: 'same' crops 0 rows above and 1 below; kernel 2, stride 3 in width:
    # rows past the unpadded output
    layer = dict(shape=(2, 2, 4, 3), c_out=2, groups=1, kernel=(3, 2), stride=(2, 3),
                 dilation=(1, 1), padding=padding, bias=True)
    tensors = tuple(t.requires_grad_() for t in _tensors(layer))
    kw = _kw(layer)
    with fastconvt.use_family(*plan):
        f = lambda x, w, b: fastconvt.conv_transpose2d(x, w, b, **kw,  # noqa: E731
                                                       padding_mode=mode)
        assert gradcheck(f, tensors)
        assert gradgradcheck(f, tensors)


def test_circular_same_is_the_periodic_layer():
    """On a torus the output is the input times the stride and every contribution wraps:
    shifting the input by one row shifts the output by ``stride`` rows."""
    x, w = torch.randn(1, 2, 5, 6, dtype=torch.float64), torch.randn(2, 3, 3, 4,
                                                                     dtype=torch.float64)
    out = fastconvt.conv_transpose2d(x, w, stride=2, padding="same", padding_mode="circular")
    shifted = fastconvt.conv_transpose2d(x.roll(1, 2), w, stride=2, padding="same",
                                         padding_mode="circular")
    assert out.shape[2:] == (10, 12)
    assert_close(shifted, out.roll(2, 2))
    assert_close(out.sum((2, 3)), torch.einsum("nchw,cd->nd", x, w.sum((2, 3))))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("mode", MODES)
def test_module(padding, mode):
    m = fastconvt.ConvTranspose2d(3, 4, (3, 4), stride=2, padding=padding, padding_mode=mode,
                                  dtype=torch.float64)
    assert m.padding == padding
    assert f"padding={padding}" in repr(m)
    assert list(m.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    out = m(x)
    want = _oracle(x, m.weight, m.bias, padding, (2, 2), (1, 1), 1, mode)
    assert_close(out, want)
    assert_close(m(x[0]), want[0])
    assert_close(m(x, output_size=list(out.shape[2:])), want)
    assert_close(m(x, output_size=list(out.shape)), want)
    with pytest.raises(ValueError, match="output size"):
        m(x, output_size=[out.shape[2] + 1, out.shape[3]])
    # TorchScript and tracing run torch's operators: the same layer
    assert_close(torch.jit.script(m)(x), want)
    assert_close(torch.jit.trace(m, x)(x), want)
    cl = m(x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert_close(cl, want)


def test_compile_fullgraph():
    m = fastconvt.ConvTranspose2d(3, 4, 3, stride=2, padding="same", padding_mode="reflect")
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)
    assert_close(compiled(x), m(x))
    g = torch.autograd.grad(compiled(x).square().sum(), (x, m.weight))
    want = torch.autograd.grad(m(x).square().sum(), (x, m.weight))
    for a, b in zip(g, want):
        assert_close(a, b)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_conv_transpose1d(padding, mode):
    m = fastconvt.ConvTranspose1d(3, 4, 5, stride=3, padding=padding, padding_mode=mode,
                                  dtype=torch.float64)
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    want = _oracle(x.unsqueeze(-2), m.weight.unsqueeze(-2), m.bias, padding, (1, 3), (1, 1), 1,
                   mode).squeeze(-2)
    assert_close(m(x), want)
    assert_close(m(x[0]), want[0])
    assert_close(torch.jit.script(m)(x), want)
    if mode == "zeros":
        jax_out = jax.lax.conv_transpose(x.numpy(), m.weight.detach().numpy(), (3,),
                                         padding.upper(), dimension_numbers=("NCH", "OIH", "NCH"),
                                         transpose_kernel=True)
        assert_close(m(x), torch.from_numpy(np.asarray(jax_out)) + m.bias[:, None])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex128])
def test_other_dtypes(dtype):
    x = torch.randn(1, 2, 4, 5, dtype=dtype)
    w = torch.randn(2, 3, 3, 3, dtype=dtype)
    out = fastconvt.conv_transpose2d(x, w, stride=2, padding="same", padding_mode="replicate")
    assert out.dtype == dtype and out.shape == (1, 3, 8, 10)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    want = fastconvt.conv_transpose2d(x.to(wide), w.to(wide), stride=2, padding="same",
                                      padding_mode="replicate")
    if dtype.is_complex:
        assert_close(out, want)
    else:  # computed in float32, rounded once to the dtype
        ulp = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[dtype]
        assert (out.double() - want).abs().max() <= ulp * want.abs().max()


def test_unbatched_inputs_with_any_strides():
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    x = torch.randn(3, 10, 5, dtype=torch.float64)[:, ::2]  # not contiguous
    want = _oracle(x.contiguous()[None], w, None, "same", (2, 2), (1, 1), 1, "zeros")[0]
    assert_close(fastconvt.conv_transpose2d(x, w, stride=2, padding="same"), want)
    m = fastconvt.ConvTranspose1d(3, 4, 3, 2, "same", dtype=torch.float64)
    x1 = torch.randn(7, 3, dtype=torch.float64).t()  # length-major
    want1 = _oracle(x1.contiguous()[None, :, None], m.weight.unsqueeze(-2), m.bias, "same",
                    (1, 2), (1, 1), 1, "zeros")[0, :, 0]
    assert_close(m(x1), want1)


def test_empty_batch_and_errors():
    w = torch.randn(2, 3, 3, 3)
    out = fastconvt.conv_transpose2d(torch.randn(0, 2, 4, 5), w, stride=2, padding="same")
    assert out.shape == (0, 3, 8, 10)
    with pytest.raises(TypeError, match="'same' or 'valid'"):  # torch: TypeError for a str
        fastconvt.conv_transpose2d(torch.randn(1, 2, 4, 5), w, padding="full")
    with pytest.raises(RuntimeError, match="output_padding must be 0"):
        fastconvt.conv_transpose2d(torch.randn(1, 2, 4, 5), w, stride=2, padding="same",
                                   output_padding=1)
    with pytest.raises(TypeError, match="padding"):  # torch's layer: at the call
        fastconvt.ConvTranspose2d(2, 3, 3, padding="full")(torch.randn(1, 2, 4, 5))
    with pytest.raises(ValueError, match="output_padding must be 0"):
        fastconvt.ConvTranspose2d(2, 3, 3, stride=2, padding="same", output_padding=1)
    with pytest.raises(RuntimeError, match="channels"):
        fastconvt.conv_transpose2d(torch.randn(1, 5, 4, 5), w, padding="same")
    with pytest.raises(TypeError):
        fastconvt.conv_transpose2d(torch.randn(1, 2, 4, 5), w, stride=1.5, padding="same")
    model = torch.nn.Sequential(fastconvt.ConvTranspose2d(2, 3, 3, stride=2, padding="same"))
    with pytest.raises(ValueError, match="padding='same'"):
        fastconvt.unconvert(model)
    assert type(model[0]) is fastconvt.ConvTranspose2d


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_size_tools(padding):
    """``output_size`` and ``select_family``/``select_plan`` take the strings; the sizes are
    the layer's."""
    for in_hw, k, s, d in [((5, 4), (3, 2), (2, 3), (1, 2)), ((7, 1), (1, 6), (3, 2), (2, 1))]:
        x, w = torch.randn(1, 2, *in_hw), torch.randn(2, 3, *k)
        out = fastconvt.conv_transpose2d(x, w, stride=s, padding=padding, dilation=d)
        assert fastconvt.output_size(in_hw, k, s, padding, dilation=d) == tuple(out.shape[2:])
        assert fastconvt.select_family(x, w, s, padding, dilation=d) in ("direct", "gemm")
        assert set(fastconvt.select_plan(x, w, s, padding, dilation=d)) >= {"forward"}
    assert fastconvt.output_size(16, 3, 2, padding) == (32 if padding == "same" else 33)
    with pytest.raises(ValueError, match="output_padding must be 0"):
        fastconvt.output_size(16, 3, 2, padding, output_padding=1)
    with pytest.raises(TypeError, match="'same' or 'valid'"):
        fastconvt.output_size(16, 3, 2, "full")
