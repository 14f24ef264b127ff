"""fastconvt.init: the layers the initialisations promise, checked through
fastconvt.conv_transpose2d against independent constructions (nearest
up-sampling then a convolution; torch's bilinear interpolation)."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastconvt
from conftest import assert_close

# (C_in, C_out, kernel, stride, padding, groups)
CHECKERBOARD_FREE_CASES = [
    (2, 3, 3, 2, 0, 1),
    (1, 1, 3, 2, 1, 1),
    (2, 3, 4, 2, 1, 1),
    (2, 2, (5, 4), (2, 3), (1, 2), 1),
    (4, 6, (4, 3), (3, 2), 0, 2),
    (3, 3, (3, 5), (3, 2), 2, 3),
    (2, 4, 4, 1, 1, 1),
]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _layer_input(c_in, kernel, stride, generator=None, constant=False):
    hw = tuple(-(-k // s) + 5 for k, s in zip(_pair(kernel), _pair(stride)))
    if constant:
        return torch.full((2, c_in) + hw, 0.75, dtype=torch.float64)
    return torch.randn((2, c_in) + hw, dtype=torch.float64, generator=generator)


def _interior(y, kernel, stride, padding, in_hw):
    """The output pixels every kernel tap reaches from inside the input."""
    crops = []
    for k, s, p, n in zip(_pair(kernel), _pair(stride), _pair(padding), in_hw):
        crops.append(slice(max(k - 1 - p, 0), (n - 1) * s - p + 1))
    return y[..., crops[0], crops[1]]


def _as_conv2d_weight(v, groups):
    """The ``conv2d`` weight that convolves (in the true sense) with the
    transposed-convolution kernel ``v`` of shape (C_in, C_out // groups, h, w):
    channels swapped per group, taps flipped."""
    c_in, c_out_g = v.shape[:2]
    v = v.reshape(groups, c_in // groups, c_out_g, *v.shape[2:]).transpose(1, 2)
    return v.reshape(groups * c_out_g, c_in // groups, *v.shape[3:]).flip(-2, -1)


@pytest.mark.parametrize("case", CHECKERBOARD_FREE_CASES, ids=str)
def test_checkerboard_free_interior_is_flat(case):
    c_in, c_out, kernel, stride, padding, groups = case
    w = torch.empty((c_in, c_out // groups) + _pair(kernel), dtype=torch.float64)
    torch.manual_seed(0)
    assert fastconvt.init.checkerboard_free_(w, stride) is w
    x = _layer_input(c_in, kernel, stride, constant=True)
    y = fastconvt.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    interior = _interior(y, kernel, stride, padding, x.shape[2:])
    assert min(interior.shape[2:]) >= 2 * max(_pair(stride))
    flat = interior[..., :1, :1].expand_as(interior)
    assert_close(interior, flat)
    assert interior.abs().max() > 0.01


def test_default_init_paints_a_checkerboard():
    """The control for the test above: torch's init, same layer, is not flat."""
    torch.manual_seed(0)
    m = fastconvt.ConvTranspose2d(2, 3, 3, stride=2, bias=False, dtype=torch.float64)
    x = _layer_input(2, 3, 2, constant=True)
    interior = _interior(m(x).detach(), 3, 2, 0, x.shape[2:])
    spread = interior.amax(dim=(-2, -1)) - interior.amin(dim=(-2, -1))
    assert (spread > 1e-3).all()


@pytest.mark.parametrize("seeding", ["generator", "manual_seed"])
@pytest.mark.parametrize("case", CHECKERBOARD_FREE_CASES, ids=str)
def test_checkerboard_free_is_nearest_upsampling_then_convolution(case, seeding):
    """conv_transpose2d with the kernel equals F.interpolate(mode='nearest')
    followed by a convolution with v, v drawn as torch initialises a
    ConvTranspose2d weight of v's shape."""
    c_in, c_out, kernel, stride, padding, groups = case
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    v_shape = (c_in, c_out // groups, kh - sh + 1, kw - sw + 1)
    w = torch.empty((c_in, c_out // groups, kh, kw), dtype=torch.float64)
    v = torch.empty(v_shape, dtype=torch.float64)
    if seeding == "generator":
        fastconvt.init.checkerboard_free_(w, stride, generator=torch.Generator().manual_seed(3))
        torch.nn.init.kaiming_uniform_(v, a=math.sqrt(5),
                                       generator=torch.Generator().manual_seed(3))
    else:
        torch.manual_seed(3)
        fastconvt.init.checkerboard_free_(w, stride)
        torch.manual_seed(3)
        torch.nn.init.kaiming_uniform_(v, a=math.sqrt(5))
    x = _layer_input(c_in, kernel, stride, generator=torch.Generator().manual_seed(4))
    y = fastconvt.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    up = F.interpolate(x, scale_factor=(sh, sw), mode="nearest")
    z = F.conv2d(up, _as_conv2d_weight(v, groups), padding=(v_shape[2] - 1, v_shape[3] - 1),
                 groups=groups)
    z = z[..., ph:z.shape[2] - ph, pw:z.shape[3] - pw]
    assert_close(y, z)


def test_checkerboard_free_on_a_module_parameter():
    m = fastconvt.ConvTranspose2d(4, 6, (4, 5), stride=(2, 3), padding=1, groups=2)
    before = m.weight.detach().clone()
    out = fastconvt.init.checkerboard_free_(m.weight, m.stride)
    assert out is m.weight and out.grad_fn is None and m.weight.requires_grad
    assert not torch.equal(m.weight.detach(), before)
    y = m(torch.ones(1, 4, 6, 6))
    y.sum().backward()  # still a trainable leaf
    assert m.weight.grad is not None


@pytest.mark.parametrize("shape, stride", [((1, 1, 2, 3), 3), ((1, 1, 3, 3), (2, 4))], ids=str)
def test_checkerboard_free_rejects_kernel_smaller_than_stride(shape, stride):
    with pytest.raises(ValueError, match="stride"):
        fastconvt.init.checkerboard_free_(torch.empty(shape), stride)


# ---------------------------------------------------------------------------
# bilinear_


def _fcn_layer(f):
    """FCN's up-sampling layer for factor f (an int or a pair)."""
    f = _pair(f)
    return (tuple(2 * n - n % 2 for n in f), f, tuple(math.ceil((n - 1) / 2) for n in f))


@pytest.mark.parametrize("groups", ["identity", "depthwise"])
@pytest.mark.parametrize("f", [2, 3, 4, (2, 3), (4, 1)], ids=str)
def test_bilinear_matches_interpolate_away_from_borders(f, groups):
    kernel, stride, padding = _fcn_layer(f)
    c = 3
    w = torch.empty((c, c if groups == "identity" else 1) + kernel, dtype=torch.float64)
    assert fastconvt.init.bilinear_(w) is w
    x = torch.randn(2, c, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = fastconvt.conv_transpose2d(x, w, stride=stride, padding=padding,
                                   groups=1 if groups == "identity" else c)
    expected = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
    assert y.shape == expected.shape
    (mh, mw) = stride
    assert_close(y[..., mh:-mh, mw:-mw], expected[..., mh:-mh, mw:-mw])


def test_bilinear_identity_kernel_does_not_mix_channels():
    w = fastconvt.init.bilinear_(torch.empty(3, 3, 4, 4))
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert (w[off_diagonal] == 0).all() and (w[~off_diagonal] > 0).all()


def test_bilinear_on_a_module_parameter():
    m = fastconvt.ConvTranspose2d(5, 5, 4, stride=2, padding=1, groups=5, bias=False)
    out = fastconvt.init.bilinear_(m.weight)
    assert out is m.weight and out.grad_fn is None and m.weight.requires_grad
    x = torch.randn(1, 5, 4, 4)
    y = m(x).detach()
    assert_close(y[..., 2:-2, 2:-2],
                 F.interpolate(x, scale_factor=2, mode="bilinear")[..., 2:-2, 2:-2])


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (3, 2, 4, 4), (3, 3, 4)], ids=str)
def test_bilinear_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        fastconvt.init.bilinear_(torch.empty(shape))
