"""``python bench/memory.py [LAYER ...] [--dtype float32]``

Peak extra memory of one call per benchmark layer, torch and fastconvt: the rise of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) during a
call, minus what the call returns (output, and for forward+backward the input and weight
gradients). Inputs, weights and the saved tensors exist before the call or are counted
in its results, so what remains is the call's own working memory: workspace, layout
copies, intermediate tensors. Each layer runs in its own process after a warm-up call
(kernels compiled, plans chosen), with glibc's mmap threshold fixed at 64 KiB so that a
freed block leaves the resident set at once. Linux only.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # layers.py, baselines.py

MODES = ("forward", "forward+backward")
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "GLIBC_TUNABLES": ""}


def _kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_extra(step):
    """MiB the resident set rose above its level before ``step()`` at its peak, minus
    the bytes of the tensors ``step`` returns."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident set
    before = _kib("VmRSS")
    results = step()
    peak = _kib("VmHWM")
    kept = sum(t.numel() * t.element_size() for t in results)
    return ((peak - before) * 1024 - kept) / 2 ** 20


def measure(name, dtype, mode, impl, plan=None):
    """Peak extra MiB of one ``mode`` call of ``impl`` on benchmark layer ``name``
    (``plan``: a ``fastconvt.use_family`` argument tuple), in this process."""
    import torch

    import fastconvt
    from baselines import DTYPES, make_module
    from layers import LAYERS

    spec, dt = LAYERS[name], DTYPES[dtype]
    torch.manual_seed(0)
    module = make_module(impl, spec, dt)
    module.weight.data, = spec.to_format(module.weight.data)
    x, grad = spec.to_format(torch.randn(spec.input_shape, dtype=dt),
                             torch.randn(spec.output_shape, dtype=dt))
    x.requires_grad_(mode != "forward")

    def step():
        if mode == "forward":
            with torch.no_grad():
                return [module(x)]
        out = module(x)
        return [out, *torch.autograd.grad(out, (x, module.weight), grad)]

    with fastconvt.use_family(*plan) if plan else contextlib.nullcontext():
        step()  # compile, measure plans, fault in the libraries' own pools
        return peak_extra(step)


def measure_in_subprocess(name, dtype="float32", mode="forward", impl="fastconvt", plan=None):
    """:func:`measure` in a fresh process (its own peak), with the fixed mmap threshold."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import memory; "
            f"print(memory.measure({name!r}, {dtype!r}, {mode!r}, {impl!r}, {plan!r}))")
    env = dict(os.environ, **ENV)
    done = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"{name} {mode} {impl}: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.split()[-1])


def main(argv=None):
    from layers import LAYERS
    parser = argparse.ArgumentParser(prog="python bench/memory.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layers", nargs="*", metavar="LAYER", help="default: every layer")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.layers) - set(LAYERS))
    if unknown:
        parser.error(f"unknown layers {unknown}; choose from {sorted(LAYERS)}")
    rows = {}
    print(f"peak extra memory per call, MiB ({args.dtype}; torch | fastconvt)")
    print(f"{'layer':40s} {'forward':>17s} {'forward+backward':>19s}")
    for name in args.layers or list(LAYERS):
        rows[name] = {mode: {impl: measure_in_subprocess(name, args.dtype, mode, impl)
                             for impl in ("torch", "fastconvt")} for mode in MODES}
        cells = [f"{rows[name][m]['torch']:7.1f} | {rows[name][m]['fastconvt']:7.1f}"
                 for m in MODES]
        print(f"{name:40s} {cells[0]:>17s}   {cells[1]:>17s}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"dtype": args.dtype, "MiB": rows}, indent=1))


if __name__ == "__main__":
    main()
