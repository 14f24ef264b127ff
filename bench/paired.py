"""``python bench/paired.py LAYER [--dtype float32] [--mode forward+backward] [--pairs 300]``

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
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # layers.py, test_layers.py

import allocator  # noqa: E402
import fastconvt  # noqa: E402
from layers import LAYERS, MODES  # noqa: E402
from test_layers import DTYPES, _torch_module  # noqa: E402


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


def paired(layer, dtype="float32", mode="forward+backward", pairs=300, seed=0):
    """(torch median s, fastconvt median s, median ratio, (2.5%, 97.5%) bootstrap bounds)."""
    spec, dt = LAYERS[layer], DTYPES[dtype]
    steps = {}
    for name, make in (("torch", _torch_module), ("fastconvt", fastconvt.ConvTranspose2d)):
        torch.manual_seed(seed)  # same weights and data for both
        module = make(**spec.conv_args(), dtype=dt)
        x = torch.randn(spec.input_shape, dtype=dt, requires_grad=mode != "forward")
        grad = torch.randn(spec.output_shape, dtype=dt)
        steps[name] = _step(module, x, grad, mode)
    for step in steps.values():
        step()
        step()
    times, ratios = {name: [] for name in steps}, []
    for i in range(pairs):
        seconds = {}
        for name in (steps if i % 2 == 0 else reversed(list(steps))):
            start = time.perf_counter()
            steps[name]()
            seconds[name] = time.perf_counter() - start
            times[name].append(seconds[name])
        ratios.append(seconds["torch"] / seconds["fastconvt"])
    rng = random.Random(seed)
    boot = sorted(_median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return (_median(times["torch"]), _median(times["fastconvt"]), _median(ratios),
            (boot[50], boot[1949]))


def main(argv=None):
    allocator.reexec_with_fixed_thresholds()
    parser = argparse.ArgumentParser(prog="python bench/paired.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layer", choices=sorted(LAYERS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--mode", choices=MODES, default="forward+backward")
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args(argv)
    t_torch, t_fast, ratio, (lo, hi) = paired(args.layer, args.dtype, args.mode, args.pairs)
    print(f"{args.layer} {args.dtype} {args.mode}, {args.pairs} interleaved pairs, "
          f"{torch.get_num_threads()} threads, malloc {allocator.setting()}: "
          f"torch {t_torch * 1e3:.3f} ms, fastconvt {t_fast * 1e3:.3f} ms; "
          f"speed-up {ratio:.3f}x (95% bootstrap {lo:.3f}-{hi:.3f})")

if __name__ == "__main__":
    main()
