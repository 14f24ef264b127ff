"""fastconvt.output_size, output_padding_for, checkerboard and the module's
``output_size=`` against what the layers actually do.

Oracles: the output shape of ``torch.nn.functional.conv_transpose2d``, torch's
own ``ConvTranspose2d._output_padding`` and module, and the values of a
transposed convolution of constants (which count the kernel taps per pixel).
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import fastconvt
from conftest import assert_close
from fastconvt import sizes

ARGS = ("input_size", "kernel_size", "stride", "padding", "output_padding", "dilation")


@st.composite
def geometries(draw, pairs=None):
    """Per-dimension (input, kernel, stride, padding, output_padding, dilation),
    with output_padding up to max(stride, dilation) (one past the valid range)
    and padding large enough for some non-positive sizes; each argument an int
    or a pair."""
    dims = []
    for _ in range(2):
        s, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        dims.append((draw(st.integers(1, 5)), draw(st.integers(1, 4)), s,
                     draw(st.integers(0, 4)), draw(st.integers(0, max(s, d))), d))
    as_pair = [draw(st.booleans()) if pairs is None else pairs for _ in ARGS]
    if not any(as_pair):
        dims[1] = dims[0]
    return {name: (dims[0][j], dims[1][j]) if as_pair[j] else dims[0][j]
            for j, name in enumerate(ARGS)}


def _hw(value):
    return tuple(value) if isinstance(value, tuple) else (value, value)


def _torch_output_hw(g):
    """torch's output (H, W) for geometry ``g``, or None where torch rejects it
    (or returns an empty output)."""
    x = torch.zeros((1, 1) + _hw(g["input_size"]), dtype=torch.float64)
    w = torch.zeros((1, 1) + _hw(g["kernel_size"]), dtype=torch.float64)
    try:
        y = F.conv_transpose2d(x, w, None, g["stride"], g["padding"], g["output_padding"], 1,
                               g["dilation"])
    except RuntimeError:
        return None
    return tuple(y.shape[2:]) if min(y.shape[2:]) > 0 else None


# ---------------------------------------------------------------------------
# output_size


@settings(max_examples=300, deadline=None)
@given(g=geometries())
def test_output_size_is_the_shape_torch_computes(g):
    expected = _torch_output_hw(g)
    if expected is None:
        with pytest.raises(ValueError):
            fastconvt.output_size(**g)
        return
    actual = fastconvt.output_size(**g)
    if all(isinstance(v, int) for v in g.values()):
        assert type(actual) is int and (actual, actual) == expected
    else:
        assert type(actual) is tuple and actual == expected


@pytest.mark.parametrize("g", [
    dict(input_size=(4, 3), kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
         output_padding=(1, 0), dilation=(1, 2)),
    dict(input_size=5, kernel_size=4, stride=3, padding=2, output_padding=2, dilation=2),
], ids=["pairs", "ints"])
def test_output_size_is_the_shape_fastconvt_computes(g):
    x = torch.randn((2, 3) + _hw(g["input_size"]))
    w = torch.randn((3, 2) + _hw(g["kernel_size"]))
    y = fastconvt.conv_transpose2d(x, w, None, g["stride"], g["padding"], g["output_padding"],
                                   1, g["dilation"])
    assert tuple(y.shape[2:]) == _hw(fastconvt.output_size(**g))


def test_output_size_article_example():
    # the article's worked example: I = 4, S = 2, P = 1, K = 3, output_padding = 1
    assert fastconvt.output_size(4, 3, stride=2, padding=1, output_padding=1) == 8
    assert fastconvt.output_size((4, 4), 3, stride=2, padding=1, output_padding=1) == (8, 8)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(input_size=True), TypeError, ["input_size", "bool"]),
    (dict(stride=(2, False)), TypeError, ["stride", "bool"]),
    (dict(kernel_size=3.0), TypeError, ["kernel_size", "float"]),
    (dict(padding="1"), TypeError, ["padding", "str"]),
    (dict(dilation=(1, 2, 3)), ValueError, ["dilation"]),
    (dict(input_size=0), ValueError, ["input_size", "positive"]),
    (dict(kernel_size=(3, 0)), ValueError, ["kernel_size", "positive"]),
    (dict(stride=0), ValueError, ["stride", "positive"]),
    (dict(dilation=-1), ValueError, ["dilation", "positive"]),
    (dict(padding=(0, -1)), ValueError, ["padding", "non-negative"]),
    (dict(output_padding=-1), ValueError, ["output_padding", "non-negative"]),
    (dict(output_padding=2), ValueError, ["output_padding", "smaller", "stride", "dilation"]),
    (dict(output_padding=(0, 3), dilation=(1, 3)), ValueError, ["output_padding", "smaller"]),
    (dict(padding=5), ValueError, ["not positive", "= -1"]),
    (dict(padding=(0, 5)), ValueError, ["along W", "not positive"]),
], ids=str)
def test_output_size_rejects(kwargs, exc, words):
    args = dict(input_size=4, kernel_size=3, stride=2, padding=0, output_padding=0, dilation=1)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        fastconvt.output_size(**args)
    assert type(info.value) is exc
    for word in words:
        assert word in str(info.value)


def test_output_size_accepts_index_types():
    assert fastconvt.output_size(np.int64(4), torch.tensor(3), [2, 2], torch.Size([1, 1])) == (7, 7)


# ---------------------------------------------------------------------------
# output_padding_for


def _torch_size_1d(i, k, s, p, op, d):
    """torch's output length along one dimension, or None where torch rejects it."""
    try:
        y = F.conv_transpose1d(torch.zeros(1, 1, i, dtype=torch.float64),
                               torch.zeros(1, 1, k, dtype=torch.float64), None, s, p, op, 1, d)
    except RuntimeError:
        return None
    return y.shape[-1] if y.shape[-1] > 0 else None


