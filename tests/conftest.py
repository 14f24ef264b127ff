"""Shared test vocabulary: dtypes, tolerances, and the float64 torch oracle.

The oracle is always torch's ``F.conv_transpose2d`` evaluated in float64 on
exactly upcast data: comparing float32 results against it avoids torch's own
float32 rounding and its float32 backward bugs (a channels_last 1x1-kernel
backward with output_padding corrupts the heap in torch 2.13).
"""
import os
import tempfile

# Before fastconvt is imported: the suite runs the rule's plans (deterministic) unless a
# test turns measuring on, and never reads or writes the user's plan file.
os.environ.setdefault("FASTCONVT_AUTOTUNE", "0")
os.environ.setdefault("FASTCONVT_CACHE_DIR", tempfile.mkdtemp(prefix="fastconvt-test-plans-"))

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fastconvt import _plans  # noqa: E402

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


# every plan a measurement can pick, as use_family's (family, form, product); oneDNN's
# product is float32 only (float64 goes to torch.mm), so float64-only tests skip it
PLANS_FLOAT64 = [("direct", None, None), ("gemm", None, None), ("gemm", "columns", "mm"),
                 ("gemm", "subpixel", "mm"), ("gemm", "winograd", "mm"), ("gemm", "nhwc", "mm")]
PLANS = PLANS_FLOAT64 + ([("gemm", "columns", "onednn"), ("gemm", "subpixel", "onednn"),
                          ("gemm", "winograd", "onednn"), ("gemm", "nhwc", "onednn")]
                         if _plans.onednn_available() else [])


def plan_id(plan):
    return "-".join(p for p in plan if p)


LAYOUTS = ("contiguous", "channels_last", "weight_channels_last", "both", "transposed",
           "unbatched")


def with_layout(x, weight, layout):
    """``(x, weight)`` in one of ``LAYOUTS``: channels_last input, weight or both; an
    input with H and W strides swapped; or the first image alone (unbatched)."""
    if layout in ("channels_last", "both"):
        x = x.contiguous(memory_format=torch.channels_last)
    if layout in ("weight_channels_last", "both"):
        weight = weight.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "unbatched":
        x = x[0]
    return x, weight


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


def check_values_and_gradients(compute, oracle, tensors, dtype):
    """``compute`` (fastconvt's) against ``oracle`` (float64) on ``tensors`` (None
    entries stay None): the output, then the gradient of every tensor. Errors are
    bounded by the oracle on absolute values, the sum of the terms' magnitudes, which
    bounds float32 rounding even where the terms cancel. Returns (output, oracle's)."""
    def leaves(f=lambda t: t):
        return [None if t is None else f(t.detach()).requires_grad_() for t in tensors]

    mine, exact, magnitude = leaves(), leaves(), leaves(torch.abs)
    out, ref, ref_abs = compute(*mine), oracle(*exact), oracle(*magnitude)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, scale=ref_abs.abs().max().item() if ref.numel() else None)
    if out.numel() == 0:
        return out, ref
    grad_out = torch.randn(ref.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    given = lambda ts: [t for t in ts if t is not None]  # noqa: E731
    grads = torch.autograd.grad(out, given(mine), grad_out.to(dtype))
    ref_grads = torch.autograd.grad(ref, given(exact), grad_out)
    abs_grads = torch.autograd.grad(ref_abs, given(magnitude), grad_out.abs())
    for got, want, bound in zip(grads, ref_grads, abs_grads):
        assert got.dtype == dtype
        assert_close(got, want, dtype, scale=bound.abs().max().item())
    return out, ref


def draw_layer(draw, st, channels=3, kernel=4, stride=3, size=5, padding=3, padding_limit=None):
    """A random valid layer for the hypothesis sweeps: ``(groups, c_in, c_out, kernel,
    stride, dilation, size, padding, output_padding)``, each spatial value a pair, drawn
    up to the given bounds; the padding is cut to ``padding_limit(b)`` of each axis's
    unpadded size ``b`` (default: what keeps the output non-empty)."""
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, channels)), groups * draw(st.integers(1, channels))
    pair = lambda lo, hi: (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))  # noqa: E731
    kernel, stride, dilation, size = pair(1, kernel), pair(1, stride), pair(1, 3), pair(1, size)
    pads = pair(0, padding)
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    base = [(i - 1) * s + d * (k - 1) + op + 1
            for i, s, d, k, op in zip(size, stride, dilation, kernel, output_padding)]
    limit = padding_limit or (lambda b: (b - 1) // 2)
    pads = tuple(min(p, limit(b)) for p, b in zip(pads, base))
    return groups, c_in, c_out, kernel, stride, dilation, size, pads, output_padding


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).split(".")[-1])
def dtype(request):
    return request.param
