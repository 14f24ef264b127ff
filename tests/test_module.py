"""fastconvt.ConvTranspose2d and fastconvt.convert against torch.nn.ConvTranspose2d.

torch's own module is always the oracle: float64 results are compared strictly,
float32 results against torch evaluated in float64 on exactly upcast data
(``tests/conftest.py``). Everything that fastconvt hands to torch (other dtypes,
the meta device) must be *exactly* torch's result.
"""
import copy
import io
import pickle
import subprocess
import sys
import textwrap

import numba
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastconvt
from conftest import DTYPES, assert_close, reference

# ---------------------------------------------------------------------------
# helpers


def _pair_of_modules(cfg, dtype):
    """A fastconvt module in ``dtype`` and a float64 torch module with the same
    (upcast) parameters: the oracle."""
    torch.manual_seed(0)
    fm = fastconvt.ConvTranspose2d(**cfg, dtype=dtype)
    tm = nn.ConvTranspose2d(**cfg, dtype=torch.float64)
    tm.load_state_dict(fm.state_dict())  # copy_ upcasts exactly
    return fm, tm


def _check_against_torch(fm, tm, x, dtype, **forward_kwargs):
    """Output and input/weight/bias gradients of ``fm`` equal torch's ``tm``."""
    x = x.to(dtype).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y = fm(x, **forward_kwargs)
    y64 = tm(x64, **forward_kwargs)
    assert y.dtype == dtype and y.device == x.device
    assert_close(y, y64, dtype)
    g = torch.randn(y.shape, dtype=dtype)
    y.backward(g)
    y64.backward(g.double())
    assert_close(x.grad, x64.grad, dtype)
    assert_close(fm.weight.grad, tm.weight.grad, dtype)
    assert (fm.bias is None) == (tm.bias is None)
    if fm.bias is not None:
        assert_close(fm.bias.grad, tm.bias.grad, dtype)
    return y


def _dtype_id(d):
    return str(d).split(".")[-1]


# ---------------------------------------------------------------------------
# identity with torch's module: class, parameters, initialisation, repr

REPR_CONFIGS = [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
         output_padding=(1, 0), groups=2, bias=False, dilation=(1, 2)),
    dict(in_channels=3, out_channels=6, kernel_size=1, groups=3, padding_mode="zeros"),
]


def test_is_a_torch_conv_transpose2d():
    m = fastconvt.ConvTranspose2d(2, 3, 3)
    assert isinstance(m, nn.ConvTranspose2d)
    assert issubclass(fastconvt.ConvTranspose2d, nn.ConvTranspose2d)
    # only forward is overridden (with its two paths: kernels, and torch for TorchScript)
    ours = [c for c in fastconvt.ConvTranspose2d.__mro__ if c not in nn.ConvTranspose2d.__mro__]
    overridden = {k for c in ours for k in vars(c) if not k.startswith("__")}
    assert overridden == {"forward", "_torch_forward", "_kernels_forward"}


@pytest.mark.parametrize("cfg", REPR_CONFIGS, ids=range(len(REPR_CONFIGS)))
def test_parameters_initialisation_and_repr_equal_torch(cfg, dtype):
    torch.manual_seed(1234)
    fm = fastconvt.ConvTranspose2d(**cfg, dtype=dtype)
    torch.manual_seed(1234)
    tm = nn.ConvTranspose2d(**cfg, dtype=dtype)

    def describe(m):
        return [(n, p.shape, p.dtype, p.device, p.requires_grad) for n, p in m.named_parameters()]

    assert describe(fm) == describe(tm)
    assert [n for n, _ in fm.named_buffers()] == [n for n, _ in tm.named_buffers()]
    assert list(fm.state_dict()) == list(tm.state_dict())
    # same seed -> bit-identical initialisation, at construction ...
    for (_, p), (_, q) in zip(fm.named_parameters(), tm.named_parameters()):
        assert torch.equal(p, q)
    # ... and through reset_parameters
    torch.manual_seed(99)
    fm.reset_parameters()
    torch.manual_seed(99)
    tm.reset_parameters()
    for (_, p), (_, q) in zip(fm.named_parameters(), tm.named_parameters()):
        assert torch.equal(p, q)
    # every hyper-parameter attribute is torch's
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                 "output_padding", "dilation", "groups", "padding_mode", "transposed"):
        assert getattr(fm, attr) == getattr(tm, attr), attr
    assert fm.extra_repr() == tm.extra_repr()
    assert repr(fm) == repr(tm).replace(type(tm).__name__, type(fm).__name__, 1)


