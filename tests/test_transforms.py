"""torch's transforms on fastconvt layers: torch.func (vmap over inputs and weights,
per-sample gradients, jvp, jacrev, hessian), forward-mode AD, autocast and activation
checkpointing, each against torch's operators on the same layer in float64.

The oracle is the layer in torch's own operators (``fastconvt._torch_path``: torch's
``conv_transpose2d``, and for the other padding modes its fold of the borders), through
which every transform runs natively.
"""
import pytest
import torch
import torch.nn as nn
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacrev, jvp, vmap
from torch.utils.checkpoint import checkpoint

import fastconvt
from fastconvt import _torch_path

TOL = dict(rtol=1e-10, atol=1e-10)

# name: (C_in, C_out, kernel, stride, padding, output_padding, groups, padding_mode, (H, W))
LAYERS = {
    "dcgan": (4, 6, 4, 2, 1, 0, 1, "zeros", (3, 4)),
    "grouped": (4, 6, 3, 2, 1, 1, 2, "zeros", (3, 3)),
    # output = input x stride: the periodic circular Function
    "circular": (4, 3, 4, 2, 1, 0, 1, "circular", (3, 4)),
    # the zeros-mode map without padding, then the border fold
    "reflect": (3, 4, 3, 2, 1, 0, 1, "reflect", (3, 3)),
    "circular-fold": (3, 4, 3, 2, 1, 1, 1, "circular", (3, 3)),
}


def _pair(v):
    return (v, v)


def _layer(name, seed=0):
    """(ours, oracle, w, b, x with a batch of 2): ``f(w, b, x)`` each."""
    c_in, c_out, k, s, p, op, groups, mode, hw = LAYERS[name]
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c_in, c_out // groups, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64)
    x = torch.randn(2, c_in, *hw, generator=g, dtype=torch.float64)

    def ours(w, b, x):
        return fastconvt.conv_transpose2d(x, w, b, s, p, op, groups, 1, padding_mode=mode)

    def oracle(w, b, x):
        out = _torch_path.conv_transpose2d(x, w, b, _pair(s), _pair(p), _pair(op), groups,
                                           _pair(1), mode)
        return out

    return ours, oracle, w, b, x


def _close(got, want):
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for a, e in zip(got, want):
            _close(a, e)
    else:
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", LAYERS)
def test_vmap_over_inputs(name):
    ours, oracle, w, b, x = _layer(name)
    xs = torch.stack([x, 2 * x.flip(0), -x])  # (3, N, C, H, W)
    _close(vmap(ours, in_dims=(None, None, 0))(w, b, xs), vmap(oracle, (None, None, 0))(w, b, xs))
    # per-sample unbatched images
    _close(vmap(ours, in_dims=(None, None, 0))(w, b, x), torch.stack([oracle(w, b, xi[None])[0]
                                                                      for xi in x]))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dims", [(0, 0, None), (0, None, None), (None, 0, None), (0, 0, 0),
                                  (1, None, 0)])
def test_vmap_over_weights(name, dims):
    """Per-sample weights (and biases, inputs): the samples' layers as groups."""
    ours, oracle, w, b, x = _layer(name)
    ws = torch.stack([w, w.flip(-1), 0.5 * w], dims[0] or 0) if dims[0] is not None else w
    bs = torch.stack([b, -b, 2 * b]) if dims[1] is not None else b
    xs = torch.stack([x, x.flip(-1), x ** 2]) if dims[2] is not None else x
    want = torch.stack([oracle(ws.select(dims[0], i) if dims[0] is not None else w,
                               bs[i] if dims[1] is not None else b,
                               xs[i] if dims[2] is not None else x) for i in range(3)])
    _close(vmap(ours, in_dims=dims)(ws, bs, xs), want)


@pytest.mark.parametrize("name", LAYERS)
def test_per_sample_gradients(name):
    """Opacus-style: vmap(grad(loss)) over the batch, a layer then a nonlinearity."""
    ours, oracle, w, b, x = _layer(name)
    target = torch.randn(oracle(w, b, x).shape, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))

    def loss(f):
        return lambda w, b, xi, ti: ((f(w, b, xi[None]).tanh() - ti[None]) ** 2).sum()

    got = vmap(grad(loss(ours), argnums=(0, 1, 2)), in_dims=(None, None, 0, 0))(w, b, x, target)
    want = vmap(grad(loss(oracle), argnums=(0, 1, 2)), in_dims=(None, None, 0, 0))(w, b, x,
                                                                                   target)
    _close(got, want)


@pytest.mark.parametrize("name", LAYERS)
def test_jvp(name):
    ours, oracle, w, b, x = _layer(name)
    g = torch.Generator().manual_seed(2)
    tangents = tuple(torch.randn(t.shape, dtype=t.dtype, generator=g) for t in (w, b, x))
    _close(jvp(ours, (w, b, x), tangents), jvp(oracle, (w, b, x), tangents))
    # a tangent in one operand only (the bias's: the output's shape from the layer)
    for i in range(3):
        only = tuple(t if j == i else torch.zeros_like(t) for j, t in enumerate(tangents))
        _close(jvp(ours, (w, b, x), only), jvp(oracle, (w, b, x), only))


