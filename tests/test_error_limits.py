"""Limits where fastconvt decides or torch's parser rejects: an empty (0-sized) spatial
output always raises, integers beyond what torch's argument parser takes, and outputs too
large to allocate; the helpers of ``test_errors``."""
import pytest
import torch
import torch.nn.functional as F

import fastconvt
from test_errors import W, X, _numba_problem, _raised


# ---------------------------------------------------------------------------
# documented decision: an empty (0-sized) spatial output always raises

# What torch 2.13 does with these (RuntimeError = "Output size is too small" unless noted):
#
#   case                                      torch float32             torch float64
#   batch 0, 2x2 in, 1x1 kernel, padding 1    returns (0, 2, 0, 0)      returns (0, 2, 0, 0)
#   batch 0, 3x3 in, 2x2 kernel, padding 2    returns (0, 2, 0, 0)      returns (0, 2, 0, 0)
#   batch 0, same, padding (2, 0)             returns (0, 2, 0, 4)      returns (0, 2, 0, 4)
#     (also with channels_last input: same shapes, both dtypes)
#   batch 0, 0x0 in, 1x1 kernel               returns (0, 2, 0, 0)      returns (0, 2, 0, 0)
#   batch 1, any of the above (or unbatched)  RuntimeError              RuntimeError
#   batch 2, 2x2 in, 1x1 kernel, padding 1    returns (2, 2, 0, 0)      RuntimeError
#   batch 2, 3x3 in, 2x2 kernel, padding 2    returns (2, 2, 0, 0)      RuntimeError
#   batch 3, padding (0, 2)                   returns (3, 2, 4, 0)      RuntimeError
#   batch 2, channels_last input or weight    returns (2, 2, 0, 0)      RuntimeError
#   batch 2, 1x1 in, 1x1 kernel, padding 1    RuntimeError ("could not  RuntimeError
#     (output -1: negative, not empty)          construct a memory
#                                               descriptor ...")
#   batch 0, 1x1 in, 1x1 kernel, padding 1    RuntimeError ("only one   RuntimeError (same)
#     (output -1)                               dimension can be inferred")
#
# torch float32 with batch >= 2 goes through oneDNN, which accepts an exactly-0
# output, while the float64 (slow_conv_transpose2d) path rejects it; with batch 0
# both dtypes return an empty tensor. fastconvt instead raises RuntimeError
# ("Output size is too small") whenever an output size is <= 0, for both dtypes,
# any batch size and any memory format: one rule rather than torch's
# dtype-, batch- and path-dependent ones.
EMPTY_OUTPUT_CASES = [
    ("batch0_2x2_k1_p1", (0, 3, 2, 2), (3, 2, 1, 1), dict(padding=1), False),
    ("batch0_3x3_k2_p2", (0, 3, 3, 3), (3, 2, 2, 2), dict(padding=2), False),
    ("batch0_height0", (0, 3, 3, 3), (3, 2, 2, 2), dict(padding=(2, 0)), False),
    ("batch0_height0_channels_last", (0, 3, 3, 3), (3, 2, 2, 2), dict(padding=(2, 0)), True),
    ("batch0_0x0_input", (0, 3, 0, 0), (3, 2, 1, 1), {}, False),
    ("batch1_2x2_k1_p1", (1, 3, 2, 2), (3, 2, 1, 1), dict(padding=1), False),
    ("batch2_2x2_k1_p1", (2, 3, 2, 2), (3, 2, 1, 1), dict(padding=1), False),
    ("batch2_3x3_k2_p2", (2, 3, 3, 3), (3, 2, 2, 2), dict(padding=2), False),
    ("batch3_width0", (3, 3, 3, 3), (3, 2, 2, 2), dict(padding=(0, 2)), False),
    ("batch2_channels_last", (2, 3, 3, 3), (3, 2, 2, 2), dict(padding=2), True),
    ("batch2_negative", (2, 3, 1, 1), (3, 2, 1, 1), dict(padding=1), True),
    ("batch0_negative", (0, 3, 1, 1), (3, 2, 1, 1), dict(padding=1), False),
]


