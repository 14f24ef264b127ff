"""``python -m bench``: run the benchmark against torch and print the speed-up table.

Speed-up is torch's median time over fastconvt's, both measured in the same
process, side by side; GFLOP/s counts only the useful multiply-adds.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from layers import LAYERS, flops  # noqa: E402


def run(json_path, extra_args):
    command = [sys.executable, "-m", "pytest", str(HERE / "test_layers.py"), "-q",
               "-p", "no:cacheprovider", f"--rootdir={HERE}", "--benchmark-columns=median,iqr,rounds",
               "--benchmark-sort=name", f"--benchmark-json={json_path}", *extra_args]
    env = dict(os.environ, PYTHONPATH=str(HERE))
    return subprocess.call(command, env=env, cwd=HERE)


def table(json_path):
    results = json.loads(Path(json_path).read_text())
    medians = {}
    for bench in results["benchmarks"]:
        info = bench["extra_info"]
        medians[info["layer"], info["mode"], info["dtype"], info["impl"]] = bench["stats"]["median"]
    lines = [f"{'layer':<36} {'pass':<17} {'dtype':<8} {'torch ms':>9} {'ours ms':>9} "
             f"{'speed-up':>8} {'GFLOP/s':>8}"]
    ratios = {}
    for (layer, mode, dtype, impl), ours in sorted(medians.items()):
        if impl != "fastconvt" or (layer, mode, dtype, "torch") not in medians:
            continue
        theirs = medians[layer, mode, dtype, "torch"]
        work = flops(LAYERS[layer]) * (3 if mode != "forward" else 1)
        ratios.setdefault((mode, dtype), []).append(theirs / ours)
        lines.append(f"{layer:<36} {mode:<17} {dtype:<8} {theirs * 1e3:>9.3f} {ours * 1e3:>9.3f} "
                     f"{theirs / ours:>7.2f}x {work / ours / 1e9:>8.1f}")
    for (mode, dtype), values in sorted(ratios.items()):
        geomean = math.exp(sum(map(math.log, values)) / len(values))
        lines.append(f"geometric mean speed-up, {mode}, {dtype}: {geomean:.2f}x")
    return "\n".join(lines)


def main(argv):
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    json_path = out_dir / "latest.json"
    status = run(json_path, argv)
    if status != 0:
        return status
    report = table(json_path)
    (out_dir / "latest.txt").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
