"""Bad calls: fastconvt raises exactly torch's exception class, with a message
that names the problem, and never lets a Numba error escape.

Every case runs through ``torch.nn.functional.conv_transpose2d`` and
``fastconvt.conv_transpose2d`` (and, in ``MODULE_CASES``, through the module
constructor and forward) in float32 and float64. Only the exception *class* is
compared with torch: torch's float32 path (oneDNN, taken for batch >= 2) words
several messages unhelpfully ("could not create a primitive descriptor for the
deconvolution forward propagation primitive" for a 0-sized kernel, dilation 0
or C_out/groups 0), so the key phrase is asserted on fastconvt's message only.
"""
import os
import traceback
import warnings
from typing import NamedTuple

import numba.core.errors
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastconvt
from conftest import DTYPES


class Raw:
    """A non-tensor argument, passed through as is."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"Raw({self.value!r})"


class Case(NamedTuple):
    id: str
    input: object  # a shape, or Raw(value)
    weight: object
    bias: object = None  # None, a shape, or Raw(value)
    kwargs: dict = {}
    phrase: str = ""  # must occur in fastconvt's message (case-insensitive)


def _make(spec, dtype):
    if spec is None:
        return None
    if isinstance(spec, Raw):
        return spec.value
    return torch.randn(spec, dtype=dtype)


def _args(case, dtype):
    torch.manual_seed(0)
    return (_make(case.input, dtype), _make(case.weight, dtype), _make(case.bias, dtype))


X, W = (1, 3, 5, 5), (3, 2, 3, 3)  # a valid pair: C_in 3, C_out 2, 3x3 kernel
X2 = (2, 3, 5, 5)  # batch 2: torch's float32 takes its oneDNN path

FUNCTIONAL_CASES = [
    # input rank
    Case("input_1d", (3,), W, phrase="3D (unbatched) or 4D"),
    Case("input_2d", (3, 5), W, phrase="3D (unbatched) or 4D"),
    Case("input_5d", (1, 3, 4, 4, 4), W, phrase="3D (unbatched) or 4D"),
    # channels
    Case("channels", (1, 4, 5, 5), W, phrase="channels"),
    Case("channels_unbatched", (4, 5, 5), W, phrase="channels"),
    Case("channels_batch2", (2, 2, 5, 5), W, phrase="channels"),
    # weight rank (torch complains about the stride length instead)
    Case("weight_2d", X, (3, 2), phrase="weight"),
    Case("weight_3d", X, (3, 2, 3), phrase="weight"),
    Case("weight_5d", X, (3, 2, 3, 3, 1), phrase="weight"),
    # groups
    Case("groups_not_dividing_weight_dim0", X, W, kwargs=dict(groups=2), phrase="groups"),
    Case("groups_not_dividing_channels", (1, 6, 5, 5), (6, 2, 3, 3), kwargs=dict(groups=4),
         phrase="groups"),
    Case("groups_0", (1, 4, 5, 5), (4, 2, 3, 3), kwargs=dict(groups=0), phrase="groups"),
    Case("groups_negative", (1, 4, 5, 5), (4, 2, 3, 3), kwargs=dict(groups=-2),
         phrase="groups"),
    Case("groups_float", (1, 4, 5, 5), (4, 2, 3, 3), kwargs=dict(groups=2.0), phrase="groups"),
    # stride
    Case("stride_0", X, W, kwargs=dict(stride=0), phrase="stride"),
    Case("stride_0_width", X, W, kwargs=dict(stride=(1, 0)), phrase="stride"),
    Case("stride_negative", X, W, kwargs=dict(stride=-1), phrase="stride"),
    Case("stride_0_batch2", X2, W, kwargs=dict(stride=0), phrase="stride"),
    Case("stride_len3", X, W, kwargs=dict(stride=(1, 2, 3)), phrase="stride"),
    Case("stride_len0", X, W, kwargs=dict(stride=()), phrase="stride"),
    Case("stride_float", X, W, kwargs=dict(stride=1.5), phrase="stride"),
    Case("stride_float_in_tuple", X, W, kwargs=dict(stride=(1, 2.0)), phrase="stride"),
    Case("stride_none", X, W, kwargs=dict(stride=None), phrase="stride"),
    Case("stride_str", X, W, kwargs=dict(stride="2"), phrase="stride"),
    # padding
    Case("padding_negative", X, W, kwargs=dict(padding=-1), phrase="padding"),
    Case("padding_negative_width", X, W, kwargs=dict(padding=(0, -2)), phrase="padding"),
    Case("padding_negative_batch2", X2, W, kwargs=dict(padding=-1), phrase="padding"),
    Case("padding_len3", X, W, kwargs=dict(padding=(1, 2, 3)), phrase="padding"),
    Case("padding_float", X, W, kwargs=dict(padding=1.0), phrase="padding"),
    # ('same' and 'valid' are fastconvt's own: tests/test_same_padding.py)
    Case("padding_string", X, W, kwargs=dict(padding="full"), phrase="padding"),
    # output_padding
    Case("output_padding_negative", X, W, kwargs=dict(stride=2, output_padding=-1),
         phrase="output_padding"),
    Case("output_padding_equal_stride", X, W, kwargs=dict(stride=2, output_padding=2),
         phrase="output padding"),
    Case("output_padding_above_stride_width", X, W,
         kwargs=dict(stride=(2, 3), output_padding=(0, 4)), phrase="output padding"),
    Case("output_padding_stride1", X, W, kwargs=dict(output_padding=1), phrase="output padding"),
    Case("output_padding_equal_dilation", X, W, kwargs=dict(dilation=3, output_padding=3),
         phrase="output padding"),
    Case("output_padding_batch2", X2, W, kwargs=dict(stride=2, output_padding=(1, 2)),
         phrase="output padding"),
    Case("output_padding_len3", X, W, kwargs=dict(output_padding=(0, 0, 0)),
         phrase="output_padding"),
    # dilation
    Case("dilation_0", X, W, kwargs=dict(dilation=0), phrase="dilation"),
    Case("dilation_0_height", X, W, kwargs=dict(dilation=(0, 1)), phrase="dilation"),
    Case("dilation_negative", X, W, kwargs=dict(dilation=(1, -1)), phrase="dilation"),
    Case("dilation_0_batch2", X2, W, kwargs=dict(dilation=0), phrase="dilation"),
    Case("dilation_len3", X, W, kwargs=dict(dilation=(1, 2, 3)), phrase="dilation"),
    # bias
    Case("bias_wrong_length", X, W, (3,), phrase="bias"),
    Case("bias_2d", X, W, (1, 2), phrase="bias"),
    Case("bias_0d", X, W, (), phrase="bias"),
    Case("bias_wrong_length_groups", (1, 4, 5, 5), (4, 3, 3, 3), (3,), dict(groups=2), "bias"),
    Case("bias_wrong_length_batch2", X2, W, (3,), phrase="bias"),
    # empty weight dims
    Case("kernel_height_0", X, (3, 2, 0, 3), phrase="kernel size"),
    Case("kernel_width_0", X, (3, 2, 3, 0), phrase="kernel size"),
    Case("kernel_0_batch2", X2, (3, 2, 0, 0), phrase="kernel size"),
    Case("out_channels_per_group_0", X, (3, 0, 3, 3), phrase="weight"),
    Case("out_channels_per_group_0_batch2", X2, (3, 0, 3, 3), phrase="weight"),
    Case("in_channels_0", (1, 0, 5, 5), (0, 2, 3, 3), phrase="weight"),
    # zero spatial input with batch > 0
    Case("input_height_0", (2, 3, 0, 5), W, phrase="Only zero batch or zero channel inputs"),
    Case("input_width_0", (1, 3, 5, 0), W, phrase="Only zero batch or zero channel inputs"),
    Case("input_height_0_unbatched", (3, 0, 5), W,
         phrase="Only zero batch or zero channel inputs"),
    # output size empty or negative (batch 1: see test_empty_output_always_raises for
    # batch 0 and batch >= 2, where torch accepts some of these)
    Case("output_0x0_2x2_k1_p1", (1, 3, 2, 2), (3, 2, 1, 1), kwargs=dict(padding=1),
         phrase="Output size is too small"),
    Case("output_0x0_3x3_k2_p2", (1, 3, 3, 3), (3, 2, 2, 2), kwargs=dict(padding=2),
         phrase="Output size is too small"),
    Case("output_height_0", (1, 3, 3, 3), (3, 2, 2, 2), kwargs=dict(padding=(2, 0)),
         phrase="Output size is too small"),
    Case("output_width_0", (1, 3, 3, 3), (3, 2, 2, 2), kwargs=dict(padding=(0, 2)),
         phrase="Output size is too small"),
    Case("output_negative", (1, 3, 1, 1), (3, 2, 1, 1), kwargs=dict(padding=3),
         phrase="Output size is too small"),
    Case("output_negative_batch2", (2, 3, 1, 1), (3, 2, 1, 1), kwargs=dict(padding=3),
         phrase="Output size is too small"),
    Case("output_0_unbatched", (3, 2, 2), (3, 2, 1, 1), kwargs=dict(padding=1),
         phrase="Output size is too small"),
    Case("output_huge_padding", X, W, kwargs=dict(padding=2 ** 40),
         phrase="Output size is too small"),
    # not tensors
    Case("input_not_tensor", Raw([[1.0]]), W, phrase="input"),
    Case("weight_not_tensor", X, Raw(1.0), phrase="weight"),
    Case("bias_not_tensor", X, W, Raw(1.0), phrase="bias"),
]


def _ids(cases):
    return [c.id for c in cases]


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


@pytest.mark.parametrize("case", FUNCTIONAL_CASES, ids=_ids(FUNCTIONAL_CASES))
def test_functional_error_matches_torch(case, dtype):
    args = _args(case, dtype)
    expected = _raised(lambda: F.conv_transpose2d(*args, **case.kwargs))
    actual = _raised(lambda: fastconvt.conv_transpose2d(*args, **case.kwargs))
    assert type(actual) is type(expected), (actual, expected)
    assert case.phrase.lower() in str(actual).lower(), str(actual)


def test_dtype_mismatch_matches_torch():
    for x_dtype, w_dtype in [(torch.float32, torch.float64), (torch.float64, torch.float32)]:
        x, w = torch.randn(X, dtype=x_dtype), torch.randn(W, dtype=w_dtype)
        expected = _raised(lambda: F.conv_transpose2d(x, w))
        actual = _raised(lambda: fastconvt.conv_transpose2d(x, w))
        assert type(actual) is type(expected)


# ---------------------------------------------------------------------------
# the module: constructor and forward

class ModuleCase(NamedTuple):
    id: str
    ctor: dict
    input: tuple
    phrase: str
    forward: dict = {}
    mutate: object = None  # callable(module, dtype) applied after construction


def _set_bias(shape):
    def mutate(m, dtype):
        m.bias = nn.Parameter(torch.zeros(shape, dtype=dtype))
    return mutate


def _set_attr(name, value):
    def mutate(m, dtype):
        setattr(m, name, value)
    return mutate


BASE = dict(in_channels=3, out_channels=2, kernel_size=3)

MODULE_CASES = [
    # rejected by the constructor (torch's own, inherited)
    ModuleCase("ctor_groups_0", dict(BASE, groups=0), X, "groups"),
    ModuleCase("ctor_groups_negative", dict(BASE, groups=-1), X, "groups"),
    ModuleCase("ctor_in_channels_not_divisible", dict(BASE, groups=2), X, "groups"),
    ModuleCase("ctor_out_channels_not_divisible",
               dict(BASE, in_channels=4, out_channels=3, groups=2), (1, 4, 5, 5), "groups"),
    ModuleCase("ctor_padding_mode", dict(BASE, padding_mode="mirror"), X, "padding_mode"),
    ModuleCase("ctor_kernel_size_float", dict(BASE, kernel_size=2.5), X, "size"),
    # rejected by forward
    ModuleCase("input_2d", BASE, (3, 5), "3D (unbatched) or 4D"),
    ModuleCase("input_5d", BASE, (1, 3, 4, 4, 4), "3D (unbatched) or 4D"),
    ModuleCase("channels", BASE, (1, 4, 5, 5), "channels"),
    ModuleCase("channels_unbatched", BASE, (4, 5, 5), "channels"),
    ModuleCase("stride_0", dict(BASE, stride=0), X, "stride"),
    ModuleCase("stride_len3", dict(BASE, stride=(1, 2, 3)), X, "stride"),
    ModuleCase("stride_float", dict(BASE, stride=1.5), X, "stride"),
    ModuleCase("padding_negative", dict(BASE, padding=-1), X, "padding"),
    ModuleCase("padding_string", dict(BASE, padding="full"), X, "padding"),
    ModuleCase("output_padding_negative", dict(BASE, stride=2, output_padding=-1), X,
               "output_padding"),
    ModuleCase("output_padding_too_big", dict(BASE, stride=2, output_padding=2), X,
               "output padding"),
    ModuleCase("dilation_0", dict(BASE, dilation=0), X, "dilation"),
    ModuleCase("dilation_0_batch2", dict(BASE, dilation=0), X2, "dilation"),
    ModuleCase("kernel_size_0", dict(BASE, kernel_size=0), X, "kernel size"),
    ModuleCase("kernel_size_0_batch2", dict(BASE, kernel_size=(0, 2)), X2, "kernel size"),
    ModuleCase("out_channels_0", dict(BASE, out_channels=0), X, "weight"),
    ModuleCase("in_channels_0", dict(BASE, in_channels=0), (1, 0, 5, 5), "weight"),
    ModuleCase("bias_wrong_shape", BASE, X, "bias", mutate=_set_bias((5,))),
    ModuleCase("padding_mode_changed", BASE, X, "padding_mode",
               mutate=_set_attr("padding_mode", "mirror")),
    ModuleCase("input_height_0", BASE, (2, 3, 0, 5), "Only zero batch or zero channel inputs"),
    ModuleCase("output_too_small", dict(BASE, kernel_size=1, padding=1), (1, 3, 2, 2),
               "Output size is too small"),
    ModuleCase("output_too_small_unbatched", dict(BASE, kernel_size=1, padding=1), (3, 2, 2),
               "Output size is too small"),
    # output_size (torch's _output_padding, inherited)
    ModuleCase("output_size_too_big", dict(BASE, stride=2, padding=1), X, "output size",
               forward=dict(output_size=(11, 11))),
    ModuleCase("output_size_too_small", dict(BASE, stride=2, padding=1), X, "output size",
               forward=dict(output_size=(8, 9))),
    ModuleCase("output_size_3_elements", dict(BASE, stride=2), X, "output_size",
               forward=dict(output_size=(11, 11, 11))),
    ModuleCase("output_size_4_elements_unbatched", dict(BASE, stride=2), (3, 5, 5),
               "output_size", forward=dict(output_size=(1, 2, 11, 11))),
    ModuleCase("output_size_with_2d_input", BASE, (3, 5), "dimension",
               forward=dict(output_size=(7, 7))),
]


def _module_call(cls, case, dtype):
    def call():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
            m = cls(**case.ctor, dtype=dtype)
        if case.mutate is not None:
            case.mutate(m, dtype)
        torch.manual_seed(1)
        return m(torch.randn(case.input, dtype=dtype), **case.forward)
    return call


@pytest.mark.parametrize("case", MODULE_CASES, ids=_ids(MODULE_CASES))
def test_module_error_matches_torch(case, dtype):
    expected = _raised(_module_call(nn.ConvTranspose2d, case, dtype))
    actual = _raised(_module_call(fastconvt.ConvTranspose2d, case, dtype))
    assert type(actual) is type(expected), (actual, expected)
    assert case.phrase.lower() in str(actual).lower(), str(actual)


# ---------------------------------------------------------------------------
# no error is ever a Numba error

# Odd but reachable calls on top of the tables: these get past argument parsing
# and some reach the kernels.
EXTRA_CALLS = [
    ("channels_last_bad_channels", lambda d: fastconvt.conv_transpose2d(
        torch.randn(2, 4, 5, 5, dtype=d).contiguous(memory_format=torch.channels_last),
        torch.randn(W, dtype=d))),
    ("non_contiguous_bad_bias", lambda d: fastconvt.conv_transpose2d(
        torch.randn(1, 3, 5, 10, dtype=d)[..., ::2], torch.randn(W, dtype=d),
        torch.randn(4, dtype=d)[::2][:1])),
    ("requires_grad_bad_output_padding", lambda d: fastconvt.conv_transpose2d(
        torch.randn(X, dtype=d, requires_grad=True), torch.randn(W, dtype=d, requires_grad=True),
        stride=2, output_padding=3)),
    ("batch0_empty_output", lambda d: fastconvt.conv_transpose2d(
        torch.randn(0, 3, 2, 2, dtype=d), torch.randn(3, 2, 1, 1, dtype=d), padding=1)),
    ("batch0_negative_output", lambda d: fastconvt.conv_transpose2d(
        torch.randn(0, 3, 1, 1, dtype=d), torch.randn(3, 2, 1, 1, dtype=d), padding=3)),
    ("dilation0_1x1_batch2", lambda d: fastconvt.conv_transpose2d(
        torch.randn(X2, dtype=d), torch.randn(3, 2, 1, 1, dtype=d), dilation=0)),
    ("groups_huge", lambda d: fastconvt.conv_transpose2d(
        torch.randn(X, dtype=d), torch.randn(W, dtype=d), groups=2 ** 40)),
    ("padding_beyond_int64", lambda d: fastconvt.conv_transpose2d(
        torch.randn(X, dtype=d), torch.randn(W, dtype=d), padding=2 ** 64)),
    ("module_output_size_unreachable", lambda d: fastconvt.ConvTranspose2d(
        3, 2, 3, dtype=d)(torch.randn(X, dtype=d), output_size=(1, 1))),
    ("backward_of_bad_graph", lambda d: fastconvt.conv_transpose2d(
        torch.randn(X, dtype=d, requires_grad=True), torch.randn(W, dtype=d)).sum().backward(
        torch.ones(2))),
]


def _all_bad_calls():
    for dtype in DTYPES:
        for case in FUNCTIONAL_CASES:
            args = _args(case, dtype)
            yield (f"functional/{case.id}/{dtype}",
                   lambda args=args, kw=case.kwargs: fastconvt.conv_transpose2d(*args, **kw))
        for case in MODULE_CASES:
            yield (f"module/{case.id}/{dtype}",
                   _module_call(fastconvt.ConvTranspose2d, case, dtype))
        for name, fn in EXTRA_CALLS:
            yield f"extra/{name}/{dtype}", lambda fn=fn, dtype=dtype: fn(dtype)


_NUMBA_DIR = os.path.dirname(os.path.abspath(numba.__file__)) + os.sep


def _numba_problem(exc):
    """Why ``exc`` (or an exception it was raised from) is a Numba error, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, numba.core.errors.NumbaError):
            return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        if "numba" in str(exc).lower():
            return f"message mentions numba: {exc}"
        for frame in traceback.extract_tb(exc.__traceback__):
            if os.path.abspath(frame.filename).startswith(_NUMBA_DIR):
                return "raised inside numba:\n" + "".join(traceback.format_exception(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def test_no_error_is_a_numba_error():
    problems, raised = [], 0
    for name, call in _all_bad_calls():
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - anything at all, checked below
            raised += 1
            problem = _numba_problem(exc)
            if problem:
                problems.append(f"{name}: {type(exc).__name__}: {problem}")
    assert not problems, "\n".join(problems)
    # every table entry is a bad call; a few EXTRA_CALLS may legitimately succeed
    n_tables = len(DTYPES) * (len(FUNCTIONAL_CASES) + len(MODULE_CASES))
    assert raised >= n_tables
