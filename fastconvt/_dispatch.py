"""Which kernels compute a map: the configuration's plan (``_plans``), measured on
the machine at hand by default, ruled where autotuning is off, or forced
(``use_family``).

A configuration is (map, dtype, operand shapes, output size, geometry, threads);
the three maps of one layer, and its backward as a whole, are planned
independently.
"""
import contextvars
import json
import os
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import torch

from . import _plans, kernels

FAMILIES = _plans.FAMILIES
# the GEMM family's ``subpixel`` argument per form (Winograd has kernels of its own)
_FORMS = {"": None, "columns": False, "subpixel": True, "winograd": None, "nhwc": None}
_forced = contextvars.ContextVar("fastconvt_forced_plan", default=None)
_autotune = os.environ.get("FASTCONVT_AUTOTUNE", "1") not in ("0", "")
_choices = OrderedDict()  # key -> plan, most recently used last
_store = _plans.PlanStore()
_DTYPE_NAMES = {np.dtype(name).char: name for name in kernels._config.DTYPES}


def torch_gemm(a, b, out, accumulate):
    """``out = a @ b`` (or ``+=``) on NumPy arrays with ``torch.mm``, which runs on
    torch's own thread pool: no second BLAS pool competes for the cores."""
    a, b, out = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    if accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


def _plain(m):
    """Whether a 2-D array is row- or column-major with no gaps."""
    return m.flags.c_contiguous or m.flags.f_contiguous


def onednn_gemm(a, b, out, accumulate):
    """``out = a @ b`` (or ``+=``) with oneDNN's matmul, on torch's thread pool.
    float32 operands without gaps only (oneDNN's reference path takes over on
    others, hundreds of times slower); the rest goes to :func:`torch_gemm`."""
    if a.dtype != np.float32 or not (_plain(a) and _plain(b)) or 0 in a.shape + b.shape:
        return torch_gemm(a, b, out, accumulate)
    product = torch.ops.mkldnn._linear_pointwise(torch.from_numpy(a), torch.from_numpy(b).t(),
                                                 None, "none", [], "")
    out = torch.from_numpy(out)
    if accumulate:
        out.add_(product)
    else:
        out.copy_(product)


_PRODUCTS = {"mm": torch_gemm, "onednn": onednn_gemm}


def set_autotune(enabled):
    """Whether the first call of each new configuration times the candidate plans
    and keeps the fastest (the default; ``FASTCONVT_AUTOTUNE=0`` starts a process
    with it off). Off, the rule decides: the same plan on every machine. Either
    way the plans chosen so far in this process are forgotten; measured plans on
    disk are used again when autotuning is on."""
    global _autotune
    _autotune = bool(enabled)
    _choices.clear()
    _store.clear()


@contextmanager
def use_family(name, form=None, product=None):
    """Force kernel family ``name`` (``"direct"`` or ``"gemm"``) inside the block;
    for ``"gemm"`` also its ``form`` (``"columns"``; ``"subpixel"``, for dilation 1 and
    kernels at least the stride, padded with zero taps where they are not a multiple of
    it; ``"winograd"``, for the forward and input gradient of a 3x3 stride-1 layer;
    ``"nhwc"``, the channels-last column form, for float32 and float64;
    elsewhere, and by default, the family's choice) and
    ``product`` (``"mm"``, the default, or ``"onednn"``, float32 where available)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown kernel family {name!r}; expected one of {FAMILIES}")
    if form not in (None,) + _plans.FORMS[1:] or product not in (None, "mm", "onednn"):
        raise ValueError(f"unknown form {form!r} or product {product!r}")
    if name == "direct" and (form or product):
        raise ValueError("the direct family has no form or product to choose")
    if product == "onednn" and not _plans.onednn_available():
        raise ValueError("product 'onednn' is not available in this torch build")
    plan = (name, form or "", product or "mm") if name == "gemm" else ("direct", "", "")
    token = _forced.set(plan)
    try:
        yield
    finally:
        _forced.reset(token)


def _key(map_name, operand_shapes, dtype, geometry, size, periodic=False, layout=""):
    # the bias (a third operand) does not change the choice; the first operand's
    # layout does (a form in the other layout pays for two copies)
    return (map_name, _DTYPE_NAMES[np.dtype(dtype).char], tuple(operand_shapes[:2]), geometry,
            tuple(size), torch.get_num_threads(), periodic, layout)


def channels_last(a):
    """Whether the NCHW-shaped array ``a`` is a channels-last (NHWC) one's view."""
    return a.ndim == 4 and not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous


