"""Plans: which kernels compute a map of one configuration, decided once.

A plan is plain data, ``(family, form, product)``:

* ``family``: ``"direct"`` or ``"gemm"`` (``kernels.FAMILIES``);
* ``form`` (GEMM only): ``"columns"``, ``"subpixel"`` (with zero taps appended where
  the kernel is not a multiple of the stride: :func:`subpixel_kernel`) or
  ``"winograd"`` (F(2x2, 3x3) for 3x3 stride-1 layers: ``kernels.winograd``),
  ``"nhwc"`` (the channels-last column form, real floats: ``kernels.nhwc``; the
  other forms compute on NCHW copies of channels-last operands, this one on NHWC
  copies of NCHW ones), or ``""`` for the GEMM family's own choice;
* ``product`` (GEMM only): who multiplies the matrices, ``"mm"`` (``torch.mm``:
  MKL or OpenBLAS, whichever torch was built with) or ``"onednn"`` (oneDNN's
  matmul, float32 only, where torch has it); ``""`` for direct.

The backward's plan (both gradients at once) has the extra family ``"separate"``:
the two maps run one by one, each with its own plan.

Which plan is fastest depends on the CPU (torch's BLAS on AMD and Intel differ by
up to 2x on the same product) as much as on the layer, so by default the first
call of a configuration times its candidates on the machine at hand and keeps the
fastest: in memory (bounded) and on disk as JSON keyed by the CPU model and the
library versions (:class:`PlanStore`), so later processes start with it. With
autotuning off (``set_autotune(False)`` or ``FASTCONVT_AUTOTUNE=0``) the rule
decides, deterministically.
"""
import functools
import hashlib
import json
import logging
import math
import os
import platform
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numba
import numpy as np
import torch

from . import kernels

log = logging.getLogger("fastconvt")

FAMILIES = tuple(kernels.FAMILIES)
FORMS = ("", "columns", "subpixel", "winograd", "nhwc")
PRODUCTS = ("", "mm", "onednn")
MAPS = ("conv_transpose2d", "conv2d", "weight_correlation", "backward")
# Winograd F(2x2, 3x3) may be measured (and so chosen) unless FASTCONVT_WINOGRAD=0
WINOGRAD = os.environ.get("FASTCONVT_WINOGRAD", "1") not in ("0", "")
# the plan file's format, raised whenever the candidates change (a plan measured
# without a newer candidate is measured again)
FORMAT = 5
# configurations remembered per process, and per plan file
MAX_PLANS = 4096
# Below this many multiply-adds a map costs microseconds whatever the plan: the rule
# decides, and nothing is timed or written (a workload of ever-new small shapes
# would otherwise time and store each). oneDNN's product is a candidate from
# ONEDNN_MIN_WORK on: it compiles and keeps code per product shape (LRU caches of
# 1024 entries holding up to ~1 GiB), which pays only for large products.
MEASURE_MIN_WORK = 1 << 20
DIRECT_MAX_TERMS = 256
ONEDNN_MIN_WORK = 1 << 22


def rule_family(w_shape, groups):
    """The family the rule picks for a layer with weight ``w_shape`` (the same for
    all three of its maps).

    GEMM pays off when its products are large enough in every dimension (input
    channels per group, output taps ``C_out_g * kH * kW``); otherwise (depthwise,
    tiny layers) the direct kernels, which need no column buffer.
    """
    c_in_g = w_shape[0] // groups
    taps = w_shape[1] * w_shape[2] * w_shape[3]
    return "gemm" if c_in_g >= 8 and taps >= 8 else "direct"


def rule_plan(family):
    """The plan of ``family`` when nothing was measured: the family's own form, torch.mm."""
    return (family, "", "mm" if family == "gemm" else "")


