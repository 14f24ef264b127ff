"""Differential fuzzing of fastconvt against torch: arbitrary arguments (valid and
not) for the functional, the module and the NumPy kernels, each call checked
against torch's. A case is plain JSON (shapes, dtype names, tagged argument
values, a seed), so failures found by ``make fuzz`` are saved to ``fuzz_corpus/``
and replayed by the suite (tests/test_fuzz.py).

The oracle runs in float64 on exactly upcast values (never torch's float32,
float16 or bfloat16 kernels, which crash on some of these arguments); integer
and mixed dtypes go to torch as they are, for its exceptions. Checked: the same
exception class as torch, or the oracle's result within the dtype's tolerance;
the NumPy kernels raise ValueError or TypeError for what they do not compute.
"""
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import fastconvt
from fastconvt import kernels

CORPUS = Path(__file__).parent / "fuzz_corpus"
LAST_CASE = Path(tempfile.gettempdir()) / "fastconvt-fuzz-last-case.json"
FLOATS = ("float32", "float64", "float16", "bfloat16", "complex64", "complex128")
DTYPES = FLOATS + ("int64", "bool")
# error bound relative to the sum of the terms' magnitudes
TOLERANCE = {"float64": 1e-10, "complex128": 1e-10, "float32": 1e-4, "complex64": 1e-4,
             "float16": 4e-3, "bfloat16": 3e-2}
GEOMETRY = ("stride", "padding", "output_padding", "groups", "dilation")


# ---------------------------------------------------------------------------
# cases: plain JSON

def _scalar():
    """A tagged argument element: the types torch's parser meets in practice."""
    small = st.integers(-2, 5)
    return st.one_of(
        small.map(lambda v: ["int", v]), small.map(lambda v: ["int", v]),
        st.sampled_from([2 ** 31, 2 ** 62]).map(lambda v: ["int", v]),
        small.map(lambda v: ["np_int", v]), st.booleans().map(lambda v: ["bool", v]),
        st.sampled_from([1.0, 2.5]).map(lambda v: ["float", v]),
        st.just(["none", None]), st.just(["str", "2"]))


def _value():
    """A geometry argument: an element, or a tuple or list of 0 to 3 of them."""
    return st.one_of(_scalar(), _scalar(), st.tuples(
        st.sampled_from(["tuple", "list"]), st.lists(_scalar(), min_size=0, max_size=3)
    ).map(list))


def _sane():
    """A geometry argument that is mostly valid (so results get compared too)."""
    return st.one_of(st.integers(0, 3).map(lambda v: ["int", v]),
                     st.lists(st.integers(0, 3), min_size=2, max_size=2).map(
                         lambda v: ["tuple", [["int", e] for e in v]]))