def _reachable(i, k, s, p, d):
    """The lengths torch's layer produces along one dimension, over every
    output_padding it accepts."""
    return {n for op in range(s + d) if (n := _torch_size_1d(i, k, s, p, op, d)) is not None}


def _per_dim(g):
    """(input, kernel, stride, padding, dilation) along H and along W."""
    names = ("input_size", "kernel_size", "stride", "padding", "dilation")
    return list(zip(*[_hw(g[n]) for n in names]))


@settings(max_examples=200, deadline=None)
@given(g=geometries(), offsets=st.tuples(st.integers(-2, 4), st.integers(-2, 4)))
def test_output_padding_for_inverts_output_size(g, offsets):
    del g["output_padding"]
    reachable = [_reachable(*dim) for dim in _per_dim(g)]
    target = tuple(max(min(r, default=1) + o, 1) for r, o in zip(reachable, offsets))
    is_int = all(isinstance(v, int) for v in g.values())
    if is_int:
        target = target[0]
    if all(t in r for t, r in zip(_hw(target), reachable)):
        op = fastconvt.output_padding_for(g["input_size"], target, g["kernel_size"],
                                          g["stride"], g["padding"], g["dilation"])
        assert (type(op) is int) == is_int
        assert fastconvt.output_size(g["input_size"], g["kernel_size"], g["stride"],
                                     g["padding"], op, g["dilation"]) == target
    else:
        with pytest.raises(ValueError) as info:
            fastconvt.output_padding_for(g["input_size"], target, g["kernel_size"],
                                         g["stride"], g["padding"], g["dilation"])
        message = str(info.value)
        dim = next(j for j in range(2) if _hw(target)[j] not in reachable[j])
        assert f"no output_padding reaches size {_hw(target)[dim]}" in message
        listed = message.split("reachable sizes: ")[1]
        assert listed == (", ".join(map(str, sorted(reachable[dim]))) or "none")


def test_output_padding_for_article_example():
    assert fastconvt.output_padding_for(4, 8, kernel_size=3, stride=2, padding=1) == 1
    assert fastconvt.output_padding_for(4, 7, kernel_size=3, stride=2, padding=1) == 0
    assert fastconvt.output_padding_for((4, 6), (8, 11), 3, 2, 1) == (1, 0)
    with pytest.raises(ValueError, match=r"no output_padding reaches size 9 .*"
                                         r"reachable sizes: 7, 8$"):
        fastconvt.output_padding_for(4, 9, kernel_size=3, stride=2, padding=1)
    with pytest.raises(ValueError, match="reaches size 13 along W.*reachable sizes: 11, 12$"):
        fastconvt.output_padding_for((4, 6), (8, 13), 3, 2, 1)


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(target_size=0), ValueError, "target_size"),
    (dict(target_size=(8, -1)), ValueError, "target_size"),
    (dict(target_size=False), TypeError, "target_size"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
], ids=str)
def test_output_padding_for_rejects(kwargs, exc, word):
    args = dict(input_size=4, target_size=8, kernel_size=3, stride=2, padding=1, dilation=1)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        fastconvt.output_padding_for(**args)


# ---------------------------------------------------------------------------
# the module's output_size=: torch's contract, a superset of torch's sizes


def _torch_module(g):
    return nn.ConvTranspose2d(1, 1, g["kernel_size"], g["stride"], g["padding"],
                              dilation=g["dilation"])


@settings(max_examples=200, deadline=None)
@given(g=geometries(pairs=True), offsets=st.tuples(*[st.sampled_from([-1, 0, 0, 1, 1, 2, 3])] * 2),
       form=st.sampled_from(["2", "4", "list", "Size"]))