def test_constructor_device_and_dtype_kwargs():
    m = fastconvt.ConvTranspose2d(2, 4, (3, 2), device="cpu", dtype=torch.float64)
    assert m.weight.dtype == m.bias.dtype == torch.float64
    assert m.weight.device.type == m.bias.device.type == "cpu"
    assert m.weight.shape == (2, 4, 3, 2) and m.bias.shape == (4,)
    assert m(torch.randn(1, 2, 3, 3, dtype=torch.float64)).dtype == torch.float64

    m = fastconvt.ConvTranspose2d(2, 4, 3, device=torch.device("meta"), dtype=torch.float32)
    assert m.weight.is_meta and m.bias.is_meta and m.weight.dtype == torch.float32
    assert type(m) is fastconvt.ConvTranspose2d


# ---------------------------------------------------------------------------
# outputs and gradients against torch's module

MODULE_CONFIGS = {
    "basic": dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1,
                  output_padding=1),
    "groups_nobias_nonsquare": dict(in_channels=4, out_channels=6, kernel_size=(3, 2),
                                    stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                                    bias=False),
    "depthwise_multiplier2": dict(in_channels=3, out_channels=6, kernel_size=3, stride=2,
                                  padding=1, groups=3),
    "output_padding_nonsquare": dict(in_channels=2, out_channels=3, kernel_size=(2, 3),
                                     stride=(2, 3), padding=(0, 2), output_padding=(1, 2)),
    "output_padding_from_dilation": dict(in_channels=2, out_channels=2, kernel_size=(3, 2),
                                         padding=(2, 1), dilation=(3, 2),
                                         output_padding=(2, 1)),
}


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("name", list(MODULE_CONFIGS))
def test_forward_and_gradients_equal_torch(name, batched, dtype):
    cfg = MODULE_CONFIGS[name]
    fm, tm = _pair_of_modules(cfg, dtype)
    torch.manual_seed(1)
    shape = (2, cfg["in_channels"], 5, 4) if batched else (cfg["in_channels"], 5, 4)
    y = _check_against_torch(fm, tm, torch.randn(shape, dtype=torch.float64), dtype)
    assert y.dim() == len(shape)


@pytest.mark.parametrize("output_size", [(8, 8), [7, 8], torch.Size([8, 7]), (2, 4, 8, 8),
                                         (2, 4, 7, 7)], ids=str)
def test_forward_output_size(output_size, dtype):
    cfg = dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1)
    fm, tm = _pair_of_modules(cfg, dtype)
    torch.manual_seed(2)
    y = _check_against_torch(fm, tm, torch.randn(2, 3, 4, 4, dtype=torch.float64), dtype,
                             output_size=output_size)
    assert tuple(y.shape[-2:]) == tuple(output_size)[-2:]


def test_forward_output_size_unbatched(dtype):
    cfg = dict(in_channels=3, out_channels=4, kernel_size=3, stride=(2, 3), padding=1)
    fm, tm = _pair_of_modules(cfg, dtype)
    torch.manual_seed(3)
    y = _check_against_torch(fm, tm, torch.randn(3, 4, 4, dtype=torch.float64), dtype,
                             output_size=(8, 11))
    assert y.shape == (4, 8, 11)


@pytest.mark.parametrize("output_size", [(9, 9), (6, 6), (8, 11), (1, 1, 6, 8)], ids=str)
def test_forward_unreachable_output_size_raises_like_torch(output_size):
    cfg = dict(in_channels=1, out_channels=1, kernel_size=3, stride=2, padding=1)
    fm, tm = _pair_of_modules(cfg, torch.float32)
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(Exception) as expected:
        tm.float()(x, output_size=output_size)
    with pytest.raises(Exception) as actual:
        fm(x, output_size=output_size)
    assert type(expected.value) is ValueError
    assert type(actual.value) is type(expected.value)
    assert str(actual.value) == str(expected.value)


# ---------------------------------------------------------------------------
# the article's examples: I=4, K=3, S=2, P=1

def _article_pair(**kwargs):
    cfg = dict(in_channels=1, out_channels=1, kernel_size=3, stride=2, padding=1)
    cfg.update(kwargs)
    torch.manual_seed(7)
    fm = fastconvt.ConvTranspose2d(**cfg)
    tm = nn.ConvTranspose2d(**cfg)
    tm.load_state_dict(fm.state_dict())
    return fm, tm


