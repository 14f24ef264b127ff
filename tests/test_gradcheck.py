"""gradcheck and gradgradcheck in float64 through fastconvt's autograd Functions."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastconvt
from conftest import PLANS_FLOAT64, plan_id
from fastconvt._autograd import (Conv2dFunction, ConvTranspose2dFunction,
                                 WeightCorrelationFunction)

# (input shape, C_out, groups, kernel, stride, padding, output_padding, dilation, bias)
CASES = {
    "plain": ((2, 2, 3, 3), 3, 1, 3, 2, 1, 1, 1, True),
    "1x1-input": ((2, 4, 1, 1), 4, 2, (3, 2), 1, 0, 0, 1, True),
    "groups": ((1, 4, 3, 2), 2, 2, 2, 2, 0, 1, 1, True),
    "depthwise": ((2, 3, 3, 3), 6, 3, 3, 2, 1, 0, 1, False),
    "dilation-op": ((1, 2, 3, 3), 2, 1, 2, 1, 1, 1, 2, True),
    "no-bias": ((1, 2, 2, 3), 2, 1, 3, 3, 1, 2, 1, False),
    "unbatched": ((2, 3, 2), 2, 1, 3, 2, 1, 0, 1, True),
    "non-square": ((1, 2, 2, 4), 2, 1, (3, 1), (1, 2), (1, 0), (0, 1), (2, 1), True),
    "stride1-3x3": ((2, 3, 3, 4), 2, 1, 3, 1, 1, 0, 1, True),  # Winograd's geometry
}


def _inputs(case):
    shape, c_out, groups, k, s, p, op, d, bias = case
    k = (k, k) if isinstance(k, int) else k
    c_in = shape[-3]
    g = torch.Generator().manual_seed(0)
    make = lambda *size: torch.randn(*size, generator=g, dtype=torch.float64,  # noqa: E731
                                     requires_grad=True)
    tensors = (make(*shape), make(c_in, c_out // groups, *k), make(c_out) if bias else None)
    return tensors, dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)


@pytest.mark.parametrize("plan", PLANS_FLOAT64, ids=plan_id)
@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name, plan):
    (x, w, b), kw = _inputs(CASES[name])
    f = lambda x, w, b: fastconvt.conv_transpose2d(x, w, b, **kw)  # noqa: E731
    with fastconvt.use_family(*plan):
        assert gradcheck(f, (x, w, b))
        assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("family", fastconvt.kernels.FAMILIES)
def test_gradcheck_channels_last_1x1_output_padding(family):
    """The configuration whose float32 backward corrupts torch's heap."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(3, 1, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda x, w: fastconvt.conv_transpose2d(x, w, stride=4, output_padding=3)  # noqa: E731
    with fastconvt.use_family(family):
        assert gradcheck(f, (x, w))
        assert gradgradcheck(f, (x, w))


@pytest.mark.parametrize("plan", PLANS_FLOAT64, ids=plan_id)
@pytest.mark.parametrize("name", ["plain", "groups", "dilation-op", "1x1-input",
                                  "stride1-3x3"])
def test_each_map_gradgradcheck(name, plan):
    """Each linear map on its own: convolution and weight correlation too."""
    (x, w, _), kw = _inputs(CASES[name])
    geometry = tuple((v, v) if isinstance(v, int) else v
                     for v in (kw["stride"], kw["padding"], kw["dilation"])) + (kw["groups"],)
    y = fastconvt.conv_transpose2d(x, w, **kw).detach().requires_grad_()
    hw_x, hw_y, hw_k = x.shape[2:], y.shape[2:], w.shape[2:]
    maps = {
        "conv_transpose": (lambda x, w: ConvTranspose2dFunction.apply(x, w, None, geometry, hw_y),
                           (x, w)),
        "conv": (lambda y, w: Conv2dFunction.apply(y, w, geometry, hw_x), (y, w)),
        "weight_correlation": (lambda x, y: WeightCorrelationFunction.apply(x, y, geometry, hw_k),
                               (x, y)),
    }
    with fastconvt.use_family(*plan):
        for f, args in maps.values():
            assert gradcheck(f, args)
            assert gradgradcheck(f, args)
