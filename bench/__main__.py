"""``python -m bench [pytest options]``: the project's benchmark (``make bench``).

1. Runs bench/test_layers.py under pytest-benchmark (every layer, then two whole
   models: a DCGAN generator's training step and a U-Net decoder's inference pass),
   passing every argument through
   (e.g. ``--benchmark-max-time=0.05 --benchmark-min-rounds=1`` for a smoke run,
   ``-k dcgan``, ``--family gemm``); defaults are in bench/pytest.ini.
2. Times ``fastconvt.warmup()`` in fresh processes, without Numba's on-disk cache
   (``FASTCONVT_NO_CACHE=1``) and with it (warm: the run above filled it).
3. Prints the report and writes bench/results/latest.{json,md} and speedups.png.

The timing process runs with fixed glibc malloc thresholds (``allocator.py``).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import allocator, report

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
# cwd is bench/ for every child: never the repo root, whose ./fastconvt (without its
# kernels) would shadow the installed package.
_WARMUP = ("import time, fastconvt; start = time.perf_counter(); fastconvt.warmup(); "
           "print(time.perf_counter() - start)")


def compile_seconds(no_cache):
    """Wall time of ``fastconvt.warmup()`` in a fresh process (or why it failed)."""
    env = dict(os.environ, FASTCONVT_NO_CACHE="1" if no_cache else "0")
    done = subprocess.run([sys.executable, "-c", _WARMUP], cwd=HERE, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return float(done.stdout.split()[-1])


def compile_times():
    print("timing fastconvt.warmup() in fresh processes ...", flush=True)
    return {"no_cache": compile_seconds(no_cache=True), "cached": compile_seconds(no_cache=False)}


def run_pytest(json_path, extra_args):
    command = [sys.executable, "-m", "pytest", "test_layers.py", f"--rootdir={HERE}",
               f"--benchmark-json={json_path}", *extra_args]
    env = allocator.environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return subprocess.call(command, env=env, cwd=HERE)


def main(argv):
    start = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    json_path = OUT / "latest.json"
    json_path.unlink(missing_ok=True)  # never report a previous run's results
    status = run_pytest(json_path, argv)
    if not json_path.exists():
        print(f"python -m bench: pytest exited with {status} and wrote no results",
              file=sys.stderr)
        return status or 1
    results = json.loads(json_path.read_text())
    results["fastconvt_compile_seconds"] = compile_times()
    json_path.write_text(json.dumps(results, indent=2))
    print(report.write(json_path, OUT))
    print(f"results: {OUT}/latest.{{json,md}}; total time {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
