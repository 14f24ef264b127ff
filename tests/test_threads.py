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
    if sys.argv[1] == "fork-busy":  # another thread inside the kernels while the pool forks
        import threading
        stop = threading.Event()

        def busy():
            while not stop.is_set():
                with fastconvt.use_family("direct"):
                    fastconvt.conv_transpose2d(x, w, stride=2, padding=1)

        threading.Thread(target=busy, daemon=True).start()
    if sys.argv[1].startswith("fork"):
        with multiprocessing.get_context("fork").Pool(2) as pool:
            errors += pool.map_async(error, range(4)).get(timeout=60)
        if sys.argv[1] == "fork-busy":
            stop.set()
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
@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_a_fork_while_another_thread_is_inside_a_kernel(layer, tmp_path):
    """The children start with their locks re-armed and compute (a lock held by the
    busy thread at the fork would stay held forever in a child)."""
    _run("fork-busy", layer, tmp_path)


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


LOADER = textwrap.dedent("""
    import sys
    import torch, fastconvt
    from torch.utils.data import DataLoader, Dataset

    class Layers(Dataset):
        '''Item i: the relative error of a layer computed by ``family`` in the worker.'''
        def __init__(self, family):
            self.family = family
        def __len__(self):
            return 4
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x, w = torch.randn(2, 8, 12, 12, generator=g), torch.randn(8, 4, 4, 4, generator=g)
            with fastconvt.use_family(self.family):
                y = fastconvt.conv_transpose2d(x, w, stride=2, padding=1)
            ref = torch.nn.functional.conv_transpose2d(x.double(), w.double(), stride=2,
                                                       padding=1)
            return float((y.double() - ref).abs().max() / ref.abs().max())

    if __name__ == "__main__":
        threads = torch.get_num_threads()
        for family in ("direct", "gemm"):  # the parent ran the layers first, as training does
            Layers(family)[0]
        for family in ("direct", "gemm"):
            loader = DataLoader(Layers(family), batch_size=None, num_workers=2, timeout=120,
                                multiprocessing_context=sys.argv[1])
            errors = list(loader)
            assert len(errors) == 4 and max(errors) < 1e-5, errors
        assert torch.get_num_threads() == threads
        print("ok")
""")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_compute_each_family(method, tmp_path):
    """DataLoader workers (2, started by fork or spawn) compute with each family forced;
    the parent's torch thread count is unchanged."""
    (tmp_path / "loader_check.py").write_text(LOADER)
    env = {"PATH": "/usr/bin:/bin", "FASTCONVT_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "loader_check.py", method], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("autotune", [False, True], ids=["rule", "measured"])
def test_eight_threads_of_mixed_layers(autotune, tmp_path, monkeypatch):
    """8 Python threads at once, each its own shape, dtype and layout, forward and
    backward, with measuring off and on (plans timed concurrently); torch's thread
    count unchanged."""
    from fastconvt import _plans

    monkeypatch.setenv("FASTCONVT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_plans, "MEASURE_MIN_WORK", 0)  # small layers, timed all the same
    threads_before = torch.get_num_threads()
    failures = []

    def work(i):
        try:
            dtype = (torch.float32, torch.float64)[i % 2]
            g = torch.Generator().manual_seed(i)
            x = torch.randn(2, 4 + i, 5 + i, 6, generator=g, dtype=dtype)
            if i % 3 == 0:
                x = x.contiguous(memory_format=torch.channels_last)
            w = torch.randn(4 + i, 3, 3 + i % 2, 4, generator=g, dtype=dtype)
            kw = dict(stride=1 + i % 2, padding=i % 2)
            for _ in range(3):
                a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
                out = fastconvt.conv_transpose2d(a, b, **kw)
                grads = torch.autograd.grad(out.sum(), (a, b))
                ref = reference(a, b, **kw)
                ref_grads = torch.autograd.grad(ref.sum(), (a, b))
                assert_close(out, ref, dtype)
                for got, want in zip(grads, ref_grads):
                    assert_close(got, want, dtype)
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append((i, repr(error)))

    measured = _plans.measurements()
    fastconvt.set_autotune(autotune)
    try:
        pool = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=300)
    finally:
        fastconvt.set_autotune(False)
    assert not any(t.is_alive() for t in pool), "a thread hangs"
    assert not failures, failures
    assert (_plans.measurements() > measured) == autotune
    assert torch.get_num_threads() == threads_before
