"""``python bench/paired.py LAYER [--dtype float32] [--mode forward+backward] [--pairs 300]
[--memory-format FORMAT]``

One benchmark layer timed as interleaved pairs in one process: each round runs torch's
side and fastconvt's back to back (alternating which goes first), so both see the same
load on a shared machine. Prints both medians and the median of the per-round ratios
(torch / fastconvt) with a 95% bootstrap interval. The torch side is the one
``python -m bench`` times (torch's best equivalent for a padding mode it lacks). Like
``python -m bench`` it runs with fixed glibc malloc thresholds (``allocator.py``). Run it as
a script, as above: from the repository root, ``python -m`` would import the source
tree's ``fastconvt`` (which lacks its kernels) instead of the installed one.
"""
import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # layers.py, baselines.py

import allocator  # noqa: E402
from layers import LAYERS, MODES  # noqa: E402
from baselines import DTYPES, make_module  # noqa: E402


def _step(module, x, grad, mode):
    if mode == "forward":
        def step():
            with torch.no_grad():
                module(x)
    else:
        params = (x, module.weight, module.bias)

        def step():
            torch.autograd.grad(module(x), params, grad)
    return step


def _median(values):
    return sorted(values)[len(values) // 2]


class Paired(NamedTuple):
    """Medians of each side's times (s), the median per-pair ratio torch / fastconvt,
    its 95% bootstrap interval, and how many pairs were timed."""
    torch: float
    fastconvt: float
    ratio: float
    low: float
    high: float
    pairs: int


def paired(layer, dtype="float32", mode="forward+backward", pairs=300, seed=0, seconds=None,
           memory_format=None):
    """Time ``pairs`` interleaved pairs, or if ``seconds`` is given as many as fill about
    that long (at least 5, at most 2000); return a :class:`Paired`. ``memory_format``
    ("contiguous" or "channels_last": input, weight and output gradient, both sides)
    overrides the layer's."""
    spec, dt = LAYERS[layer], DTYPES[dtype]
    if memory_format is not None:
        spec = spec._replace(memory_format=memory_format)
    steps = {}
    for name in ("torch", "fastconvt"):
        torch.manual_seed(seed)  # same weights and data for both
        module = make_module(name, spec, dt)
        module.weight.data, = spec.to_format(module.weight.data)
        x, grad = spec.to_format(torch.randn(spec.input_shape, dtype=dt),
                                 torch.randn(spec.output_shape, dtype=dt))
        x.requires_grad_(mode != "forward")
        steps[name] = _step(module, x, grad, mode)
    return interleave(steps["torch"], steps["fastconvt"], pairs, seed, seconds)


def interleave(torch_step, fastconvt_step, pairs=300, seed=0, seconds=None):
    """Two steps timed as interleaved pairs (which goes first alternates), after two
    calls of each; ``seconds`` as in :func:`paired`. Returns a :class:`Paired`."""
    steps = {"torch": torch_step, "fastconvt": fastconvt_step}
    start = time.perf_counter()
    for step in steps.values():
        step()
        step()
    if seconds is not None:
        pair = (time.perf_counter() - start) / 2
        pairs = max(5, min(2000, math.ceil(seconds / max(pair, 1e-7))))
    times, ratios = {name: [] for name in steps}, []
    for i in range(pairs):
        elapsed = {}
        for name in (steps if i % 2 == 0 else reversed(list(steps))):
            start = time.perf_counter()
            steps[name]()
            elapsed[name] = time.perf_counter() - start
            times[name].append(elapsed[name])
        ratios.append(elapsed["torch"] / elapsed["fastconvt"])
    rng = random.Random(seed)
    boot = sorted(_median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return Paired(_median(times["torch"]), _median(times["fastconvt"]), _median(ratios),
                  boot[50], boot[1949], pairs)


def main(argv=None):
    allocator.reexec_with_fixed_thresholds()
    parser = argparse.ArgumentParser(prog="python bench/paired.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layer", choices=sorted(LAYERS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--mode", choices=MODES, default="forward+backward")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--memory-format", choices=["channels_last", "contiguous"],
                        help="override the layer's")
    args = parser.parse_args(argv)
    result = paired(args.layer, args.dtype, args.mode, args.pairs,
                    memory_format=args.memory_format)
    layout = f" {args.memory_format}" if args.memory_format else ""
    print(f"{args.layer} {args.dtype} {args.mode}{layout}, {args.pairs} interleaved pairs, "
          f"{torch.get_num_threads()} threads, malloc {allocator.setting()}: "
          f"torch {result.torch * 1e3:.3f} ms, fastconvt {result.fastconvt * 1e3:.3f} ms; "
          f"speed-up {result.ratio:.3f}x (95% bootstrap {result.low:.3f}-{result.high:.3f})")


if __name__ == "__main__":
    main()