@pytest.mark.parametrize("out_channels", [1, 3])
def test_article_example_7x7(out_channels):
    fm, tm = _article_pair(out_channels=out_channels)
    x = torch.randn(1, 1, 4, 4)
    y = fm(x)
    assert y.shape == (1, out_channels, 7, 7)
    assert_close(y, tm(x), torch.float32)  # torch's module, same weights, same dtype
    assert_close(y, tm.double()(x.double()), torch.float32)  # and the float64 oracle


@pytest.mark.parametrize("how", ["output_padding", "output_size"])
def test_article_example_8x8(how):
    kwargs, fwd = ({"output_padding": 1}, {}) if how == "output_padding" else \
        ({}, {"output_size": (8, 8)})
    fm, tm = _article_pair(out_channels=3, **kwargs)
    x = torch.randn(1, 1, 4, 4)
    y = fm(x, **fwd)
    assert y.shape == (1, 3, 8, 8)
    assert_close(y, tm(x, **fwd), torch.float32)
    assert_close(y, tm.double()(x.double(), **fwd), torch.float32)


def test_article_example_values_by_hand():
    """All-ones input and kernel: each output pixel counts the (input pixel,
    tap) pairs that meet there, o = 2 i - 1 + k, i.e. 1, 2, 1, 2, ... per axis,
    and the extra row/column given by output_padding=1 receives one tap."""
    x = torch.ones(1, 1, 4, 4)
    for output_padding, counts in [(0, [1, 2, 1, 2, 1, 2, 1]), (1, [1, 2, 1, 2, 1, 2, 1, 1])]:
        m = fastconvt.ConvTranspose2d(1, 1, 3, stride=2, padding=1,
                                      output_padding=output_padding, bias=False)
        with torch.no_grad():
            m.weight.fill_(1.0)
        c = torch.tensor(counts, dtype=torch.float32)
        assert torch.equal(m(x)[0, 0], torch.outer(c, c))


# ---------------------------------------------------------------------------
# state_dict, pickling, copying

def test_state_dict_round_trip_torch_fastconvt_torch():
    cfg = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, groups=2)
    torch.manual_seed(0)
    tm = nn.ConvTranspose2d(**cfg)
    sd = tm.state_dict()
    torch.manual_seed(1)
    fm = fastconvt.ConvTranspose2d(**cfg)
    assert not torch.equal(fm.weight, tm.weight)
    result = fm.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    sd2 = fm.state_dict()
    assert list(sd2) == list(sd)
    for k in sd:
        assert torch.equal(sd2[k], sd[k])
    tm2 = nn.ConvTranspose2d(**cfg)
    result = tm2.load_state_dict(sd2, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in tm2.state_dict().items():
        assert torch.equal(v, sd[k])
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    assert_close(fm.double()(x), tm2.double()(x))


def _torch_save_load(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("clone", [_torch_save_load, lambda m: pickle.loads(pickle.dumps(m)),
                                   copy.deepcopy],
                         ids=["torch.save", "pickle", "deepcopy"])
def test_pickle_and_deepcopy(clone, dtype):
    torch.manual_seed(0)
    m = fastconvt.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, groups=1,
                                  dtype=dtype)
    m2 = clone(m)
    assert type(m2) is fastconvt.ConvTranspose2d
    assert m2 is not m and m2.weight is not m.weight
    assert repr(m2) == repr(m)
    for (n, p), (n2, p2) in zip(m.named_parameters(), m2.named_parameters()):
        assert n == n2 and torch.equal(p, p2) and p2.requires_grad
    x = torch.randn(2, 3, 4, 5, dtype=dtype)
    assert torch.equal(m2(x), m(x))  # the kernels are deterministic
    # the clone is an independent, trainable module
    m2(x).sum().backward()
    assert m2.weight.grad is not None and m.weight.grad is None


def test_pickle_of_converted_module():
    torch.manual_seed(0)
    model = fastconvt.convert(nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2)))
    x = torch.randn(1, 2, 4, 4)
    for clone in (_torch_save_load, lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy):
        model2 = clone(model)
        assert type(model2[0]) is fastconvt.ConvTranspose2d
        assert torch.equal(model2(x), model(x))


# ---------------------------------------------------------------------------
# delegation to torch: other dtypes, the meta device

