"""Every dtype through every path (the parallel drivers, the module, empty batches, the
dispatcher), and integer and mixed dtypes exactly as torch treats them; the oracles and
cases of ``test_dtypes``."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastconvt
from conftest import PLANS, assert_close, plan_id, with_layout
from test_dtypes import (CASES, FAMILIES, INT_DTYPES, NEW_DTYPES, PARALLEL_CASE, _case_tensors,
                         _check_forward_backward, _check_values, _magnitude, _name, _randn,
                         _torch_serial, _upcast)


# ---------------------------------------------------------------------------
# all four: the parallel drivers, the module, empty batches, and the dispatcher

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", NEW_DTYPES, ids=_name)
def test_parallel(dtype, family):
    with fastconvt.use_family(family):
        _check_forward_backward(*_case_tensors(PARALLEL_CASE, dtype), dtype)


MODULE_ARGS = dict(in_channels=6, out_channels=4, kernel_size=3, stride=2, padding=1,
                   output_padding=1, groups=2)


@pytest.mark.parametrize("dtype", NEW_DTYPES, ids=_name)
def test_module_matches_torch(dtype):
    torch.manual_seed(0)
    theirs = nn.ConvTranspose2d(**MODULE_ARGS, dtype=dtype)
    ours = fastconvt.ConvTranspose2d(**MODULE_ARGS, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    assert ours.weight.dtype == ours.bias.dtype == dtype
    x = _randn((2, 6, 4, 5), dtype, torch.Generator().manual_seed(1))
    params = (x, theirs.weight, theirs.bias)
    for output_size, output_padding in ((None, 1), ((7, 10), (0, 1))):
        out = ours(x, output_size=output_size)
        g = _randn(out.shape, dtype, torch.Generator().manual_seed(2))
        grads = torch.autograd.grad(out, (ours.weight, ours.bias), g)
        call = lambda ts: F.conv_transpose2d(  # noqa: E731
            *ts, stride=2, padding=1, output_padding=output_padding, groups=2)
        with _torch_serial():
            torch_out = theirs(x, output_size=output_size)
            torch_grads = torch.autograd.grad(torch_out, (theirs.weight, theirs.bias), g)
            leaves = [_upcast(t).detach().requires_grad_() for t in params]
            abs_leaves = [_magnitude(t).detach().requires_grad_() for t in params]
            ref, ref_abs = call(leaves), call(abs_leaves)
            ref_grads = torch.autograd.grad(ref, leaves[1:], _upcast(g))
            abs_grads = torch.autograd.grad(ref_abs, abs_leaves[1:], _magnitude(g))
        what = f"output_size={output_size}"
        _check_values(out, torch_out, ref, ref_abs, dtype, what, taps=9)
        for name, *four in zip(("weight", "bias"), grads, torch_grads, ref_grads, abs_grads):
            _check_values(*four, dtype, f"grad_{name}, {what}", taps=9)


@pytest.mark.parametrize("dtype", NEW_DTYPES, ids=_name)
def test_empty_batch(dtype):
    x, weight, b, kw = _case_tensors(CASES["groups"], dtype)
    x = x[:0].requires_grad_()
    out = fastconvt.conv_transpose2d(x, weight, b, **kw)
    with _torch_serial():
        want = F.conv_transpose2d(x, weight, b, **kw)
    assert out.shape == want.shape and out.dtype == dtype
    out.sum().abs().backward()
    assert x.grad.shape == x.shape and x.grad.dtype == dtype


@pytest.mark.parametrize("dtype", NEW_DTYPES, ids=_name)
def test_select_family_computes(dtype):
    # a small layer and one for which the float32 rule picks GEMM
    for x, weight, _, kw in (_case_tensors(CASES[name], dtype) for name in ("groups",
                                                                            "stride2-op")):
        assert fastconvt.select_family(x, weight, **kw) in FAMILIES
        assert fastconvt.select_family(x[0], weight, **kw) in FAMILIES
        assert fastconvt.select_family(
            x.contiguous(memory_format=torch.channels_last), weight, **kw) in FAMILIES
        for family in FAMILIES:
            with fastconvt.use_family(family):
                assert fastconvt.select_family(x, weight, **kw) == family


def _forbidden(name):
    def call(*args, **kwargs):
        raise AssertionError(f"fastconvt delegated to torch's {name}")
    return call


# every torch entry point that computes a convolution, a fold or an unfold
_TORCH_CONVOLUTIONS = [(F, name) for name in ("conv_transpose2d", "conv2d", "fold", "unfold")] \
    + [(torch, name) for name in ("conv_transpose2d", "conv2d", "convolution")] \
    + [(torch._C._nn, name) for name in ("col2im", "im2col")]


@pytest.mark.parametrize("plan", PLANS, ids=plan_id)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64) + NEW_DTYPES, ids=_name)
def test_not_delegated_to_torch(dtype, plan, monkeypatch):
    """Forward and both gradients, in both memory formats and padding modes, run with
    every torch convolution unavailable: each dtype the kernels compute, each plan."""
    for owner, name in _TORCH_CONVOLUTIONS:
        monkeypatch.setattr(owner, name, _forbidden(name))
    with fastconvt.use_family(*plan):
        for name in ("groups", "stride2-op"):
            x, weight, b, kw = _case_tensors(CASES[name], dtype)
            for channels_last in (False, True):
                for mode in ("zeros", "circular"):
                    leaves = [t.detach().clone().requires_grad_() for t in (
                        x.contiguous(memory_format=torch.channels_last) if channels_last
                        else x, weight, b)]
                    out = fastconvt.conv_transpose2d(*leaves, **kw, padding_mode=mode)
                    assert out.dtype == dtype
                    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
                    assert all(g.dtype == dtype for g in grads)
        m = fastconvt.ConvTranspose2d(**MODULE_ARGS, dtype=dtype)
        assert m(_randn((1, 6, 3, 3), dtype, torch.Generator())).dtype == dtype


# ---------------------------------------------------------------------------
# integer and mixed dtypes: exactly torch's behaviour

def _outcome(call):
    """``("returned", tensor)`` or ``("raised", exception class)``."""
    try:
        return "returned", call()
    except Exception as exc:  # noqa: BLE001 - compared with torch's below
        return "raised", type(exc)


def _assert_same_outcome(x, weight, b, kw=None):
    kw = kw or {}
    with _torch_serial():
        expected = _outcome(lambda: F.conv_transpose2d(x, weight, b, **kw))
    actual = _outcome(lambda: fastconvt.conv_transpose2d(x, weight, b, **kw))
    assert actual[0] == expected[0], (actual, expected)
    if expected[0] == "raised":
        assert actual[1] is expected[1], (actual, expected)
        return
    got, want = actual[1], expected[1]
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.is_floating_point() or want.is_complex():
        for part in ((lambda t: t.real, lambda t: t.imag) if want.is_complex() else (_upcast,)):
            assert_close(part(_upcast(got)), part(_upcast(want)), torch.float32)
    else:
        assert torch.equal(got, want)
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert got.is_contiguous(memory_format=fmt) == want.is_contiguous(memory_format=fmt)


def _int_tensor(shape, dtype, g):
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    low = 0 if dtype == torch.uint8 else -3
    return torch.randint(low, 4, shape, generator=g).to(dtype)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "unbatched"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=_name)
def test_integer_like_torch(dtype, batch, layout):
    # torch 2.13 computes int64 (and so must fastconvt, exactly); the others raise
    g = torch.Generator().manual_seed(0)
    x, weight = _int_tensor((batch, 4, 5, 5), dtype, g), _int_tensor((4, 3, 3, 3), dtype, g)
    x, weight = with_layout(x, weight, layout)
    kw = dict(stride=2, padding=1, output_padding=1)
    for b in (None, _int_tensor((3,), dtype, g)):
        _assert_same_outcome(x, weight, b, kw)


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=_name)
def test_integer_module_like_torch(dtype):
    expected = _outcome(lambda: nn.ConvTranspose2d(3, 2, 3, dtype=dtype))
    actual = _outcome(lambda: fastconvt.ConvTranspose2d(3, 2, 3, dtype=dtype))
    assert expected[0] == actual[0] == "raised"
    assert actual[1] is expected[1]


f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, c128 = torch.complex64, torch.complex128
# (input, weight, bias) dtypes; bias None means no bias
MIXED = [
    (f16, f32, None), (f32, f16, None), (bf16, f32, None), (f32, bf16, None),
    (f16, bf16, None), (bf16, f16, None), (f16, f64, None),
    (c64, f32, None), (f32, c64, None), (c128, f64, None), (f64, c128, None),
    (c64, c128, None), (c128, c64, None), (c64, f64, None),
    (torch.int64, f32, None), (f32, torch.int64, None),
    (f16, f16, f32), (bf16, bf16, f32), (f16, f16, bf16), (bf16, bf16, f16),
    (c64, c64, f32), (c64, c64, c128), (c128, c128, c64), (c128, c128, f64),
    (f16, f16, c64),
    # a float32/float64 input and weight with a bias of another dtype: torch
    # accepts a real one (the result has the input's dtype), rejects a complex one
    (f32, f32, f16), (f32, f32, f64), (f64, f64, f32), (f32, f32, bf16),
    (f32, f32, c64), (f64, f64, c128),
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dtypes", MIXED, ids=lambda ds: "-".join(map(str, map(
    lambda d: _name(d) if d else "nobias", ds))))
def test_mixed_like_torch(dtypes, batch):
    g = torch.Generator().manual_seed(0)
    x_dtype, w_dtype, b_dtype = dtypes
    make = lambda shape, dt: (_int_tensor(shape, dt, g) if not (  # noqa: E731
        dt.is_floating_point or dt.is_complex) else _randn(shape, dt, g))
    x, weight = make((batch, 4, 5, 5), x_dtype), make((4, 3, 3, 3), w_dtype)
    b = None if b_dtype is None else make((3,), b_dtype)
    _assert_same_outcome(x, weight, b, dict(stride=2, padding=1))