@st.composite
def cases(draw):
    """A call: the API, tensors (shapes, dtypes, layout) and tagged arguments."""
    api = draw(st.sampled_from(["functional", "functional", "module", "kernels"]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in, c_out_g = groups * draw(st.integers(0, 3)), draw(st.integers(0, 3))
    k = draw(st.lists(st.integers(0, 4), min_size=2, max_size=2))
    x_shape = [draw(st.integers(0, 3)), c_in] + draw(st.lists(st.integers(0, 6), min_size=2,
                                                              max_size=2))
    w_shape = [c_in, c_out_g] + k
    if draw(st.integers(0, 9)) == 0:  # wrong ranks, channel counts
        x_shape = x_shape[draw(st.integers(0, 2)):] + [2] * draw(st.integers(0, 1))
        w_shape[0] = max(0, w_shape[0] + draw(st.integers(-1, 1)))
    dtype = draw(st.sampled_from(FLOATS[:2] * 3 + DTYPES))
    case = {
        "api": api, "x": x_shape, "w": w_shape, "bias": draw(st.booleans()),
        "dtypes": [dtype, dtype if draw(st.integers(0, 9)) else draw(st.sampled_from(DTYPES))],
        "layout": draw(st.sampled_from(["contiguous", "contiguous", "channels_last",
                                        "transposed"])),
        "seed": draw(st.integers(0, 2 ** 16)),
        "args": {name: draw(_sane() if draw(st.integers(0, 2)) else _value())
                 for name in GEOMETRY},
    }
    case["args"]["groups"] = ["int", groups] if draw(st.integers(0, 3)) else draw(_value())
    if draw(st.booleans()):  # half the cases: a consistent layer, so results get compared
        _make_consistent(draw, case, groups)
    if api == "module" and draw(st.booleans()):
        case["output_size"] = draw(st.lists(st.integers(0, 16), min_size=2, max_size=2))
    return case


def _make_consistent(draw, case, groups):
    """Non-empty tensors, channels that fit ``groups``, valid geometry pairs."""
    pair = lambda lo, hi: [draw(st.integers(lo, hi)) for _ in range(2)]  # noqa: E731
    c_in, c_out_g = groups * draw(st.integers(1, 3)), draw(st.integers(1, 3))
    case["x"] = [draw(st.integers(1, 3)), c_in] + pair(1, 6)
    case["w"] = [c_in, c_out_g] + pair(1, 4)
    stride, dilation = pair(1, 3), pair(1, 2)
    geometry = {"stride": stride, "dilation": dilation, "padding": pair(0, 2),
                "output_padding": [draw(st.integers(0, max(s, d) - 1))
                                   for s, d in zip(stride, dilation)]}
    for name, values in geometry.items():
        case["args"][name] = ["tuple", [["int", v] for v in values]]
    case["args"]["groups"] = ["int", groups]
    if case["dtypes"][1] != case["dtypes"][0] and draw(st.integers(0, 3)):
        case["dtypes"][1] = case["dtypes"][0]


def _decode(tagged):
    kind, v = tagged
    if kind in ("tuple", "list"):
        items = [_decode(e) for e in v]
        return tuple(items) if kind == "tuple" else items
    return {"int": int, "np_int": np.int64, "bool": bool, "float": float,
            "none": lambda v: None, "str": str}[kind](v)


def _tensor(shape, dtype, g, layout):
    if dtype == "bool":
        t = torch.rand(shape, generator=g) > 0.5
    elif dtype == "int64":
        t = torch.randint(-3, 4, shape, generator=g)
    else:
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(getattr(torch, dtype))
    if t.dim() == 4 and layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif t.dim() == 4 and layout == "transposed":
        t = t.transpose(2, 3).contiguous().transpose(2, 3)
    return t


def tensors(case):
    g = torch.Generator().manual_seed(case["seed"])
    x = _tensor(case["x"], case["dtypes"][0], g, case["layout"])
    w = _tensor(case["w"], case["dtypes"][1], g, case["layout"])
    kind, groups = case["args"]["groups"]
    c_out = case["w"][1] * (groups if kind == "int" and 1 <= groups <= 3 else 1)
    b = _tensor([c_out], case["dtypes"][1], g, "") if case["bias"] else None
    return x, w, b


# ---------------------------------------------------------------------------
# the check

def _outcome(call):
    try:
        return "returned", call()
    except Exception as error:  # noqa: BLE001 - compared with torch's
        return "raised", error


def _up(t):
    if t is None or not (t.is_floating_point() or t.is_complex()):
        return t
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def _compare(got, want, magnitude, dtype, what):
    assert isinstance(got, torch.Tensor), what
    if got.dtype == torch.bool or not (got.is_floating_point() or got.is_complex()):
        raise AssertionError(f"an integer result: {what}")
    assert tuple(got.shape) == tuple(want.shape), (what, got.shape, want.shape)
    assert got.dtype == getattr(torch, dtype), (what, got.dtype, dtype)
    if want.numel():
        error = (_up(got) - want).abs().max().item()
        bound = TOLERANCE[dtype] * max(magnitude.abs().max().item(), 1e-30)
        assert error <= bound, f"{what}: error {error:.3g} > {bound:.3g}"


def check(case):
    """Run one case; raise AssertionError describing any difference from torch.
    Returns "valid" (torch computed it) or "invalid" (torch raised)."""
    x, w, b = tensors(case)
    args = [_decode(case["args"][name]) for name in GEOMETRY]
    if case["api"] == "kernels":
        return _check_kernels(case, x, w, b, args)
    if case["api"] == "module":
        return _check_module(case, x, w, b, args)
    floats = case["dtypes"][0] == case["dtypes"][1] and case["dtypes"][0] in FLOATS
    ours = _outcome(lambda: fastconvt.conv_transpose2d(x, w, b, *args))
    oracle = lambda f: F.conv_transpose2d(*(f(t) for t in (x, w, b)), *args)  # noqa: E731
    theirs = _outcome(lambda: oracle(_up) if floats else oracle(lambda t: t))
    return _same(case, ours, theirs, lambda: oracle(_magnitude))


def _magnitude(t):
    return None if t is None else _up(t).abs()


def _deliberate(case, ours):
    """fastconvt's documented departure from torch (whose float32 and float64 paths
    disagree there): dilation 0 or an output height or width of 0 always raises
    RuntimeError, for every dtype and batch size."""
    if ours[0] != "raised" or type(ours[1]) is not RuntimeError:
        return False
    try:
        pairs = {}
        for name in ("stride", "padding", "output_padding", "dilation"):
            v = _decode(case["args"][name])
            v = tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * 2
            pairs[name] = v * 2 if len(v) == 1 else v
        sizes = [(i - 1) * s - 2 * p + d * (k - 1) + o + 1 for i, k, s, p, o, d in zip(
            case["x"][-2:], case["w"][2:], *(pairs[n] for n in (
                "stride", "padding", "output_padding", "dilation")))]
        return 0 in pairs["dilation"] or min(sizes) <= 0
    except (TypeError, ValueError, OverflowError):
        return False


def _same(case, ours, theirs, magnitude):
    what = json.dumps(case)
    if _deliberate(case, ours):
        return "invalid"
    if theirs[0] == "raised":
        assert ours[0] == "raised", f"torch raised {theirs[1]!r}, fastconvt returned: {what}"
        assert type(ours[1]) is type(theirs[1]), (
            f"fastconvt raised {ours[1]!r}, torch {theirs[1]!r}: {what}")
        return "invalid"
    assert ours[0] == "returned", f"fastconvt raised {ours[1]!r}, torch returned: {what}"
    if case["dtypes"][0] != case["dtypes"][1] or case["dtypes"][0] not in FLOATS:
        # integer and mixed dtypes go to torch: its result exactly
        got, want = ours[1], theirs[1]
        assert got.dtype == want.dtype and got.shape == want.shape, what
        assert got.numel() == 0 or torch.equal(got, want), what
        return "valid"
    with torch.no_grad():
        _compare(ours[1], theirs[1], magnitude(), case["dtypes"][0], what)
    return "valid"


def _check_module(case, x, w, b, args):
    """Both constructors, then (where they agree and the tensors fit) both forwards,
    torch's on a float64 copy of the layer."""
    stride, padding, output_padding, groups, dilation = args
    c_out = case["w"][1] * (groups if type(groups) is int else 1)

    def build(cls):
        return cls(case["w"][0], c_out, tuple(case["w"][2:]), stride, padding, output_padding,
                   groups, case["bias"], dilation)

    ours, theirs = _outcome(lambda: build(fastconvt.ConvTranspose2d)), _outcome(
        lambda: build(torch.nn.ConvTranspose2d))
    if (_out_of_memory(theirs) and ours[0] == "returned") or (
            _out_of_memory(ours) and theirs[0] == "returned"):
        # both layers did not fit under make fuzz's memory cap at once: each alone?
        ours = theirs = None
        alone = []
        for cls in (fastconvt.ConvTranspose2d, torch.nn.ConvTranspose2d):
            outcome = _outcome(lambda: build(cls))
            alone.append(outcome if outcome[0] == "raised" else ("returned", None))
            del outcome  # (the layer: the next one gets the memory)
        if all(outcome[0] == "returned" for outcome in alone):
            return "invalid"  # too large to compare side by side here
        ours, theirs = alone
    if ours[0] == "raised" or theirs[0] == "raised":
        return _same(case, ours, theirs, lambda: None)
    mine, torchs = ours[1], theirs[1]
    if (tuple(mine.weight.shape) != tuple(w.shape) or case["dtypes"][0] != case["dtypes"][1]
            or (b is not None and mine.bias is not None and b.shape != mine.bias.shape)
            or case["dtypes"][0] not in FLOATS):
        return "invalid"  # the constructors agreed; other tensors are the functional's
    mine.to(w.dtype), torchs.to(_up(w).dtype)
    with torch.no_grad():
        mine.weight.copy_(w), torchs.weight.copy_(_up(w))
        if b is not None:
            mine.bias.copy_(b), torchs.bias.copy_(_up(b))
    size = case.get("output_size")
    ours = _outcome(lambda: mine(x, output_size=size))
    theirs = _outcome(lambda: torchs(_up(x), output_size=size))
    if ours[0] == "returned" and theirs[0] == "raised" and size is not None \
            and "output size" in str(theirs[1]):
        return "valid"  # beyond torch: sizes needing stride <= output_padding < dilation
    return _same(case, ours, theirs, lambda: F.conv_transpose2d(
        _magnitude(x), _magnitude(w), _magnitude(b), stride, padding,
        torchs._output_padding(x, size, torchs.stride, torchs.padding, torchs.kernel_size, 2,
                               torchs.dilation), groups, dilation))


def _out_of_memory(outcome):
    """Whether ``outcome`` is an allocation failure (torch's or Python's)."""
    return outcome[0] == "raised" and (isinstance(outcome[1], MemoryError)
                                       or "can't allocate memory" in str(outcome[1]))


def _check_kernels(case, x, w, b, args):
    """The NumPy API computes its layer (the output rows and columns from ``padding`` on
    of the uncropped output, ``out_hw`` of them) or raises ValueError or TypeError."""
    stride, padding, _, groups, dilation = args
    if torch.bfloat16 in (x.dtype, w.dtype):
        return "invalid"  # NumPy has no bfloat16
    arrays = [None if t is None else t.numpy() for t in (x, w, b)]
    out_hw = tuple(case.get("output_size") or case["x"][-2:])
    result = "invalid"
    for family in kernels.FAMILIES.values():
        ours = _outcome(lambda: family.conv_transpose2d(*arrays, stride, padding, dilation,
                                                        groups, out_hw))
        if ours[0] == "raised":
            assert isinstance(ours[1], (ValueError, TypeError)), (
                f"kernels raised {ours[1]!r}: {json.dumps(case)}")
            continue
        result = "valid"
        pairs = [tuple(int(v) for v in pair) for pair in (stride, padding, dilation)]

        def uncropped(f):
            if x.numel() == 0 or w.numel() == 0:  # nothing to sum: the bias alone
                full = torch.zeros((x.shape[0], w.shape[1] * int(groups), 0, 0),
                                   dtype=f(x).dtype)
            else:
                full = F.conv_transpose2d(f(x), f(w), None, pairs[0], 0, 0, int(groups),
                                          pairs[2])
            (ph, pw), (h, wd) = pairs[1], out_hw
            full = F.pad(full, (0, max(0, pw + wd - full.shape[3]),
                                0, max(0, ph + h - full.shape[2])))
            full = full[:, :, ph:ph + h, pw:pw + wd]
            return full if b is None else full + f(b).reshape(-1, 1, 1)

        with torch.no_grad():
            _compare(torch.from_numpy(ours[1]), uncropped(_up), uncropped(_magnitude),
                     case["dtypes"][0], json.dumps(case))
    return result


# ---------------------------------------------------------------------------
# make fuzz: a timed run that saves failures

def run(seconds, examples_per_batch=100):
    """Fuzz for ``seconds``; save each failing (shrunk) case to the corpus. Returns
    ({"valid": n, "invalid": n} cases run, failures saved)."""
    counts = {"valid": 0, "invalid": 0}
    failed = []

    @settings(max_examples=examples_per_batch, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def batch(case):
        LAST_CASE.write_text(json.dumps(case))  # what a hard crash leaves behind
        try:
            counts[check(case)] += 1
        except Exception:
            failed.append(case)
            raise

    end = time.monotonic() + seconds
    saved = 0
    while time.monotonic() < end:
        failed.clear()
        try:
            batch()
        except Exception:  # noqa: BLE001 - any failure is a finding
            CORPUS.mkdir(exist_ok=True)
            case = failed[-1]  # the shrunk example is the last one that failed
            digest = hashlib.sha256(json.dumps(case, sort_keys=True).encode()).hexdigest()
            name = f"case-{digest[:12]}.json"
            (CORPUS / name).write_text(json.dumps(case, indent=1, sort_keys=True) + "\n")
            saved += 1
            print(f"saved {CORPUS / name}", flush=True)
    return counts, saved


def _limit_memory():
    """Cap the address space at half the machine's memory: a case that allocates
    without bound raises MemoryError (a finding) instead of meeting the OOM killer."""
    import os
    import resource

    half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    resource.setrlimit(resource.RLIMIT_AS, (half, resource.getrlimit(resource.RLIMIT_AS)[1]))


if __name__ == "__main__":
    _limit_memory()
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    counts, saved = run(60 * minutes)
    print(f"fuzz: {counts['valid']} valid and {counts['invalid']} invalid cases in "
          f"{minutes:g} min; {saved} failures saved to {CORPUS}")
    sys.exit(1 if saved else 0)
