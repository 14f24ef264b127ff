"""``bench/paired.py``, the paired timing behind the README's in-process ratios: it runs
from a clean checkout and reports what it timed."""
import importlib.util
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "paired.py"
_spec = importlib.util.spec_from_file_location("allocator", SCRIPT.parent / "allocator.py")
allocator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(allocator)


def test_paired_timing_runs_and_reports_its_timing():
    env = {name: value for name, value in os.environ.items() if name != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, str(SCRIPT), "article-1to1-k3s2-4x4", "--pairs", "5",
                           "--dtype", "float64"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr
    found = re.search(r"article-1to1-k3s2-4x4 float64 forward\+backward, 5 interleaved pairs, "
                      r"\d+ threads, malloc (.+?): torch ([\d.]+) ms, fastconvt ([\d.]+) ms; "
                      r"speed-up ([\d.]+)x \(95% bootstrap ([\d.]+)-([\d.]+)\)", done.stdout)
    assert found, done.stdout
    if platform.libc_ver()[0] == "glibc":  # it restarted itself with fixed thresholds
        assert found.group(1) == allocator.TUNABLES
    torch_ms, fast_ms = map(float, found.groups()[1:3])
    assert torch_ms > 0 and fast_ms > 0


def test_interleaved_ratio_measures_two_known_durations():
    """Steps that sleep 4 ms and 2 ms: the median per-pair ratio is about 2."""
    import time

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from paired import interleave
    finally:
        sys.path.remove(str(SCRIPT.parent))
    result = interleave(lambda: time.sleep(0.004), lambda: time.sleep(0.002), pairs=15)
    assert 1.5 < result.ratio < 2.5, result
    assert 0.003 < result.torch < 0.008 and 0.0015 < result.fastconvt < 0.005, result


def test_paired_timing_rejects_an_unknown_layer():
    done = subprocess.run([sys.executable, str(SCRIPT), "no-such-layer"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "invalid choice" in done.stderr