@pytest.mark.parametrize("name", LAYERS)
def test_jacrev_and_hessian(name):
    ours, oracle, w, b, x = _layer(name)
    x = x[:1]
    _close(jacrev(ours, argnums=(0, 1, 2))(w, b, x), jacrev(oracle, argnums=(0, 1, 2))(w, b, x))

    def scalar(f):
        return lambda w, x: f(w, b, x).sin().sum()

    _close(hessian(scalar(ours), argnums=(0, 1))(w, x),
           hessian(scalar(oracle), argnums=(0, 1))(w, x))


@pytest.mark.parametrize("name", LAYERS)
def test_forward_mode_ad(name):
    ours, oracle, w, b, x = _layer(name)
    g = torch.Generator().manual_seed(3)
    dw, dx = (torch.randn(t.shape, dtype=t.dtype, generator=g) for t in (w, x))
    results = []
    for f in (ours, oracle):
        with fwAD.dual_level():
            out = f(fwAD.make_dual(w, dw), b, fwAD.make_dual(x, dx))
            results.append(tuple(t.clone() for t in fwAD.unpack_dual(out)[:2]))
    _close(results[0], results[1])


def _twins(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(6, 4, 4, 2, 1, dtype=dtype, **kw)
    return fastconvt.convert(ref), ref


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_autocast_follows_torch(autocast_dtype, dtype):
    """Under CPU autocast, conv_transpose2d is on torch's lower-precision list: the output
    dtype and the values are torch's; outside it nothing changes."""
    ours, ref = _twins(dtype)
    x = torch.randn(2, 6, 5, 5, dtype=dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=autocast_dtype):
        got, want = ours(x), ref(x)
    assert got.dtype == want.dtype
    tol = 2e-2 if want.dtype in (torch.bfloat16, torch.float16) else 1e-5
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)
    gy = torch.randn(got.shape, dtype=got.dtype)
    grads = [torch.autograd.grad(out, (x, m.weight), gy) for out, m in ((got, ours), (want, ref))]
    for a, e in zip(*grads):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a.double(), e.double(), rtol=5e-2, atol=5e-2)
    assert ours(x).dtype == dtype  # autocast off again


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_activation_checkpointing(use_reentrant, mode):
    """Gradients through torch.utils.checkpoint equal those without it, and torch's."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.ConvTranspose2d(4, 3, 4, 2, 1, dtype=torch.float64), nn.Tanh(),
                        nn.ConvTranspose2d(3, 2, 3, 1, 1, dtype=torch.float64))
    ours = fastconvt.convert(ref)
    if mode == "circular":
        for m in ours:
            if isinstance(m, fastconvt.ConvTranspose2d):
                m.padding_mode = "circular"
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)

    def gradients(model, run):
        x.grad = None
        model.zero_grad()
        run(x).square().sum().backward()  # reentrant checkpointing takes no .grad()
        return [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]

    plain = gradients(ours, ours)
    _close(gradients(ours, lambda x: checkpoint(ours, x, use_reentrant=use_reentrant)), plain)
    if mode == "zeros":
        _close(plain, gradients(ref, ref))


def test_vmap_of_a_converted_model():
    """vmap of a whole converted DCGAN-style block over a batch of batches."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1, dtype=torch.float64), nn.ReLU(),
                        nn.ConvTranspose2d(4, 3, 4, 2, 1, dtype=torch.float64), nn.Tanh())
    ours = fastconvt.convert(ref)
    xs = torch.randn(3, 2, 8, 3, 3, dtype=torch.float64)
    _close(vmap(ours)(xs), vmap(ref)(xs))


def test_1d_layer_under_vmap_jvp_and_autocast():
    """The 1-D layer is the 2-D one on one-row images: the same rules apply."""
    g = torch.Generator().manual_seed(4)
    w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((4, 3, 16), (3,)))
    xs = torch.randn(3, 2, 4, 9, generator=g, dtype=torch.float64)
    kw = dict(stride=8, padding=4)
    ours = lambda w, b, x: fastconvt.conv_transpose1d(x, w, b, **kw)  # noqa: E731
    ref = lambda w, b, x: torch.nn.functional.conv_transpose1d(x, w, b, **kw)  # noqa: E731
    _close(vmap(ours, (None, None, 0))(w, b, xs), vmap(ref, (None, None, 0))(w, b, xs))
    _close(vmap(ours, (0, None, None))(torch.stack([w, -w]), b, xs[0]),
           torch.stack([ref(w, b, xs[0]), ref(-w, b, xs[0])]))
    tangents = (w.flip(-1), b, xs[0].cos())
    _close(jvp(ours, (w, b, xs[0]), tangents), jvp(ref, (w, b, xs[0]), tangents))
    x32, w32 = xs[0].float(), w.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fastconvt.conv_transpose1d(x32, w32, **kw)
        want = torch.nn.functional.conv_transpose1d(x32, w32, **kw)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dim", range(5))
def test_vmap_over_weights_at_any_dimension(dim):
    ours, oracle, w, b, x = _layer("grouped")
    ws = torch.stack([w, -w, w.flip(-2)]).movedim(0, dim)
    _close(vmap(ours, in_dims=(dim, None, None))(ws, b, x),
           torch.stack([oracle(wi, b, x) for wi in (w, -w, w.flip(-2))]))
