"""ConvTranspose1d and conv_transpose1d against torch's: a sweep of geometries (values,
gradients), gradcheck and gradgradcheck, the module's constructor, state_dict,
output_size and errors; the padding modes against the adjoint of ``nn.Conv1d`` in that
mode; ``convert()``."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.autograd import gradcheck, gradgradcheck

import fastconvt
from conftest import DTYPES, assert_close


@st.composite
def problems(draw):
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k, s, d = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    length = draw(st.integers(1, 12))
    p = draw(st.integers(0, ((length - 1) * s + d * (k - 1)) // 2))
    op = draw(st.integers(0, max(s, d) - 1))
    if op >= s and op >= d:
        op = 0
    if op >= s:  # torch needs output_padding < stride or < dilation
        op = min(op, max(s, d) - 1)
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    shape = (draw(st.integers(1, 3)), c_in, length)
    if draw(st.booleans()):
        shape = shape[1:]  # unbatched
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(c_in, c_out // groups, k, generator=g, dtype=torch.float64).to(dtype)
    b = draw(st.sampled_from([torch.randn(c_out, generator=g, dtype=torch.float64).to(dtype),
                              None]))
    return x, w, b, dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)


@settings(max_examples=150, deadline=None)
@given(problem=problems())
def test_sweep_against_torch(problem):
    x, w, b, kw = problem
    dtype = x.dtype
    up = [None if t is None else t.double().requires_grad_() for t in (x, w, b)]
    want = F.conv_transpose1d(*up, **kw)
    ours = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w, b)]
    got = fastconvt.conv_transpose1d(*ours, **kw)
    assert got.dtype == dtype
    scale = F.conv_transpose1d(*(None if t is None else t.detach().abs() for t in up), **kw)
    assert_close(got, want, dtype, scale=scale.abs().max())
    gy = torch.randn(want.shape, dtype=torch.float64).to(dtype)
    inputs = [t for t in ours if t is not None]
    grads = torch.autograd.grad(got, inputs, gy)
    wants = torch.autograd.grad(want, [t for t in up if t is not None], gy.double())
    for a, e in zip(grads, wants):
        assert_close(a, e, dtype, scale=max(e.abs().max().item(), 1.0) * 4)


def test_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    for mode in fastconvt.functional.PADDING_MODES:
        f = lambda x, w, b: fastconvt.conv_transpose1d(  # noqa: E731
            x, w, b, stride=2, padding=1, groups=2, padding_mode=mode)
        assert gradcheck(f, (x, w, b))
        assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("geometry", [(4, 2, 1, 0), (3, 2, 1, 1), (16, 8, 4, 0), (5, 3, 2, 2)])
def test_padding_modes_are_the_adjoint_of_conv1d(mode, geometry):
    k, s, p, op = geometry
    torch.manual_seed(0)
    layer = fastconvt.ConvTranspose1d(3, 2, k, s, p, op, padding_mode=mode, dtype=torch.float64)
    conv = nn.Conv1d(2, 3, k, s, p, bias=False, padding_mode=mode, dtype=torch.float64)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    out = layer(x)
    y = torch.zeros(out.shape, dtype=torch.float64, requires_grad=True)
    conv_y = torch.func.functional_call(conv, {"weight": layer.weight}, (y,))
    assert conv_y.shape == x.shape
    adjoint, = torch.autograd.grad(conv_y, y, x)
    torch.testing.assert_close(out, adjoint + layer.bias.view(-1, 1), rtol=1e-12, atol=1e-12)


def test_module_is_torchs_layer():
    torch.manual_seed(0)
    ref = nn.ConvTranspose1d(8, 4, 16, stride=8, padding=4, dtype=torch.float64)
    torch.manual_seed(0)
    ours = fastconvt.ConvTranspose1d(8, 4, 16, stride=8, padding=4, dtype=torch.float64)
    assert isinstance(ours, nn.ConvTranspose1d)
    assert repr(ours) == repr(ref)
    for (ka, a), (kb, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    x = torch.randn(2, 8, 20, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours(x[0]), ref(x[0]), rtol=1e-12, atol=1e-12)  # unbatched
    for size in ([161], [2, 4, 165], [167]):
        torch.testing.assert_close(ours(x, output_size=size), ref(x, output_size=size),
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        ours(x, output_size=[400])


def test_errors_have_torchs_types():
    x, w = torch.randn(2, 4, 5), torch.randn(4, 3, 3)
    for bad, error in ((dict(stride=(1, 2)), RuntimeError), (dict(stride=1.5), TypeError),
                       (dict(groups=3), RuntimeError), (dict(padding=-1), RuntimeError)):
        with pytest.raises(error):
            F.conv_transpose1d(x, w, **bad)
        with pytest.raises(error):
            fastconvt.conv_transpose1d(x, w, **bad)
    with pytest.raises(TypeError):  # argument types before shapes, as in torch
        fastconvt.conv_transpose1d(torch.randn(1, 2, 4, 5), w, groups=None)
    with pytest.raises(RuntimeError, match="2D \\(unbatched\\) or 3D"):
        fastconvt.conv_transpose1d(torch.randn(1, 2, 4, 5), w)
    with pytest.raises(ValueError, match="padding_mode"):
        fastconvt.ConvTranspose1d(4, 3, 3, padding_mode="mirror")


def test_convert_converts_1d_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose1d(8, 4, 16, 8, 4), nn.LeakyReLU(0.1),
                          nn.ConvTranspose1d(4, 2, 4, 2, 1))
    x = torch.randn(1, 8, 32)
    want = model(x)
    fastconvt.convert(model)
    assert all(type(m) is fastconvt.ConvTranspose1d for m in model[::2])
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), want, rtol=1e-5, atol=1e-5)


def test_output_layout_is_torchs_for_a_length_major_input():
    """A (N, L, C) tensor transposed to (N, C, L) looks channels_last once given a height
    of 1; torch's 1-D output is contiguous all the same."""
    torch.manual_seed(0)
    ref = nn.ConvTranspose1d(4, 3, 4, stride=3, padding=1, dtype=torch.float64)
    ours = fastconvt.convert(nn.ConvTranspose1d(4, 3, 4, stride=3, padding=1,
                                                dtype=torch.float64))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 7, 4, dtype=torch.float64).transpose(1, 2)
    want, got = ref(x), ours(x)
    assert got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
