"""The border kernels of the padding modes: ``pad_borders`` equals ``F.pad``,
``fold_borders`` is its adjoint, and both check their arguments."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fastconvt import kernels


BORDER_DTYPES = (np.float32, np.float64, np.complex64, np.complex128)


def _random(rng, shape, dtype):
    values = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


@settings(max_examples=60, deadline=None, database=None)
@given(mode=st.sampled_from(sorted(kernels.borders.MODES)), dtype=st.sampled_from(BORDER_DTYPES),
       n=st.integers(0, 2), c=st.integers(1, 3), hw=st.tuples(st.integers(1, 6),
                                                               st.integers(1, 6)),
       padding=st.tuples(st.integers(0, 6), st.integers(0, 6)),
       ends=st.none() | st.tuples(st.integers(0, 6), st.integers(0, 6)), parallel=st.booleans())
def test_border_kernels_pad_as_torch_and_fold_as_its_adjoint(mode, dtype, n, c, hw, padding,
                                                            ends, parallel):
    """``pad_borders`` equals ``F.pad``; ``fold_borders`` is its adjoint
    (``<pad(x), z> == <x, fold(z)>``) plus the bias once per pixel; with the same
    border at both ends of an axis (``(ph, pw)``) or not (``ends`` given)."""
    (top, left), (bottom, right) = padding, padding if ends is None else ends
    padding = padding if ends is None else ((top, bottom), (left, right))
    limit = {"reflect": 1, "replicate": None, "circular": 0}[mode]
    if limit is not None and any(p > s - limit for p, s in zip((top, left, bottom, right),
                                                                hw + hw)):
        with pytest.raises(ValueError, match="cannot fold"):
            kernels.borders.pad_borders(np.zeros((n, c) + hw, dtype), padding, mode)
        return
    rng = np.random.default_rng(0)
    x = _random(rng, (n, c) + hw, dtype)
    z = _random(rng, (n, c, hw[0] + top + bottom, hw[1] + left + right), dtype)
    bias = _random(rng, (c,), dtype)
    expected = F.pad(torch.from_numpy(x).to(torch.complex128 if np.iscomplexobj(x)
                                            else torch.float64), (left, right, top, bottom),
                     mode=mode)
    padded = kernels.borders.pad_borders(x, padding, mode, parallel=parallel)
    np.testing.assert_array_equal(padded, expected.numpy().astype(dtype))
    folded = kernels.borders.fold_borders(z, bias, padding, mode, parallel=parallel)
    lhs = np.vdot(padded.astype(np.complex128), z.astype(np.complex128))
    rhs = np.vdot(x.astype(np.complex128),
                  (folded - bias[:, None, None]).astype(np.complex128))
    scale = np.abs(padded).astype(np.float64).ravel() @ np.abs(z).astype(np.float64).ravel()
    rtol = 1e-5 if dtype in (np.float32, np.complex64) else 1e-12
    assert abs(lhs - rhs) <= rtol * max(scale, 1e-30)


@pytest.mark.parametrize("call, message", [
    (lambda b: b.fold_borders(np.ones((1, 2, 5, 5)), np.ones(3), (1, 1), "circular"), "bias"),
    (lambda b: b.fold_borders(np.ones((1, 2, 5, 5)), None, (-1, 1), "circular"), "negative"),
    (lambda b: b.fold_borders(np.ones((1, 2, 5, 5)), None, (1, 1), "reflect",
                              out=np.empty((1, 2, 4, 4))), "out must be"),
    (lambda b: b.fold_borders(np.ones((1, 2, 9, 5))[:, :, ::2], None, (1, 1), "replicate"),
     "contiguous"),
    (lambda b: b.pad_borders(np.ones((1, 2, 5, 5), np.int64), (1, 1), "reflect"), "dtype"),
    (lambda b: b.pad_borders(np.ones((1, 2, 5, 5)), (1, 1), "mirror"), "mode"),
])
def test_border_kernels_reject_bad_arrays(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(kernels.borders)
