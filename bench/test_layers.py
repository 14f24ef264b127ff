"""pytest-benchmark comparisons of fastconvt against torch, grouped per layer,
pass and dtype. Run through ``python -m bench`` (the README's main command)."""
import pytest
import torch

import fastconvt
from layers import LAYERS

THREADS = 2
DTYPES = {"float32": torch.float32, "float64": torch.float64}
IMPLS = {"torch": torch.nn.ConvTranspose2d, "fastconvt": fastconvt.ConvTranspose2d}


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    """Both libraries on the same number of threads (fastconvt follows torch's)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    fastconvt.warmup()  # compile time is not what is measured here
    yield
    torch.set_num_threads(previous)


def _setup(layer, impl, dtype, requires_grad):
    n, c_in, c_out, h, w, k, s, p, op, groups, d = LAYERS[layer]
    torch.manual_seed(0)
    module = IMPLS[impl](c_in, c_out, k, s, p, op, groups, True, d, dtype=DTYPES[dtype])
    x = torch.randn(n, c_in, h, w, dtype=DTYPES[dtype], requires_grad=requires_grad)
    return module, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", LAYERS)
def test_forward(benchmark, layer, impl, dtype):
    benchmark.group = f"{layer} forward {dtype}"
    benchmark.extra_info.update(layer=layer, impl=impl, dtype=dtype, mode="forward",
                                threads=torch.get_num_threads())
    module, x = _setup(layer, impl, dtype, requires_grad=False)
    with torch.no_grad():
        module(x)  # warm-up
        benchmark(module, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", LAYERS)
def test_forward_backward(benchmark, layer, impl, dtype):
    benchmark.group = f"{layer} forward+backward {dtype}"
    benchmark.extra_info.update(layer=layer, impl=impl, dtype=dtype, mode="forward+backward",
                                threads=torch.get_num_threads())
    module, x = _setup(layer, impl, dtype, requires_grad=True)

    def step():
        module(x).sum().backward()

    step()  # warm-up
    benchmark(step)