def _layout(a):
    return "channels_last" if channels_last(a) else ""


def _nchw(a):
    """``a`` as a C-contiguous NCHW array (a copy on torch's threads if it is not one)."""
    if a is None or a.flags.c_contiguous:
        return a
    return torch.from_numpy(a).contiguous().numpy()


def _nhwc(a):
    """The NHWC array of the NCHW-shaped ``a`` (a view where ``a`` is channels-last)."""
    if a is None or a.ndim != 4:
        return a
    return _nchw(a.transpose(0, 2, 3, 1))


def _into(out, compute, nhwc=False):
    """``compute(o)`` with ``o`` ``out`` itself (in NHWC order if ``nhwc``) where it is
    C-contiguous, else a buffer copied into ``out`` afterwards."""
    view = out.transpose(0, 2, 3, 1) if nhwc else out
    if view.flags.c_contiguous:
        compute(view)
    else:
        buffer = np.empty(view.shape, view.dtype)
        compute(buffer)
        torch.from_numpy(view).copy_(torch.from_numpy(buffer))
    return out


def _nhwc_applies(map_name, operands, geometry, size):
    """Whether the channels-last column form computes this map: real floats, and one
    image's columns within the workspace bound."""
    first = operands[0]
    if first.dtype.kind != "f":
        return False
    in_hw = size if map_name == "conv2d" else first.shape[2:]
    w_shape = _w_shape(map_name, operands, geometry, size)
    return kernels.nhwc.fits(in_hw, w_shape[2:], w_shape[1], first.itemsize)


def _rule(key, out_shape):
    """The rule's plan for ``key`` (``out_shape``: the map's output shape)."""
    map_name, operand_shapes, groups = key[0], key[2], key[3][3]
    if map_name == "backward":
        return _plans.rule_plan("gemm") if _plans.rule_family(
            operand_shapes[1], groups) == "gemm" else ("separate", "", "")
    w_shape = out_shape if map_name == "weight_correlation" else operand_shapes[1]
    return _plans.rule_plan(_plans.rule_family(w_shape, groups))


def _planned(key, out_shape, tune=None, final=True):
    """The plan of ``key``: forced, else remembered (this process, then the plan
    file), else measured by ``tune()`` where autotuning is on and there is a
    ``tune`` (returning None where there is nothing to time), else the rule's.
    ``final=False`` (a question, not a call) leaves a configuration not yet measured
    to be measured on its first call."""
    forced = _forced.get()
    if kernels._config.forked_child():
        # a forked child cannot use torch's thread pool (torch hangs there, forced or
        # not); the direct kernels need nothing but Numba, run serially in such a child
        forced = ("direct", "", "")
    if forced is not None:
        if key[0] == "backward":  # Winograd computes one map: the maps run on their own
            fused = forced[0] == "gemm" and forced[1] != "winograd"
            return forced if fused else ("separate", "", "")
        return forced
    plan = _choices.get(key)
    if plan is not None:
        try:
            _choices.move_to_end(key)
        except KeyError:  # another thread evicted it meanwhile
            pass
        return plan
    stored = None
    if _autotune:
        text = json.dumps(key)
        plan = stored = _store.get(text)
        if plan is None and tune is not None:
            plan = tune()
            if plan is not None:
                _store.put(text, plan)
    if plan is None:
        plan = _rule(key, out_shape)
    if final or stored is not None:
        _choices[key] = plan
        while len(_choices) > _plans.MAX_PLANS:
            _choices.popitem(last=False)
    return plan


