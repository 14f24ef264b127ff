"""Numerics across plans: float32 error against the float64 oracle within twice
torch's own float32 error on the benchmark's kinds of layer, for every plan the
default can pick; repeated calls bitwise identical for a given thread count."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastconvt
from conftest import PLANS, plan_id
from fastconvt import _dispatch, _plans

# the benchmark's layers (bench/layers.py), one image each: (C_in, C_out, kernel,
# stride, padding, dilation, groups, (H, W))
LAYERS = {
    "dcgan3": (256, 128, (4, 4), 2, 1, 1, 1, (8, 8)),
    "dcgan5": (64, 3, (4, 4), 2, 1, 1, 1, (32, 32)),
    "unet": (128, 64, (2, 2), 2, 0, 1, 1, (28, 28)),
    "fsrcnn": (56, 1, (9, 9), 3, 4, 1, 1, (24, 24)),
    "stride1": (64, 64, (3, 3), 1, 1, 1, 1, (16, 16)),
    "dilated": (32, 32, (3, 3), 2, 2, 2, 1, (16, 16)),
    "autoencoder": (16, 8, (3, 3), 2, 1, 1, 1, (14, 14)),
    "grouped": (256, 256, (4, 4), 2, 1, 1, 8, (8, 8)),
    "vocoder": (256, 128, (1, 16), (1, 8), (0, 4), 1, 1, (1, 64)),
}


def _layer(name, seed=0):
    c_in, c_out, kernel, stride, padding, dilation, groups, hw = LAYERS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c_in, *hw, generator=g)
    w = torch.randn(c_in, c_out // groups, *kernel, generator=g)
    w /= (c_in // groups * kernel[0] * kernel[1]) ** 0.5  # unit-scale outputs
    return x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _errors(compute, x, w, kw):
    """Max errors of ``compute``'s float32 output and gradients against float64 torch."""
    def run(f, dtype):
        a, b = (t.to(dtype).requires_grad_() for t in (x, w))
        out = f(a, b, **kw)
        g = torch.Generator().manual_seed(1)
        gy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
        return (out, *torch.autograd.grad(out, (a, b), gy))

    exact = run(F.conv_transpose2d, torch.float64)
    return [(got.double() - want).norm().item()
            for got, want in zip(run(compute, torch.float32), exact)]


def _pickable(name, plan):
    """Whether a measurement may pick ``plan`` (as ``use_family`` takes it) for the
    layer's forward at the benchmark's sizes."""
    c_in, c_out, kernel, stride, padding, dilation, groups, hw = LAYERS[name]
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    geometry = (pair(stride), pair(padding), pair(dilation), groups)
    out_hw = [(i - 1) * s - 2 * p + d * (k - 1) + 1 for i, s, p, d, k in zip(
        hw, *geometry[:3], kernel)]
    shapes = ((64, c_in) + hw, (c_in, c_out // groups) + kernel)
    rule = _dispatch._rule(("conv_transpose2d", "", shapes, geometry), (64, c_out, *out_hw))
    as_forced = {("direct", "", ""): ("direct", None, None), ("gemm", "", "mm"):
                 ("gemm", None, None)}
    return plan in [as_forced.get(p, p) for p in _plans.candidates(
        "conv_transpose2d", np.float32, shapes, geometry, out_hw, rule)]


@pytest.mark.parametrize("name, plan", [(n, p) for n in LAYERS for p in PLANS
                                         if _pickable(n, p)],
                         ids=lambda v: plan_id(v) if isinstance(v, tuple) else v)
def test_float32_error_within_twice_torchs(name, plan):
    """RMS error (the norm of the difference) of the output and both gradients, for
    each plan the default can pick on the layer (the others are forced through the
    sweeps)."""
    x, w, kw = _layer(name)
    torchs = _errors(F.conv_transpose2d, x, w, kw)
    with fastconvt.use_family(*plan):
        ours = _errors(fastconvt.conv_transpose2d, x, w, kw)
    for what, mine, theirs in zip(("output", "input gradient", "weight gradient"), ours,
                                  torchs):
        assert mine <= 2 * theirs, (what, mine, theirs)


@pytest.mark.parametrize("plan", PLANS, ids=plan_id)
def test_repeated_calls_are_bitwise_identical(plan):
    """The same call twice, forward and both gradients, on the same thread count:
    the same bits (no order of a reduction depends on timing)."""
    x, w, kw = _layer("dcgan3")
    x = torch.cat([x] * 4)

    def run():
        a, b = (t.clone().requires_grad_() for t in (x, w))
        out = fastconvt.conv_transpose2d(a, b, **kw)
        return (out, *torch.autograd.grad(out.square().sum(), (a, b)))

    with fastconvt.use_family(*plan):
        first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
