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


@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", LAYERS)
def test_layer(benchmark, layer, impl, dtype, mode):
    benchmark.group = f"{layer} {mode} {dtype}"
    benchmark.extra_info.update(layer=layer, impl=impl, dtype=dtype, mode=mode,
                                threads=torch.get_num_threads())
    training = mode != "forward"
    module, x = _setup(layer, impl, dtype, requires_grad=training)

    def step():
        if training:
            module(x).sum().backward()
        else:
            with torch.no_grad():
                module(x)

    step()  # warm-up
    benchmark(step)