def family(map_name, operand_shapes, dtype, geometry, size, out_shape):
    """The family that computes this configuration (measured where it was, else the
    rule's): ``"direct"`` or ``"gemm"``."""
    key = _key(map_name, operand_shapes, dtype, geometry, size)
    return _planned(key, out_shape, final=False)[0]


def plans_of(x_shape, w_shape, dtype, geometry, out_hw, layout=""):
    """The plans of a layer's forward and backward (and, where the backward runs
    the two maps separately, of each), as they stand: measured, remembered or ruled.
    ``layout``: "channels_last" for a channels-last input (and output gradient)."""
    out_shape = (x_shape[0], w_shape[1] * geometry[3]) + tuple(out_hw)
    plans = {"forward": _planned(_key("conv_transpose2d", (x_shape, w_shape), dtype, geometry,
                                      out_hw, layout=layout), out_shape, final=False),
             "backward": _planned(_key("backward", (x_shape, w_shape), dtype, geometry,
                                       out_hw, layout=layout), x_shape, final=False)}
    if plans["backward"][0] == "separate":
        plans["input gradient"] = _planned(_key("conv2d", (out_shape, w_shape), dtype, geometry,
                                                x_shape[2:], layout=layout), x_shape,
                                           final=False)
        plans["weight gradient"] = _planned(
            _key("weight_correlation", (x_shape, out_shape), dtype, geometry, w_shape[2:],
                 layout=layout), w_shape, final=False)
    return plans


def _w_shape(map_name, operands, geometry, size):
    """The weight shape of a map's layer (the weight correlation's output)."""
    return _plans.weight_shape(map_name, [a.shape for a in operands[:2]], geometry[3], size)


def _call(plan, map_name, operands, geometry, size, out):
    """Compute the map with ``plan``: NumPy operands in NCHW shape and either layout;
    every form but ``"nhwc"`` computes on NCHW-contiguous copies."""
    family, form, product = plan
    if form == "nhwc" and _nhwc_applies(map_name, operands, geometry, size):
        compute = getattr(kernels.nhwc, map_name)
        operands = tuple(map(_nhwc, operands))
        return _into(out, lambda o: compute(*operands, *geometry, size, out=o,
                                            gemm=_PRODUCTS[product]), nhwc=True)
    if out.flags.c_contiguous and all(a is None or a.flags.c_contiguous for a in operands):
        return _call_nchw(plan, map_name, operands, geometry, size, out)
    operands = tuple(map(_nchw, operands))
    return _into(out, lambda o: _call_nchw(plan, map_name, operands, geometry, size, o))


def _call_nchw(plan, map_name, operands, geometry, size, out):
    family, form, product = plan
    compute = getattr(kernels.FAMILIES[family], map_name)
    if family == "direct":
        return compute(*operands, *geometry, size, out=out)
    kernel_hw = tuple(_w_shape(map_name, operands, geometry, size)[2:])
    gemm = _PRODUCTS[product]
    if form == "winograd" and map_name != "weight_correlation" and kernels.winograd.applies(
            kernel_hw, geometry[0], geometry[2], geometry[3]):
        return getattr(kernels.winograd, map_name)(*operands, *geometry, size, out=out,
                                                   gemm=gemm)
    padded = _plans.subpixel_kernel(kernel_hw, geometry[0], geometry[2])
    if form == "subpixel" and padded not in (None, kernel_hw):
        if map_name == "weight_correlation":  # the padded taps' correlations are dropped
            full = np.empty(out.shape[:2] + padded, out.dtype)
            compute(*operands, *geometry, padded, out=full, gemm=gemm, subpixel=True)
            out[...] = full[:, :, :kernel_hw[0], :kernel_hw[1]]
            return out
        if np.isfinite(operands[0]).all():
            return compute(operands[0], _pad_kernel(operands[1], padded), *operands[2:],
                           *geometry, size, out=out, gemm=gemm, subpixel=True)
    return compute(*operands, *geometry, size, out=out, gemm=gemm,
                   subpixel=_subpixel(form, kernel_hw, geometry))


