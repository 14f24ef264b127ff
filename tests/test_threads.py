"""fastconvt under concurrency: several Python threads at once, every Numba
threading layer, and processes forked after the kernels ran (DataLoader
workers with the fork start method)."""
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import fastconvt
from conftest import assert_close, reference

SCRIPT = textwrap.dedent("""
    import contextlib, multiprocessing, sys
    import torch, fastconvt
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 16, 16, generator=g)
    w = torch.randn(8, 4, 4, 4, generator=g)
    ref = torch.nn.functional.conv_transpose2d(x.double(), w.double(), stride=2, padding=1)

    def error(_=None):
        forced = sys.argv[1] == "fork-gemm" and multiprocessing.parent_process() is not None
        with fastconvt.use_family("gemm") if forced else contextlib.nullcontext():
            y = fastconvt.conv_transpose2d(x, w, stride=2, padding=1)
        return float((y.double() - ref).abs().max() / ref.abs().max())

    if sys.argv[1] == "fork-cold":  # a parent that ran torch only: Numba's layer unknown
        torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1)
    else:
        with fastconvt.use_family("direct"):  # the parent starts Numba's thread pool first
            fastconvt.conv_transpose2d(x, w, stride=2, padding=1)
    errors = [error()] if sys.argv[1] != "fork-cold" else [0.0]
    if sys.argv[1].startswith("fork"):
        with multiprocessing.get_context("fork").Pool(2) as pool:
            errors += pool.map_async(error, range(4)).get(timeout=60)
    else:
        import threading
        threads = [threading.Thread(target=lambda: errors.extend(error() for _ in range(10)))
                   for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:  # never started in this process
        layer = "none"
    print(layer, len(errors), max(errors))
    assert max(errors) < 1e-5 and len(errors) == (5 if sys.argv[1].startswith("fork") else 41)
""")


def _run(mode, layer, cwd):
    env = {"NUMBA_THREADING_LAYER": layer, "PATH": "/usr/bin:/bin",
           "FASTCONVT_CACHE_DIR": str(cwd)}  # measured plans stay in the test's folder
    # -P and a neutral cwd: the installed fastconvt, never the source tree's
    done = subprocess.run([sys.executable, "-P", "-c", SCRIPT, mode], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[0] == (layer if mode != "fork-cold" else "none")


@pytest.mark.slow
def test_forked_children_of_a_parent_that_ran_only_torch(tmp_path):
    """Numba's layer not yet started when the parent forked (torch's OpenMP pool was):
    the children run serially too, rather than start a second OpenMP pool."""
    _run("fork-cold", "omp", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_forked_children_compute(layer, tmp_path):
    """GNU OpenMP cannot run parallel regions in a child forked after its pool
    started; fastconvt runs its kernels serially there instead of dying."""
    _run("fork", layer, tmp_path)


@pytest.mark.slow
def test_forked_children_ignore_a_forced_gemm_family(tmp_path):
    """torch's products hang in such a child: a forced GEMM family gives way to the
    direct kernels there too (it hung forever)."""
    _run("fork-gemm", "omp", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_concurrent_python_threads(layer, tmp_path):
    """The workqueue layer aborts on concurrent parallel launches unless
    fastconvt serialises them."""
    _run("threads", layer, tmp_path)


def test_concurrent_python_threads_in_process(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 12, 12, generator=g, dtype=dtype)
    w = torch.randn(6, 3, 3, 3, generator=g, dtype=dtype)
    ref = reference(x, w, stride=2, padding=1, groups=2)
    results = []

    def work():
        results.extend(fastconvt.conv_transpose2d(x, w, stride=2, padding=1, groups=2)
                       for _ in range(10))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40
    for out in results:
        assert_close(out, ref, dtype)


def test_parallel_regions_run_on_the_requested_thread_count():
    """``on_threads``/``num_threads`` reach the kernels' parallel regions (Numba's own
    count is set only around them and restored), and a one-thread request runs the
    serial kernel."""
    import numba

    from fastconvt.kernels import _config, num_threads, on_threads

    ran = []
    serial = lambda *args: ran.append(("serial", numba.get_num_threads()))  # noqa: E731
    parallel = lambda *args: ran.append(("parallel", numba.get_num_threads()))  # noqa: E731
    work = _config.PARALLEL_MIN_WORK
    before = numba.get_num_threads()
    on_threads(1, _config.launch, serial, parallel, (), 8, work)
    with num_threads(1):
        _config.launch(serial, parallel, (), 8, work)
    assert [r[0] for r in ran] == ["serial", "serial"]
    if numba.config.NUMBA_NUM_THREADS >= 2:
        numba.set_num_threads(1)
        try:
            on_threads(2, _config.launch, serial, parallel, (), 8, work)
            assert ran[-1] == ("parallel", 2)
            assert numba.get_num_threads() == 1
        finally:
            numba.set_num_threads(before)
    assert numba.get_num_threads() == before
