"""Which kernel family computes a map: a rule, a per-configuration cache, an
optional autotuner (``set_autotune``) and a way to force one (``use_family``).

A configuration is (map, dtype, operand shapes, output shape, geometry, threads);
the three maps of one layer are chosen independently.
"""
import contextvars
import time
from contextlib import contextmanager

import torch

from . import kernels

FAMILIES = tuple(kernels.FAMILIES)
_forced = contextvars.ContextVar("fastconvt_forced_family", default=None)
_autotune = False
_choices = {}


def torch_gemm(a, b, out, accumulate):
    """``out = a @ b`` (or ``+=``) on NumPy arrays with torch's BLAS, which runs
    on torch's own thread pool: no second BLAS pool competes for the cores."""
    a, b, out = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    if accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


_EXTRA = {"direct": {}, "gemm": {"gemm": torch_gemm}}


def set_autotune(enabled):
    """Like ``torch.backends.cudnn.benchmark``: when on, the first call of each new
    configuration times every kernel family and remembers the fastest."""
    global _autotune
    _autotune = bool(enabled)
    _choices.clear()


@contextmanager
def use_family(name):
    """Force kernel family ``name`` (``"direct"`` or ``"gemm"``) inside the block."""
    if name not in FAMILIES:
        raise ValueError(f"unknown kernel family {name!r}; expected one of {FAMILIES}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def rule(w_shape, groups):
    """The family the rule picks for a layer with weight ``w_shape`` (the same for
    all three of its maps).

    GEMM pays off when its products are large enough in every dimension (input
    channels per group, output taps ``C_out_g * kH * kW``); otherwise (depthwise,
    tiny layers) the direct kernels, which need no column buffer.
    """
    c_in_g = w_shape[0] // groups
    taps = w_shape[1] * w_shape[2] * w_shape[3]
    return "gemm" if c_in_g >= 8 and taps >= 8 else "direct"


def _weight_shape(map_name, operand_shapes, out_shape):
    """The weight shape of the layer a map belongs to (weight correlation makes it)."""
    return out_shape if map_name == "weight_correlation" else operand_shapes[1]


def _key(map_name, operand_shapes, dtype, geometry, size):
    # the bias (a third operand) does not change the choice
    return (map_name, dtype, operand_shapes[:2], geometry, size, torch.get_num_threads())


def family(map_name, operand_shapes, dtype, geometry, size, out_shape):
    """The family that computes this configuration: the forced one, the one tuned
    or chosen before, else the rule's (which is then remembered)."""
    return _family(_key(map_name, operand_shapes, dtype, geometry, size), out_shape)


def _family(key, out_shape):
    name = _forced.get()
    if name is None and kernels._config.forked_child():
        # a forked child cannot use torch's thread pool (torch hangs there); the
        # direct kernels need nothing but Numba, run serially in such a child
        name = "direct"
    if name is not None:
        return name
    name = _choices.get(key)
    if name is None:
        map_name, operand_shapes, groups = key[0], key[2], key[3][3]
        name = _choices[key] = rule(_weight_shape(map_name, operand_shapes, out_shape), groups)
    return name


def run(map_name, operands, geometry, size, out):
    """``kernels.<family>.<map_name>(*operands, *geometry, size, out=out)`` with the
    chosen family (NumPy arrays; ``geometry`` is (stride, padding, dilation, groups)).
    Returns the family's name."""
    key = _key(map_name, tuple(None if a is None else a.shape for a in operands), out.dtype,
               geometry, size)
    if _autotune and key not in _choices and _forced.get() is None \
            and not kernels._config.forked_child():
        _choices[key] = _tune(map_name, operands, geometry, size, out)
    name = _family(key, out.shape)
    _call(name, map_name, operands, geometry, size, out)
    return name


def run_periodic(x, w, b, geometry, out_hw, out):
    """The transposed convolution of ``x``'s periodic extension into ``out`` (NumPy
    arrays) where the GEMM family computes this configuration in its sub-pixel form,
    the only one that reads a periodic input. Returns False, computing nothing,
    elsewhere."""
    name = family("conv_transpose2d", (x.shape, w.shape), x.dtype, geometry, tuple(out_hw),
                  out.shape)
    if name != "gemm" or not kernels.gemm.uses_subpixel(x.shape, w.shape, *geometry, out_hw,
                                                        x.itemsize):
        return False
    kernels.gemm.conv_transpose2d(x, w, b, *geometry, out_hw, out=out, gemm=torch_gemm,
                                  periodic=True)
    return True


def run_backward(x, w, gy, geometry, gx, gw, periodic=False):
    """Both gradients of the transposed convolution in one pass over ``gy`` (read as
    its periodic extension if ``periodic``) when the GEMM family computes both maps
    (NumPy arrays, outputs ``gx`` and ``gw``). Returns False, computing nothing,
    where the maps would run separately."""
    if _autotune and _forced.get() is None:
        return False  # the maps are tuned one by one
    conv = family("conv2d", (gy.shape, w.shape), gy.dtype, geometry, x.shape[2:], x.shape)
    corr = family("weight_correlation", (x.shape, gy.shape), x.dtype, geometry, w.shape[2:],
                  w.shape)
    if conv != "gemm" or corr != "gemm":
        return False
    kernels.gemm.conv_transpose2d_backward(x, w, gy, *geometry, gx_out=gx, gw_out=gw,
                                           gemm=torch_gemm, periodic=periodic)
    return True


def _call(name, map_name, operands, geometry, size, out):
    compute = getattr(kernels.FAMILIES[name], map_name)
    compute(*operands, *geometry, size, out=out, **_EXTRA[name])


def _tune(map_name, operands, geometry, size, out, repeats=2):
    """Time every family on the real operands; the output is recomputed by the winner."""
    times = {}
    for name in FAMILIES:
        _call(name, map_name, operands, geometry, size, out)  # compile and warm up
        start = time.perf_counter()
        for _ in range(repeats):
            _call(name, map_name, operands, geometry, size, out)
        times[name] = time.perf_counter() - start
    return min(times, key=times.get)