def _outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - compared against torch's exception
        return None, e


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_int64_equals_torch_exactly(with_bias):
    torch.manual_seed(0)
    x = torch.randint(-5, 6, (2, 4, 5, 3), dtype=torch.int64)
    w = torch.randint(-5, 6, (4, 3, 3, 2), dtype=torch.int64)
    b = torch.randint(-5, 6, (6,), dtype=torch.int64) if with_bias else None
    kw = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2))
    expected, expected_exc = _outcome(lambda: F.conv_transpose2d(x, w, b, **kw))
    actual, actual_exc = _outcome(lambda: fastconvt.conv_transpose2d(x, w, b, **kw))
    assert type(actual_exc) is type(expected_exc)
    if expected_exc is None:
        assert actual.dtype == expected.dtype == torch.int64
        assert torch.equal(actual, expected)
        # sanity: torch's integer result is the exact float64 result
        assert torch.equal(expected.double(), reference(x, w, b, **kw))


def test_int32_raises_like_torch():
    x = torch.ones(1, 2, 3, 3, dtype=torch.int32)
    w = torch.ones(2, 2, 3, 3, dtype=torch.int32)
    expected, expected_exc = _outcome(lambda: F.conv_transpose2d(x, w))
    actual, actual_exc = _outcome(lambda: fastconvt.conv_transpose2d(x, w))
    assert type(actual_exc) is type(expected_exc)
    if expected_exc is None:
        assert torch.equal(actual, expected)


def test_meta_device_gives_torch_shape():
    x = torch.empty(2, 4, 5, 3, device="meta")
    w = torch.empty(4, 3, 3, 2, device="meta")
    b = torch.empty(6, device="meta")
    kw = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2))
    expected = F.conv_transpose2d(x, w, b, **kw)
    actual = fastconvt.conv_transpose2d(x, w, b, **kw)
    assert actual.is_meta and actual.shape == expected.shape and actual.dtype == expected.dtype

    cfg = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), **kw)
    fm = fastconvt.ConvTranspose2d(**cfg, device="meta")
    tm = nn.ConvTranspose2d(**cfg, device="meta")
    for fwd in ({}, {"output_size": (10, 5)}):
        y, e = fm(x, **fwd), tm(x, **fwd)
        assert y.is_meta and y.shape == e.shape
    y, e = fm(x[0]), tm(x[0])  # unbatched
    assert y.is_meta and y.shape == e.shape


def test_mixed_dtype_raises_like_torch():
    x = torch.randn(1, 2, 3, 3)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(Exception) as expected:
        F.conv_transpose2d(x, w)
    with pytest.raises(Exception) as actual:
        fastconvt.conv_transpose2d(x, w)
    assert type(actual.value) is type(expected.value)


# ---------------------------------------------------------------------------
# threads

def _call():
    for dtype in DTYPES:  # forward and both adjoints, in every kernel dtype
        x = torch.randn(2, 3, 5, 5, dtype=dtype, requires_grad=True)
        w = torch.randn(3, 4, 3, 3, dtype=dtype, requires_grad=True)
        fastconvt.conv_transpose2d(x, w, stride=2).sum().backward()


def test_torch_and_numba_thread_counts_unchanged():
    original_torch = torch.get_num_threads()
    original_numba = numba.get_num_threads()
    try:
        _call()
        assert torch.get_num_threads() == original_torch
        assert numba.get_num_threads() == original_numba

        torch.set_num_threads(1)
        _call()
        assert torch.get_num_threads() == 1
        assert numba.get_num_threads() == original_numba

        torch.set_num_threads(original_torch)
        _call()
        assert torch.get_num_threads() == original_torch
        assert numba.get_num_threads() == original_numba

        # a caller that set Numba's own count gets it back
        numba.set_num_threads(1)
        _call()
        assert numba.get_num_threads() == 1
        assert torch.get_num_threads() == original_torch
    finally:
        numba.set_num_threads(original_numba)
        torch.set_num_threads(original_torch)


def test_first_call_in_fresh_process_keeps_torch_threads(tmp_path):
    """Numba's first parallel launch can reset torch's thread count (numba
    issue 9387): check it in a fresh interpreter, outside the repo."""
    code = textwrap.dedent("""
        import torch
        torch.set_num_threads(1)
        import numba, fastconvt
        n = numba.get_num_threads()
        x = torch.randn(2, 3, 5, 5)
        fastconvt.conv_transpose2d(x, torch.randn(3, 2, 3, 3))
        assert torch.get_num_threads() == 1, torch.get_num_threads()
        assert numba.get_num_threads() == n, (numba.get_num_threads(), n)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