def test_output_padding_agrees_with_torch_where_torch_accepts(g, offsets, form):
    tm = _torch_module(g)
    x = torch.zeros((1, 1) + g["input_size"])
    lows = [min(_reachable(*dim), default=1) for dim in _per_dim(g)]
    size = tuple(lo + o for lo, o in zip(lows, offsets))
    size = {"2": size, "4": (1, 1) + size, "list": list(size), "Size": torch.Size(size)}[form]
    args = (tm.stride, tm.padding, tm.kernel_size)
    try:
        expected = tm._output_padding(x, size, *args, 2, tm.dilation)
    except ValueError as e:
        expected = e
    try:
        actual = sizes._output_padding(x, size, *args, tm.dilation)
    except ValueError as e:
        actual = e
    if not isinstance(expected, ValueError):
        assert actual == expected
        spatial = tuple(size)[-2:]
        if min(spatial) > 0:
            assert fastconvt.output_padding_for(g["input_size"], spatial, g["kernel_size"],
                                                g["stride"], g["padding"],
                                                g["dilation"]) == tuple(expected)
    elif all(d <= s for d, s in zip(g["dilation"], g["stride"])):
        assert type(actual) is ValueError and str(actual) == str(expected)
    elif isinstance(actual, ValueError):
        assert str(actual).startswith(f"requested an output size of {size[-2:]}, but valid")
    else:
        # the superset: sizes only stride <= op < dilation reaches
        assert any(op >= s for op, s in zip(actual, g["stride"]))
        for dim, op, n in zip(_per_dim(g), actual, tuple(size)[-2:]):
            if n > 0:  # else the convolution rejects it, as torch's would
                assert _torch_size_1d(*dim[:4], op, dim[4]) == n


def test_output_padding_none_means_the_modules():
    x = torch.zeros(1, 1, 4, 4)
    assert sizes._output_padding(x, None, (2, 2), (1, 1), (3, 3), (1, 1)) is None
    m = fastconvt.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=(1, 0))
    assert m(x).shape == (1, 1, 8, 7)


@pytest.mark.parametrize("x_shape, size", [
    ((1, 1, 4, 4), (8,)), ((1, 1, 4, 4), (1, 8, 8)), ((1, 4, 4), (1, 1, 8, 8)),
    ((1, 1, 4, 4), (1, 1, 1, 8, 8)),
], ids=str)
def test_output_size_of_wrong_length_raises_like_torch(x_shape, size):
    tm = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1)
    fm = fastconvt.ConvTranspose2d(1, 1, 3, stride=2, padding=1)
    x = torch.zeros(x_shape)
    with pytest.raises(ValueError) as expected:
        tm(x, output_size=size)
    with pytest.raises(ValueError) as actual:
        fm(x, output_size=size)
    assert str(actual.value) == str(expected.value)


@pytest.mark.parametrize("cfg, x_shape, size", [
    (dict(kernel_size=3, stride=2, padding=1), (4, 4), (8, 7)),
    (dict(kernel_size=(3, 4), stride=(3, 2), padding=(1, 0), dilation=(2, 1)), (4, 5),
     (2, 4, 14, 13)),
    (dict(kernel_size=3, stride=(2, 3), padding=1, groups=2), (4, 5), (8, 15)),
    (dict(kernel_size=3, stride=2, dilation=2), (4, 4), (11, 12)),
], ids=["article", "pairs", "groups", "dilation<=stride"])
def test_module_output_size_equals_torch(cfg, x_shape, size):
    """x_shape: the input's (H, W)."""
    torch.manual_seed(0)
    fm = fastconvt.ConvTranspose2d(2, 4, **cfg, dtype=torch.float64)
    tm = nn.ConvTranspose2d(2, 4, **cfg, dtype=torch.float64)
    tm.load_state_dict(fm.state_dict())
    x = torch.randn((2, 2) + x_shape, dtype=torch.float64)
    y = fm(x, output_size=size)
    assert tuple(y.shape[-2:]) == tuple(size)[-2:]
    assert_close(y, tm(x, output_size=size))
    assert_close(fm(x[0], output_size=size[-2:]), tm(x[0], output_size=size[-2:]))


@pytest.mark.parametrize("cfg, size, op", [
    (dict(kernel_size=3, stride=1, dilation=3), (11, 13), (1, 2)),
    (dict(kernel_size=(2, 3), stride=(2, 1), dilation=(3, 2), padding=1), (10, 8), (2, 1)),
], ids=["stride1", "pairs"])
def test_module_output_size_beyond_torch(cfg, size, op):
    """Sizes with stride <= output_padding < dilation: torch's module rejects
    them although its functional (and the layer's formula) reach them."""
    torch.manual_seed(0)
    fm = fastconvt.ConvTranspose2d(2, 3, **cfg, dtype=torch.float64)
    tm = nn.ConvTranspose2d(2, 3, **cfg, dtype=torch.float64)
    tm.load_state_dict(fm.state_dict())
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="requested an output size"):
        tm(x, output_size=size)
    y = fm(x, output_size=size)
    assert y.shape == (2, 3) + size
    assert_close(y, F.conv_transpose2d(x, tm.weight, tm.bias, tm.stride, tm.padding, op,
                                       dilation=tm.dilation))


