"""fastconvt.kernels: Numba kernels for 2-D transposed convolution on NumPy arrays.

Torch-free. Each family module (``direct``) exposes the same three entry points,
``conv_transpose2d``, ``conv2d`` (its input adjoint) and ``weight_correlation``
(its weight adjoint), over C-contiguous float32/float64 arrays in NCHW layout.
Kernels compile lazily on first call (``warmup`` compiles them up front).
"""
from . import direct
from ._config import num_threads

__all__ = ["direct", "num_threads", "warmup"]


def warmup(dtypes=("float32", "float64")):
    """Compile (or load from Numba's cache) every kernel for ``dtypes``."""
    import numpy as np

    for dtype in dtypes:
        x = np.ones((1, 2, 3, 3), dtype)
        w = np.ones((2, 1, 2, 2), dtype)
        geometry = ((2, 2), (1, 1), (1, 1), 2)
        for parallel in (False, True):
            y = direct.conv_transpose2d(x, w, np.ones(2, dtype), *geometry, (4, 4),
                                        parallel=parallel)
            direct.conv_transpose2d(x, w, None, *geometry, (4, 4), parallel=parallel)
            direct.conv2d(y, w, *geometry, (3, 3), parallel=parallel)
            direct.weight_correlation(x, y, *geometry, (2, 2), parallel=parallel)