def _pad_kernel(w, padded_hw):
    """``w`` with zero taps appended up to ``padded_hw``: the same layer, whose kernel
    is a multiple of the stride (the sub-pixel form). A non-finite input would meet
    the zeros (0 * Inf = NaN where torch keeps Inf): callers check first."""
    padded = np.zeros(w.shape[:2] + tuple(padded_hw), w.dtype)
    padded[:, :, :w.shape[2], :w.shape[3]] = w
    return padded


def _subpixel(form, kernel_hw, geometry):
    """The GEMM family's ``subpixel`` argument for ``form``; a sub-pixel form forced
    where it does not apply (unpadded) leaves the choice to the family."""
    if form == "subpixel" and not kernels.subpixel.subpixel_applies(kernel_hw, geometry[0],
                                                                    geometry[2]):
        return None
    return _FORMS[form]


def run(map_name, operands, geometry, size, out):
    """``kernels.<family>.<map_name>(*operands, *geometry, size, out=out)`` with the
    configuration's plan (NumPy arrays; ``geometry`` is (stride, padding, dilation,
    groups)). Returns the plan."""
    key = _key(map_name, [None if a is None else a.shape for a in operands], out.dtype,
               geometry, size, layout=_layout(operands[0]))

    def tune():
        plans = _plans.candidates(map_name, out.dtype, key[2], geometry, size,
                                  _rule(key, out.shape))
        plans = [p for p in plans
                 if (p[1] != "subpixel" or _subpixel_fits(map_name, operands, geometry, size))
                 and (p[1] != "nhwc" or _nhwc_applies(map_name, operands, geometry, size))]
        one = _first_image(map_name, operands, out)
        return _plans.measure(lambda p: _call(p, map_name, operands, geometry, size, out),
                              plans, lambda p: _call(p, map_name, one[0], geometry, size,
                                                     one[1]))[0]

    plan = _planned(key, out.shape, tune)
    _call(plan, map_name, operands, geometry, size, out)
    return plan


def _first_image(map_name, operands, out):
    """``(operands, out)`` of the same map on the first image of the batch."""
    batched = {"conv_transpose2d": (0,), "conv2d": (0,), "weight_correlation": (0, 1)}
    operands = tuple(a[:1] if i in batched[map_name] else a for i, a in enumerate(operands))
    return operands, out if map_name == "weight_correlation" else out[:1]


def _subpixel_fits(map_name, operands, geometry, size):
    """Whether the GEMM family's sub-pixel form of this map (its kernel padded where
    :func:`_plans.subpixel_kernel` pads it) keeps the workspace bound."""
    stride, padding, _, groups = geometry
    w_shape = _w_shape(map_name, operands, geometry, size)
    if map_name == "conv_transpose2d":
        x_shape, out_hw = operands[0].shape, size
    elif map_name == "conv2d":
        y = operands[0]
        x_shape, out_hw = (y.shape[0], w_shape[0]) + tuple(size), y.shape[2:]
    else:
        x_shape, out_hw = operands[0].shape, operands[1].shape[2:]
    fits = kernels.subpixel.subpixel_fits(x_shape, _subpixel_shape(w_shape, geometry), stride,
                                          padding, groups, out_hw, operands[0].itemsize)
    return fits[map_name != "conv_transpose2d"]


def _subpixel_shape(w_shape, geometry):
    """The weight shape the sub-pixel form computes with (kernel padded to the stride)."""
    padded = _plans.subpixel_kernel(w_shape[2:], geometry[0], geometry[2])
    return tuple(w_shape[:2]) + (padded or tuple(w_shape[2:]))