@pytest.mark.parametrize("name, x_shape, w_shape, kwargs, channels_last", EMPTY_OUTPUT_CASES,
                         ids=[c[0] for c in EMPTY_OUTPUT_CASES])
def test_empty_output_always_raises(name, x_shape, w_shape, kwargs, channels_last, dtype):
    x = torch.randn(x_shape, dtype=dtype)
    w = torch.randn(w_shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        fastconvt.conv_transpose2d(x, w, **kwargs)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        fastconvt.conv_transpose2d(x, w, torch.randn(w_shape[1], dtype=dtype), **kwargs)
    m = fastconvt.ConvTranspose2d(w_shape[0], w_shape[1], w_shape[2:], dtype=dtype, **kwargs)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        m(x)


def test_dilation_0_always_raises(dtype):
    # torch 2.13 float32 with batch >= 2 (oneDNN) *accepts* dilation=0 with a 1x1
    # kernel and returns a (2, 2, 5, 5) result; float64, and float32 with batch 1,
    # raise RuntimeError("dilation should be greater than zero"). fastconvt always
    # raises that RuntimeError.
    for batch in (1, 2):
        x = torch.randn(batch, 3, 5, 5, dtype=dtype)
        w = torch.randn(3, 2, 1, 1, dtype=dtype)
        with pytest.raises(RuntimeError, match="dilation"):
            fastconvt.conv_transpose2d(x, w, dilation=0)


# ---------------------------------------------------------------------------
# integers torch's argument parser rejects, and outputs too large to allocate

def test_int_beyond_int64_is_not_a_numba_error():
    # a 1x1 input and a 1x1 kernel make the output size independent of the stride,
    # so the huge stride reaches the kernel
    x, w = torch.randn(1, 3, 1, 1), torch.randn(3, 2, 1, 1)
    expected = _raised(lambda: F.conv_transpose2d(x, w, stride=2 ** 64))
    actual = _raised(lambda: fastconvt.conv_transpose2d(x, w, stride=2 ** 64))
    assert _numba_problem(actual) is None, type(actual)
    assert type(actual) is type(expected)


@pytest.mark.parametrize("kwargs", [dict(stride=True), dict(padding=(False, 0)),
                                    dict(dilation=True), dict(groups=True)], ids=str)
def test_bool_arguments_raise_type_error_like_torch(kwargs):
    x, w = torch.randn(X), torch.randn(W)
    expected = _raised(lambda: F.conv_transpose2d(x, w, **kwargs))
    assert type(expected) is TypeError
    actual = _raised(lambda: fastconvt.conv_transpose2d(x, w, **kwargs))
    assert type(actual) is TypeError


@pytest.mark.parametrize("kwargs", [dict(groups=None), dict(dilation=1.5),
                                    dict(padding=[1, [2]]), dict(output_padding="a"),
                                    dict(stride=(1, 2.0)), dict(stride=(1, 2, 3))], ids=str)
@pytest.mark.parametrize("x_shape", [(1, 2, 3, 4, 5), (2, 5, 4, 4), X], ids=str)
def test_argument_types_are_checked_before_shapes_like_torch(kwargs, x_shape):
    """torch's argument parser raises TypeError before the operator looks at shapes (a 5-D
    input, a wrong channel count); a wrong length is the operator's RuntimeError."""
    x, w = torch.randn(x_shape), torch.randn(W)
    expected = _raised(lambda: F.conv_transpose2d(x, w, **kwargs))
    actual = _raised(lambda: fastconvt.conv_transpose2d(x, w, **kwargs))
    assert expected is not None and type(actual) is type(expected), (expected, actual)


def test_unallocatable_output_raises_runtime_error_like_torch():
    # (1, 2, 8589934595, 8589934595) float32 elements: torch's allocator refuses
    # them before touching memory. torch's F raises RuntimeError here too (its
    # stride, truncated to 32 bits, reads as negative).
    x, w = torch.randn(X), torch.randn(W)
    expected = _raised(lambda: F.conv_transpose2d(x, w, stride=2 ** 31))
    assert type(expected) is RuntimeError
    actual = _raised(lambda: fastconvt.conv_transpose2d(x, w, stride=2 ** 31))
    assert type(actual) is RuntimeError
