"""pytest plumbing for the benchmark: two threads, compiled kernels, machine info,
and ``--family`` to force one of fastconvt's kernel families."""
import platform

import numba
import numpy
import pytest
import torch

import allocator
import fastconvt

THREADS = 2
_NOTES = pytest.StashKey()


def pytest_addoption(parser):
    parser.addoption("--family", default=None, metavar="NAME",
                     help="time fastconvt with this kernel family forced "
                          "(fastconvt.use_family); default: its dispatcher's choice")
    parser.addoption("--paired-seconds", type=float, default=4.0, metavar="S",
                     help="time each layer's torch and fastconvt as interleaved pairs for "
                          "about S seconds (the report's speed-ups); 0: separate blocks only")


def pytest_configure(config):
    # Free-form facts the tests learn (e.g. why ONNX Runtime was skipped),
    # written into the JSON's machine_info at the end.
    config.stash[_NOTES] = {"onnx_skipped": {}}
    name = config.getoption("family")
    if name:
        use_family = getattr(fastconvt, "use_family", None)
        if use_family is None:
            raise pytest.UsageError("--family: this fastconvt has no use_family()")
        try:
            with use_family(name):
                pass
        except Exception as error:  # noqa: BLE001 - e.g. an unknown family name
            raise pytest.UsageError(f"--family {name}: {error}") from None


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    """torch on THREADS threads for the whole session (fastconvt follows torch's
    count); every kernel compiled (or loaded from cache) before anything is timed."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    fastconvt.warmup()
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def notes(pytestconfig):
    """The session's notes dict (ends up in machine_info["fastconvt_bench"])."""
    return pytestconfig.stash[_NOTES]


@pytest.fixture
def family(pytestconfig):
    """The ``--family`` forced on fastconvt, or None."""
    return pytestconfig.getoption("family")


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return "not initialised"


def _torch_blas():
    """The BLAS torch's matrix products use (its build configuration says)."""
    for line in torch.__config__.show().splitlines():
        if "BLAS_INFO=" in line:
            return line.split("BLAS_INFO=")[1].split(",")[0].strip()
    return "?"


def pytest_benchmark_update_machine_info(config, machine_info):
    try:
        import onnxruntime
        onnx = onnxruntime.__version__
    except Exception as error:  # noqa: BLE001 - any import failure means "not measured"
        onnx = f"unavailable ({type(error).__name__}: {error})"
    machine_info["fastconvt_bench"] = dict(
        cpu_model=cpu_model(),
        threads=THREADS,
        torch=torch.__version__,
        torch_blas=_torch_blas(),
        onednn_product=fastconvt._plans.onednn_available(),
        numba=numba.__version__,
        numpy=numpy.__version__,
        numba_threading_layer=_threading_layer(),
        numba_num_threads=numba.config.NUMBA_NUM_THREADS,
        fastconvt=getattr(fastconvt, "__version__", "?"),
        forced_family=config.getoption("family"),
        onnxruntime=onnx,
        malloc=allocator.setting(),
        **config.stash.get(_NOTES, {}),
    )
