"""Shared test vocabulary: dtypes, tolerances, and the float64 torch oracle.

The oracle is always torch's ``F.conv_transpose2d`` evaluated in float64 on
exactly upcast data: comparing float32 results against it avoids torch's own
float32 rounding and its float32 backward bugs (a channels_last 1x1-kernel
backward with output_padding corrupts the heap in torch 2.13).
"""
import pytest
import torch
import torch.nn.functional as F

DTYPES = (torch.float32, torch.float64)
# error bound relative to the reference's largest magnitude
RTOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.complex64: 1e-4,
        torch.complex128: 1e-10}


def reference(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
              dilation=1):
    """torch's transposed convolution in float64; gradients flow to the
    original tensors (the upcast is differentiable)."""
    up = lambda t: None if t is None else t.double()  # noqa: E731
    return F.conv_transpose2d(up(input), up(weight), up(bias), stride, padding, output_padding,
                              groups, dilation)


def assert_close(actual, expected, dtype=None, scale=None):
    """``max|actual - expected| <= RTOL[dtype] * scale`` (shapes equal).

    ``scale`` defaults to ``max|expected|``. Where the reference is a sum whose
    terms cancel, pass the sum of the terms' magnitudes instead (the reference
    evaluated on absolute values): no float32 code can do better than that.
    """
    dtype = dtype or actual.dtype
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.numel() == 0:
        return
    wide = torch.complex128 if actual.is_complex() or expected.is_complex() else torch.float64
    expected = expected.detach().to(wide)
    error = (actual.detach().to(wide) - expected).abs().max().item()
    if scale is None:
        scale = expected.abs().max().item()
    assert error <= RTOL[dtype] * max(scale, 1e-30), f"error {error:.3g} vs scale {scale:.3g}"


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).split(".")[-1])
def dtype(request):
    return request.param
