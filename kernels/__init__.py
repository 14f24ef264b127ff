"""fastconvt.kernels: Numba kernels for 2-D transposed convolution on NumPy arrays.

Torch-free. Each family module (``direct``, ``gemm``) exposes the same three entry points,
``conv_transpose2d``, ``conv2d`` (its input adjoint) and ``weight_correlation``
(its weight adjoint), over C-contiguous float32, float64, complex64 or complex128 arrays in NCHW
layout. ``gemm`` computes them as matrix products around the layout kernels of ``columns``
(the column form) and ``subpixel`` (the sub-pixel forms), within the workspace that
``workspace`` plans. ``winograd`` computes the forward and input adjoint of 3x3 stride-1
layers with fewer multiplies (F(2x2, 3x3)). ``nhwc`` computes the three maps on channels-last
(NHWC) arrays. ``borders`` folds and pads the borders of the non-zero padding modes.
Kernels compile lazily on first call (``warmup`` compiles them up front).
"""
from . import _cache, borders, columns, direct, gemm, nhwc, subpixel, winograd, workspace
from ._config import compilations, num_threads, on_threads

for _module in (borders, columns, direct, nhwc, subpixel, winograd):
    _cache.harden(_module)

__all__ = ["borders", "columns", "direct", "gemm", "nhwc", "subpixel", "winograd", "workspace",
           "FAMILIES", "compilations", "num_threads", "on_threads", "warmup"]

# kernel families by name; each exposes conv_transpose2d, conv2d, weight_correlation
FAMILIES = {"direct": direct, "gemm": gemm}


def warmup(dtypes=("float32", "float64")):
    """Compile (or load from Numba's cache) every kernel for ``dtypes``."""
    import numpy as np

    for dtype in dtypes:
        x = np.ones((2, 2, 3, 3), dtype)
        w = np.ones((2, 1, 2, 2), dtype)
        geometry = ((2, 2), (1, 1), (1, 1), 2)
        for family in FAMILIES.values():
            for parallel in (False, True):
                y = family.conv_transpose2d(x, w, np.ones(2, dtype), *geometry, (4, 4),
                                            parallel=parallel)
                family.conv_transpose2d(x, w, None, *geometry, (4, 4), parallel=parallel)
                family.conv2d(y, w, *geometry, (3, 3), parallel=parallel)
                family.weight_correlation(x, y, *geometry, (2, 2), parallel=parallel)
        for parallel in (False, True):
            for by_taps in (False, True):  # both scatters of the column form
                gemm.conv_transpose2d(x, w, None, *geometry, (4, 4), parallel=parallel,
                                      subpixel=False, by_taps=by_taps)
            # the sub-pixel forms (forward, backward), plain and periodic
            w4 = np.ones((2, 1, 4, 4), dtype)
            y = np.ones((2, 2, 6, 6), dtype)
            for periodic in (False, True):
                gemm.conv_transpose2d(x, w4, None, *geometry, (6, 6), parallel=parallel,
                                      subpixel=True, periodic=periodic)
                gemm.conv_transpose2d_backward(x, w4, y, *geometry, parallel=parallel,
                                               subpixel=True, periodic=periodic)
            # Winograd F(2x2, 3x3): a 3x3 stride-1 layer's forward and input adjoint
            w3, one = np.ones((2, 2, 3, 3), dtype), (1, 1)
            y3 = winograd.conv_transpose2d(x, w3, None, one, one, one, 1, (3, 3),
                                           parallel=parallel)
            winograd.conv2d(y3, w3, one, one, one, 1, (3, 3), parallel=parallel)
            # the channels-last column form: its gather and scatter
            if np.dtype(dtype).kind == "f":
                xn, wn = x.transpose(0, 2, 3, 1).copy(), w.transpose(0, 2, 3, 1).copy()
                yn = nhwc.conv_transpose2d(xn, wn, None, *geometry, (4, 4), parallel=parallel)
                nhwc.conv2d(yn, wn, *geometry, (3, 3), parallel=parallel)
            for mode in borders.MODES:
                z = borders.pad_borders(x, (1, 1), mode, parallel=parallel)
                borders.fold_borders(z, np.ones(2, dtype), (1, 1), mode, parallel=parallel)
                borders.fold_borders(z, None, (1, 1), mode, parallel=parallel)