def test_module_unreachable_output_size_names_the_range():
    fm = fastconvt.ConvTranspose2d(1, 1, 3, stride=1, dilation=3)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError) as info:
        fm(x, output_size=(13, 10))
    assert str(info.value) == ("requested an output size of (13, 10), but valid sizes range "
                               "from [10, 10] to [12, 12] (for an input of torch.Size([4, 4]))")


# ---------------------------------------------------------------------------
# checkerboard


def _interior(y, kernel, stride, padding, dilation, in_hw):
    """The output pixels every kernel tap reaches from inside the input, with
    their (H, W) coordinates."""
    ranges = []
    for k, s, p, d, n, out in zip(kernel, stride, padding, dilation, in_hw, y.shape[-2:]):
        # o + p - k d must lie in [0, (n - 1) s] for every tap k
        ranges.append(range(max((k - 1) * d - p, 0), min((n - 1) * s - p, out - 1) + 1))
    assert len(ranges[0]) and len(ranges[1]), "no interior: enlarge the input"
    return y[..., ranges[0].start:ranges[0].stop, ranges[1].start:ranges[1].stop], ranges


def _constant_response(kernel, stride, padding, dilation, weight_value=1.5, input_value=2.0):
    """A constant input (3 channels) through a layer with constant weights; the
    interior and its coordinate ranges."""
    kernel, stride, padding, dilation = map(_hw, (kernel, stride, padding, dilation))
    in_hw = tuple(-(-(k - 1) * d // s) + 3 + 2 * p
                  for k, s, p, d in zip(kernel, stride, padding, dilation))
    x = torch.full((1, 3) + in_hw, input_value, dtype=torch.float64)
    w = torch.full((3, 1) + kernel, weight_value, dtype=torch.float64)
    y = fastconvt.conv_transpose2d(x, w, stride=stride, padding=padding, dilation=dilation)
    return _interior(y[0, 0], kernel, stride, padding, dilation, in_hw)


def _expected_from_counts(counts, ranges, stride, padding, scale):
    stride, padding = _hw(stride), _hw(padding)
    return torch.tensor([[scale * counts[(oh + padding[0]) % stride[0],
                                         (ow + padding[1]) % stride[1]].item()
                          for ow in ranges[1]] for oh in ranges[0]], dtype=torch.float64)


@pytest.mark.parametrize("padding", [0, 1, (2, 3)])
def test_checkerboard_stride2_kernel3_shows_and_predicts_it(padding):
    counts = fastconvt.checkerboard(3, 2)
    assert counts.dtype == torch.int64 and counts.shape == (2, 2)
    interior, ranges = _constant_response(3, 2, padding, 1)
    assert interior.max() > interior.min()  # a checkerboard
    assert len(set(counts.flatten().tolist())) > 1  # and predicted uneven
    scale = 3 * 1.5 * 2.0  # channels * weight * input
    assert torch.equal(interior, _expected_from_counts(counts, ranges, 2, padding, scale))


@pytest.mark.parametrize("kernel, stride, dilation", [
    (4, 2, 1), ((6, 3), 3, 1), ((4, 9), (2, 3), (3, 2)), (2, 2, 3),
], ids=str)
def test_kernel_divisible_by_stride_is_even_and_flat(kernel, stride, dilation):
    counts = fastconvt.checkerboard(kernel, stride, dilation)
    assert tuple(counts.shape) == _hw(stride)
    assert (counts == counts.flatten()[0]).all()
    interior, _ = _constant_response(kernel, stride, 1, dilation)
    assert (interior == interior.flatten()[0]).all()


@settings(max_examples=60, deadline=None)
@given(kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_checkerboard_predicts_every_phase(kernel, stride, padding, dilation):
    counts = fastconvt.checkerboard(kernel, stride, dilation)
    assert tuple(counts.shape) == stride and counts.sum() == kernel[0] * kernel[1]
    interior, ranges = _constant_response(kernel, stride, padding, dilation, 1.0, 1.0)
    assert torch.equal(interior, _expected_from_counts(counts, ranges, stride, padding, 3.0))


def test_checkerboard_rejects():
    with pytest.raises(ValueError, match="stride"):
        fastconvt.checkerboard(3, 0)
    with pytest.raises(TypeError, match="kernel_size"):
        fastconvt.checkerboard(True, 2)
