"""The GEMM family's workspace: how much memory one call's buffers may take and how the
batch (and if need be the output channels) is split to keep them there, plus the default
matrix product. Plain Python and NumPy: no kernels."""
import numpy as np

DEFAULT_WORKSPACE_BYTES = 64 << 20

# Batch chunks aim at this many bytes of workspace even where more would fit: the
# column buffer then stays in the last-level cache between the Numba pass and the
# product (measured: 10-40% faster backward for DCGAN-like and FCN layers).
CHUNK_BYTES = 16 << 20

def numpy_gemm(a, b, out, accumulate):
    """``out = a @ b`` or ``out += a @ b`` with NumPy's BLAS."""
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)


def chunking(n_batch, c_in, c_out_g, kernel_hw, in_hw, itemsize, workspace_bytes=None):
    """(images, output channels) per chunk so that ``X_g`` and ``cols`` fit
    ``workspace_bytes``: whole channel groups when one image fits (as many images
    as fit ``CHUNK_BYTES``), else fewer output channels per product (at least one
    image and one channel)."""
    budget = (DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes) // itemsize
    hw, kk = in_hw[0] * in_hw[1], kernel_hw[0] * kernel_hw[1]
    per_image = (c_in + c_out_g * kk) * hw
    if per_image <= budget:
        # (an empty layer has nothing per image: one chunk)
        return max(1, min(n_batch, min(budget, CHUNK_BYTES // itemsize) // max(1, per_image))), \
            c_out_g
    return 1, max(1, min(c_out_g, (budget - c_in * hw) // max(1, kk * hw)))

class _Blocks:
    """The (batch chunk, group, output-channel block) products of one call, with
    the channels-first input and column workspaces they share."""

    def __init__(self, image_shape, groups, c_out_g, kernel_hw, dtype, workspace_bytes):
        self.n_batch, self.c_in, h_in, w_in = image_shape
        self.groups, self.c_out_g, self.kk = groups, c_out_g, kernel_hw[0] * kernel_hw[1]
        self.hw = h_in * w_in
        self.images, self.channels = chunking(self.n_batch, self.c_in, c_out_g, kernel_hw,
                                              (h_in, w_in), np.dtype(dtype).itemsize,
                                              workspace_bytes)
        self._xt = np.empty(self.c_in * self.images * self.hw if self.images > 1 else 0, dtype)
        self._cols = np.empty(self.channels * self.kk * self.images * self.hw, dtype)

    def batches(self):
        """``(n0, nc, xt)``: ``xt`` is a channels-first buffer for ``nc`` images
        (None for a single image, whose own array is already channels first)."""
        for n0 in range(0, self.n_batch, self.images):
            nc = min(self.images, self.n_batch - n0)
            xt = None if nc == 1 else \
                self._xt[:self.c_in * nc * self.hw].reshape(self.c_in, nc * self.hw)
            yield n0, nc, xt

    def products(self, nc):
        """``(g, c0, rows, cols)``: output channels ``c0 .. c0 + rows // kk`` of
        group ``g`` (``rows`` slices the rows of ``W_g.T``) and their column buffer."""
        for g in range(self.groups):
            for c0 in range(0, self.c_out_g, self.channels):
                cb = min(self.channels, self.c_out_g - c0)
                cols = self._cols[:cb * self.kk * nc * self.hw].reshape(cb * self.kk, nc * self.hw)
                yield g, c0, slice(c0 * self.kk, (c0 + cb) * self.kk), cols

def _one_image_fits(nbytes, workspace_bytes):
    """Whether a sub-pixel form's buffers for one image (``nbytes``; they never hold
    less) stay within the workspace budget. Where not, the column form, which also
    splits the output channels, keeps the bound."""
    return nbytes <= (DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes)

def _chunk_images(n_batch, per_image, workspace_bytes):
    """Images per batch chunk of a sub-pixel form (``per_image`` workspace bytes)."""
    budget = min(CHUNK_BYTES, DEFAULT_WORKSPACE_BYTES if workspace_bytes is None
                 else workspace_bytes)
    return max(1, min(n_batch, budget // max(per_image, 1)))