def run_periodic(x, w, b, geometry, out_hw, out):
    """The transposed convolution of ``x``'s periodic extension into ``out`` (NumPy
    arrays) where the GEMM family computes this configuration in its sub-pixel form,
    the only one that reads a periodic input. Returns False, computing nothing,
    elsewhere."""
    # the GEMM family's sub-pixel form with the rule's product; not measured
    key = _key("conv_transpose2d", (x.shape, w.shape), x.dtype, geometry, out_hw, True)
    plan = _planned(key, out.shape)
    if plan[0] != "gemm" or plan[1] in ("columns", "nhwc") or not kernels.subpixel.uses_subpixel(
            x.shape, w.shape, *geometry, out_hw, x.itemsize):
        return False
    kernels.gemm.conv_transpose2d(x, w, b, *geometry, out_hw, out=out,
                                  gemm=_PRODUCTS[plan[2]], periodic=True)
    return True


def run_backward(x, w, gy, geometry, gx, gw, periodic=False):
    """Both gradients of the transposed convolution (NumPy arrays, outputs ``gx`` and
    ``gw``) in one pass over ``gy`` (read as its periodic extension if ``periodic``)
    where the plan fuses them. Returns False, computing nothing, where the two maps
    run separately."""
    key = _key("backward", (x.shape, w.shape), x.dtype, geometry, gy.shape[2:], periodic,
               _layout(x))
    nhwc = not periodic and _nhwc_applies("conv_transpose2d", (x, w), geometry, None)

    def call(plan, images=None):  # ``images``: on the first ones only (a warm-up)
        x_, gy_, gx_ = x[:images], gy[:images], gx[:images]
        if plan[0] == "separate":
            # the maps' own plans, measured on the whole batch even in a warm-up
            run("conv2d", (gy, w), geometry, x.shape[2:], gx)
            run("weight_correlation", (x, gy), geometry, w.shape[2:], gw)
        elif plan[1] == "nhwc" and nhwc:
            operands, product = tuple(map(_nhwc, (x_, w, gy_))), _PRODUCTS[plan[2]]
            _into(gx_, lambda gx_o: _into(gw, lambda gw_o: kernels.nhwc.conv_transpose2d_backward(
                *operands, *geometry, gx_out=gx_o, gw_out=gw_o, gemm=product), True), True)
        else:
            operands = tuple(map(_nchw, (x_, w, gy_)))
            _into(gx_, lambda gx_o: _into(gw, lambda gw_o: _fused_nchw(
                plan, *operands, geometry, gx_o, gw_o, periodic)))

    def tune():
        plans = _plans.candidates("backward", x.dtype, key[2], geometry, gy.shape[2:],
                                  _rule(key, x.shape))
        fits = kernels.subpixel.subpixel_fits(x.shape, _subpixel_shape(w.shape, geometry),
                                              geometry[0], geometry[1], geometry[3],
                                              gy.shape[2:], x.itemsize)[1]
        plans = [p for p in plans
                 if (p[1] != "subpixel" or fits) and (p[1] != "nhwc" or nhwc)]
        return _plans.measure(call, plans, lambda p: call(p, 1))[0]

    # the periodic backward has no separate form here (its maps read a padded gy)
    plan = _planned(key, x.shape, None if periodic else tune)
    if plan[0] != "gemm" or (periodic and plan[1] == "nhwc"):
        return False
    call(plan)
    return True


def _fused_nchw(plan, x, w, gy, geometry, gx, gw, periodic):
    """The GEMM family's fused backward (NCHW-contiguous arrays) with ``plan``'s form."""
    padded = _plans.subpixel_kernel(w.shape[2:], geometry[0], geometry[2])
    if plan[1] == "subpixel" and padded not in (None, w.shape[2:]) and np.isfinite(gy).all():
        gw_full = np.empty(w.shape[:2] + padded, w.dtype)
        kernels.gemm.conv_transpose2d_backward(
            x, _pad_kernel(w, padded), gy, *geometry, gx_out=gx, gw_out=gw_full,
            gemm=_PRODUCTS[plan[2]], subpixel=True, periodic=periodic)
        gw[...] = gw_full[:, :, :w.shape[2], :w.shape[3]]
        return
    kernels.gemm.conv_transpose2d_backward(
        x, w, gy, *geometry, gx_out=gx, gw_out=gw, gemm=_PRODUCTS[plan[2]],
        subpixel=_subpixel(plan[1], w.shape[2:], geometry), periodic=periodic)