def weight_shape(map_name, operand_shapes, groups, size):
    """The weight shape of a map's layer (the weight correlation's output)."""
    if map_name == "weight_correlation":
        x_shape, y_shape = operand_shapes[:2]
        return (x_shape[1], y_shape[1] // groups) + tuple(size)
    return tuple(operand_shapes[1])


def candidates(map_name, dtype, operand_shapes, geometry, size, rule):
    """The plans worth timing for one configuration, the rule's first."""
    stride, padding, dilation, groups = geometry
    w_shape = weight_shape(map_name, operand_shapes, groups, size)
    work = _work(map_name, operand_shapes, w_shape, size)
    if work < MEASURE_MIN_WORK:
        return [rule]
    products = ["mm"] + (["onednn"] if onednn_available() and dtype == np.float32
                         and work >= ONEDNN_MIN_WORK else [])
    forms = ["columns"] + (["nhwc"] if np.dtype(dtype).kind == "f" else [])
    # (at stride 1 the sub-pixel form is one product per tap, summed in float32 after
    # them: over twice torch's float32 error on a 3x3 layer, for no speed the column
    # form lacks)
    if subpixel_kernel(w_shape[2:], stride, dilation) is not None and tuple(stride) != (1, 1):
        forms.append("subpixel")
    channels = w_shape[:2] if map_name == "conv_transpose2d" else w_shape[1::-1]
    if (WINOGRAD and map_name in ("conv_transpose2d", "conv2d") and np.dtype(dtype).kind == "f"
            and kernels.winograd.applies(w_shape[2:], stride, dilation, groups)
            and kernels.winograd.fits(size, *channels, np.dtype(dtype).itemsize)):
        forms.append("winograd")
    # the direct kernels have no register blocking: where the products are large in
    # both dimensions they are several times slower, and timing them costs seconds;
    # and they sum each output's C_in/groups * kH * kW terms in sequence, in float32:
    # from 256 terms on, over twice the error of torch's blocked sums
    c_in_g = w_shape[0] // groups
    direct = rule[0] == "direct" or (min(c_in_g, w_shape[1] * w_shape[2] * w_shape[3]) < 64
                                     and c_in_g * w_shape[2] * w_shape[3] < DIRECT_MAX_TERMS)
    plans = [rule] + ([("direct", "", "")] if direct and map_name != "backward" else [])
    plans += [("gemm", form, product) for product in products for form in forms]
    if map_name == "backward":
        plans.append(("separate", "", ""))
    return list(dict.fromkeys(plans))  # the rule's plan once, first


def _work(map_name, operand_shapes, w_shape, size):
    """Multiply-adds of one map of the layer (its input's pixels times the weight's
    size; the conv2d map's operand is the layer's output and ``size`` its input's)."""
    first = operand_shapes[0]
    pixels = first[2] * first[3] if map_name != "conv2d" else size[0] * size[1]
    return first[0] * pixels * math.prod(w_shape)


def subpixel_kernel(kernel_hw, stride, dilation):
    """The kernel size the sub-pixel form computes with, or None where it does not
    apply: each size rounded up to a multiple of its stride (zero taps; the GEMM
    family's own sub-pixel form where it already is one), for dilation 1 and a
    kernel at least as large as the stride (smaller ones would multiply mostly zeros)."""
    if tuple(dilation) != (1, 1) or any(k < s for k, s in zip(kernel_hw, stride)):
        return None
    return tuple(-(-k // s) * s for k, s in zip(kernel_hw, stride))


def valid(plan, map_name=None):
    """Whether ``plan`` (from a file) is one this version can run, for ``map_name``
    where given (only the backward runs its two maps separately, and it is never
    direct as a whole)."""
    if not (isinstance(plan, (list, tuple)) and len(plan) == 3
            and all(isinstance(p, str) for p in plan)) or map_name not in MAPS + (None,):
        return False
    family, form, product = plan
    families = {None: FAMILIES + ("separate",), "backward": ("gemm", "separate")}.get(
        map_name, FAMILIES)
    return (family in families and form in FORMS and product in PRODUCTS
            and (product != "onednn" or onednn_available())
            and (form != "winograd" or WINOGRAD))


_onednn = None


def onednn_available():
    """Whether torch has oneDNN's matmul operator (a private one: its absence or
    failure only removes a candidate)."""
    global _onednn
    if _onednn is None:
        try:
            a = torch.ones(2, 3)
            _onednn = bool(torch.backends.mkldnn.is_available()) and torch.equal(
                torch.ops.mkldnn._linear_pointwise(a, torch.ones(4, 3), None, "none", [], ""),
                torch.full((2, 4), 3.0))
        except Exception:  # noqa: BLE001 (any failure means: not available)
            _onednn = False
    return _onednn


def _map_of(key):
    """The map a plan file's key names, or "" if it names none."""
    try:
        name = json.loads(key)[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return ""
    return name if name in MAPS else ""


_measured = 0


def measurements():
    """How many configurations this process has measured so far."""
    return _measured


def measure(run, plans, warm=None, rounds=3, prune=2.0):
    """The fastest of ``plans`` by ``run(plan)`` (which computes the map): each
    first warmed by ``warm(plan)`` (the map on one image: compiles kernels and
    loads them, cheaply), then timed over ``rounds`` interleaved rounds; from the
    third round on, a plan over ``prune`` times the best is dropped (not earlier: a
    first full-size run may still compile or load the parallel kernels, which one
    image does not use). Returns (best plan, {plan: seconds}); (None, {}) for fewer
    than two plans: nothing to time (the rule's plan then serves, unstored)."""
    global _measured
    if len(plans) < 2:
        return None, {}
    _measured += 1
    for plan in plans:
        (warm or run)(plan)
    best = {}
    for r in range(rounds):
        leader = min(best.values(), default=math.inf)
        for plan in plans:
            if r > 1 and best[plan] > prune * leader:
                continue
            start = time.perf_counter()
            run(plan)
            elapsed = time.perf_counter() - start
            best[plan] = min(best.get(plan, math.inf), elapsed)
    return min(best, key=best.get), best


@functools.lru_cache(maxsize=None)
def machine():
    """What a stored plan is valid for: this CPU and these libraries."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from . import __version__
    return {"cpu": cpu, "fastconvt": __version__, "torch": torch.__version__,
            "numba": numba.__version__, "numpy": np.__version__}


def cache_dir():
    """``$FASTCONVT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastconvt`` or ``~/.cache/fastconvt``."""
    if os.environ.get("FASTCONVT_CACHE_DIR"):
        return Path(os.environ["FASTCONVT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastconvt"


class PlanStore:
    """Measured plans: a bounded in-memory map over a JSON file per machine.

    The file (``plans-<hash of machine()>.json`` in :func:`cache_dir`) holds
    ``{"format", "machine", "plans": {key: plan}}``. A file that does not parse,
    has another format or machine, or holds a plan this version cannot run is
    ignored (with a log line), never trusted; writing failures (a read-only home)
    are logged once and the plans stay in memory.
    """

    def __init__(self):
        self._plans = OrderedDict()
        self._lock = threading.Lock()
        self._loaded_from = None
        self._write_failed = False

    def path(self):
        ident = json.dumps(machine(), sort_keys=True).encode()
        return cache_dir() / f"plans-{hashlib.sha256(ident).hexdigest()[:16]}.json"

    def _read(self, path):
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("fastconvt: ignoring unreadable plan file %s (%s)", path, error)
            return {}
        if not (isinstance(data, dict) and data.get("format") == FORMAT
                and data.get("machine") == machine() and isinstance(data.get("plans"), dict)):
            log.warning("fastconvt: ignoring plan file %s: another format or machine", path)
            return {}
        plans = {k: tuple(v) for k, v in data["plans"].items()
                 if isinstance(k, str) and valid(v, _map_of(k))}
        if len(plans) != len(data["plans"]):
            log.warning("fastconvt: ignoring %d invalid entries of plan file %s",
                        len(data["plans"]) - len(plans), path)
        return plans

    def _load(self):
        path = self.path()
        if self._loaded_from != path:
            self._loaded_from = path
            for key, plan in self._read(path).items():
                self._remember(key, plan)

    def _remember(self, key, plan):
        self._plans[key] = plan
        self._plans.move_to_end(key)
        while len(self._plans) > MAX_PLANS:
            self._plans.popitem(last=False)

    def get(self, key):
        with self._lock:
            self._load()
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def put(self, key, plan):
        with self._lock:
            self._load()
            self._remember(key, plan)
            self._write(key, plan)

    def _write(self, key, plan):
        path = self.path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            plans = self._read(path)  # another process may have added plans
            plans[key] = plan
            plans = dict(list(plans.items())[-MAX_PLANS:])
            data = {"format": FORMAT, "machine": machine(), "plans": plans}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plans-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0)
            os.replace(tmp, path)
        except OSError as error:
            if not self._write_failed:
                log.warning("fastconvt: cannot write plan file %s (%s); plans stay in memory",
                            path, error)
            self._write_failed = True

    def clear(self):
        """Forget the plans in memory (the file stays; it is read again on next use)."""
        with self._lock:
            self._plans.clear()
            self._loaded_from = None
