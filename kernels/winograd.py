"""Winograd minimal filtering F(2x2, 3x3) (Lavin and Gray, *Fast Algorithms for
Convolutional Neural Networks*, 2016) for 3x3 kernels at stride 1, dilation 1, one
group: 16 multiplies per 2x2 output tile and channel pair instead of 36.

Both the transposed convolution and its input adjoint are then stride-1
correlations ``out[o] = sum_j inp[o - offset + j] * f[j]`` (per axis): the forward
with the flipped kernel and ``offset = 2 - padding``, the adjoint with the kernel
as it is and ``offset = padding``. The work runs with channels innermost, so that
every transform is a vector operation over channels: the input is copied into a
zero-bordered channels-last plane, each 4x4 tile ``d`` becomes ``V = B^T d B``,
each filter ``U = G f G^T``; each of the 16 transformed positions is one product
``M = V @ U`` (through ``gemm``, as in the GEMM family), each output tile is
``A^T M A``, and the result is copied back channels-first with the bias. The batch
runs in chunks that bound the workspace.
"""
import numpy as np
from numba import njit, prange, uint64

from . import gemm as gemm_family
from ._config import JIT, launch
from .direct import _check_layer, _output
from .workspace import CHUNK_BYTES, DEFAULT_WORKSPACE_BYTES, numpy_gemm

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# (G f G^T)[a, b] = sum_kl G[a, k] G[b, l] f[k, l]: one product over flattened filters
_GG = np.kron(_G, _G)


def applies(kernel_hw, stride, dilation, groups):
    """Whether F(2x2, 3x3) computes this layer's transposed convolution and input adjoint."""
    return (tuple(kernel_hw) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1)


@njit(**JIT)
def _to_plane_jobs(inp, n0, plane, offset_h, offset_w, job_lo, job_hi):
    """``plane[i, r + offset_h, q + offset_w, c] = inp[n0 + i, c, r, q]`` where that
    lands inside the plane (whose border is zero); one job per (image, row)."""
    c_in, h_in, w_in = inp.shape[1], inp.shape[2], inp.shape[3]
    q_lo, q_hi = max(0, -offset_w), min(w_in, plane.shape[2] - offset_w)
    for job in range(job_lo, job_hi):
        i, r = job // h_in, job % h_in
        if not 0 <= r + offset_h < plane.shape[1]:
            continue
        row = plane[i, r + offset_h]
        for q in range(q_lo, q_hi):
            for c in range(c_in):
                row[q + offset_w, c] = inp[n0 + i, c, r, q]


@njit(parallel=True, **JIT)
def _to_plane_parallel(inp, n0, plane, offset_h, offset_w, n_chunks):
    n_jobs = plane.shape[0] * inp.shape[2]
    for t in prange(n_chunks):
        _to_plane_jobs(inp, n0, plane, offset_h, offset_w, t * n_jobs // n_chunks,
                       (t + 1) * n_jobs // n_chunks)


# row a of B^T d is d[a1] + sign * d[a2], for (a1, a2, sign) = _B_ROWS[a]
_B_ROWS = np.array([[0, 2, -1], [1, 2, 1], [2, 1, -1], [1, 3, -1]], np.int64)


@njit(**JIT)
def _input_tiles_jobs(plane, v, tiles_h, tiles_w, job_lo, job_hi):
    """``v[4 a + b, i * T + th * tiles_w + tw, :] = (B^T d B)[a, b]`` for the tile
    ``d = plane[i, 2 th + [0, 4), 2 tw + [0, 4), :]``; one job per (image, tile row).
    Each of the 16 results is one loop over channels with four reads and one write
    (a loop LLVM vectorises; with all 16 in one loop it cannot rule out aliasing)."""
    c_in = plane.shape[3]
    for job in range(job_lo, job_hi):
        i, th = job // tiles_h, job % tiles_h
        for tw in range(tiles_w):
            t = (i * tiles_h + th) * tiles_w + tw
            for a in range(4):
                r1, r2 = 2 * th + _B_ROWS[a, 0], 2 * th + _B_ROWS[a, 1]
                sa = plane.dtype.type(_B_ROWS[a, 2])
                for b in range(4):
                    q1, q2 = 2 * tw + _B_ROWS[b, 0], 2 * tw + _B_ROWS[b, 1]
                    sb = plane.dtype.type(_B_ROWS[b, 2])
                    p11, p12 = plane[i, r1, q1], plane[i, r1, q2]
                    p21, p22 = plane[i, r2, q1], plane[i, r2, q2]
                    out = v[4 * a + b, t]
                    for c in range(uint64(c_in)):  # unsigned: no wraparound checks
                        out[c] = p11[c] + sb * p12[c] + sa * (p21[c] + sb * p22[c])


@njit(parallel=True, **JIT)
def _input_tiles_parallel(plane, v, tiles_h, tiles_w, n_chunks):
    n_jobs = plane.shape[0] * tiles_h
    for t in prange(n_chunks):
        _input_tiles_jobs(plane, v, tiles_h, tiles_w, t * n_jobs // n_chunks,
                          (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _output_tiles_jobs(m, tiles, tiles_h, tiles_w, job_lo, job_hi):
    """``tiles[i, 2 th + [0, 2), 2 tw + [0, 2), :] = A^T M A`` with
    ``M[a, b] = m[4 a + b, i * T + th * tiles_w + tw, :]``; one job per (image, tile row)."""
    c_out = m.shape[2]
    for job in range(job_lo, job_hi):
        i, th = job // tiles_h, job % tiles_h
        for tw in range(tiles_w):
            t = (i * tiles_h + th) * tiles_w + tw
            out = tiles[i, 2 * th:2 * th + 2, 2 * tw:2 * tw + 2]
            for c in range(uint64(c_out)):
                s0 = m[0, t, c] + m[4, t, c] + m[8, t, c]
                s1 = m[1, t, c] + m[5, t, c] + m[9, t, c]
                s2 = m[2, t, c] + m[6, t, c] + m[10, t, c]
                s3 = m[3, t, c] + m[7, t, c] + m[11, t, c]
                d0 = m[4, t, c] - m[8, t, c] - m[12, t, c]
                d1 = m[5, t, c] - m[9, t, c] - m[13, t, c]
                d2 = m[6, t, c] - m[10, t, c] - m[14, t, c]
                d3 = m[7, t, c] - m[11, t, c] - m[15, t, c]
                out[0, 0, c] = s0 + s1 + s2
                out[0, 1, c] = s1 - s2 - s3
                out[1, 0, c] = d0 + d1 + d2
                out[1, 1, c] = d1 - d2 - d3


@njit(parallel=True, **JIT)
def _output_tiles_parallel(m, tiles, tiles_h, tiles_w, n_chunks):
    n_jobs = tiles.shape[0] * tiles_h
    for t in prange(n_chunks):
        _output_tiles_jobs(m, tiles, tiles_h, tiles_w, t * n_jobs // n_chunks,
                           (t + 1) * n_jobs // n_chunks)


@njit(**JIT)
def _from_tiles_jobs(tiles, bias, out, n0, job_lo, job_hi):
    """``out[n0 + i, c, r, q] = tiles[i, r, q, c] + bias[c]``; one job per (image, channel)."""
    c_out, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    for job in range(job_lo, job_hi):
        i, c = job // c_out, job % c_out
        b = bias[c]
        for r in range(h_out):
            for q in range(w_out):
                out[n0 + i, c, r, q] = tiles[i, r, q, c] + b


@njit(parallel=True, **JIT)
def _from_tiles_parallel(tiles, bias, out, n0, n_chunks):
    n_jobs = tiles.shape[0] * out.shape[1]
    for t in prange(n_chunks):
        _from_tiles_jobs(tiles, bias, out, n0, t * n_jobs // n_chunks,
                         (t + 1) * n_jobs // n_chunks)


def _image_bytes(out_hw, c_in, c_out, itemsize):
    """The bytes of one image's buffers: its transforms V and M, its padded plane and its
    output tiles."""
    tiles = -(-out_hw[0] // 2) * -(-out_hw[1] // 2)
    plane = (2 * -(-out_hw[0] // 2) + 2) * (2 * -(-out_hw[1] // 2) + 2)
    return (16 * (c_in + c_out) * tiles + plane * c_in + 4 * tiles * c_out) * itemsize


def fits(out_hw, c_in, c_out, itemsize, workspace_bytes=None):
    """Whether one image's buffers (the form never holds less), with the transformed
    filters, stay within the workspace bound: the planner offers the form only there."""
    budget = DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes
    return _image_bytes(out_hw, c_in, c_out, itemsize) + 16 * c_in * c_out * itemsize <= budget


def _filters(f, dtype, gemm):
    """``U[4 a + b, i, o] = (G f[o, i] G^T)[a, b]`` for ``f`` of shape (O, I, 3, 3), by
    ``gemm`` (NumPy's product would start a third thread pool beside Numba's and torch's)."""
    u = np.empty((16, f.shape[0] * f.shape[1]), dtype)
    gemm(_GG.astype(dtype), np.ascontiguousarray(f.reshape(-1, 9).T, dtype=dtype), u, False)
    return np.ascontiguousarray(u.reshape(16, f.shape[0], f.shape[1]).transpose(0, 2, 1))


def _correlate(inp, filters, bias, offset, out, parallel, gemm):
    """``out[n, o] = sum_i corr(inp[n, i] shifted by -offset, filters[o, i]) + bias[o]``."""
    n_batch, c_in = inp.shape[:2]
    c_out, (h_out, w_out) = out.shape[1], out.shape[2:]
    tiles_h, tiles_w = -(-h_out // 2), -(-w_out // 2)
    per_image = tiles_h * tiles_w
    u = _filters(filters, inp.dtype, gemm)
    bias = np.zeros(c_out, inp.dtype) if bias.shape[0] == 0 else bias
    plane_hw = (2 * tiles_h + 2, 2 * tiles_w + 2)
    per_image_bytes = _image_bytes((h_out, w_out), c_in, c_out, inp.itemsize)
    images = max(1, min(n_batch, CHUNK_BYTES // per_image_bytes))
    plane = np.zeros((images,) + plane_hw + (c_in,), inp.dtype)
    tiles = np.empty((images, 2 * tiles_h, 2 * tiles_w, c_out), inp.dtype)
    v_buffer = np.empty(16 * c_in * images * per_image, inp.dtype)
    m_buffer = np.empty(16 * c_out * images * per_image, inp.dtype)
    for n0 in range(0, n_batch, images):
        nc = min(images, n_batch - n0)
        v = v_buffer[:16 * nc * per_image * c_in].reshape(16, nc * per_image, c_in)
        m = m_buffer[:16 * nc * per_image * c_out].reshape(16, nc * per_image, c_out)
        launch(_to_plane_jobs, _to_plane_parallel, (inp, n0, plane[:nc], offset[0], offset[1]),
               nc * inp.shape[2], nc * c_in * inp.shape[2] * inp.shape[3], parallel)
        launch(_input_tiles_jobs, _input_tiles_parallel, (plane[:nc], v, tiles_h, tiles_w),
               nc * tiles_h, v.size, parallel)
        for k in range(16):
            gemm(v[k], u[k], m[k], False)
        launch(_output_tiles_jobs, _output_tiles_parallel, (m, tiles[:nc], tiles_h, tiles_w),
               nc * tiles_h, m.size, parallel)
        launch(_from_tiles_jobs, _from_tiles_parallel, (tiles[:nc], bias, out, n0),
               nc * c_out, out[n0:n0 + nc].size, parallel)
    return out


def _require(name, w_shape, geometry):
    stride, _, dilation, groups = geometry
    if not applies(w_shape[2:], stride, dilation, groups):
        raise ValueError(f"{name}: Winograd F(2x2, 3x3) needs a 3x3 kernel, stride 1, "
                         f"dilation 1 and one group; got kernel {tuple(w_shape[2:])}, stride "
                         f"{stride}, dilation {dilation}, groups {groups}")


def conv_transpose2d(x, w, bias, stride, padding, dilation, groups, out_hw, out=None,
                     parallel=None, gemm=numpy_gemm):
    """The transposed convolution; arguments and result of
    :func:`fastconvt.kernels.direct.conv_transpose2d`, for a layer where :func:`applies`."""
    bias = np.empty(0, x.dtype) if bias is None else bias
    geometry = (stride, padding, dilation, groups)
    _check_layer("conv_transpose2d", geometry, out_hw, x=x, w=w, bias=bias)
    _require("conv_transpose2d", w.shape, geometry)
    y = _output("conv_transpose2d", out, (x.shape[0], w.shape[1]) + tuple(out_hw), x.dtype)
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    _correlate(x, flipped, bias, (2 - padding[0], 2 - padding[1]), y, parallel, gemm)
    if not np.isfinite(y).all():
        # the transforms add and subtract: an Inf meets its negative (NaN) where the
        # plain sum keeps it; the GEMM family gives torch's pattern
        gemm_family.conv_transpose2d(x, w, bias, stride, padding, dilation, groups, out_hw,
                                     y, parallel, gemm, subpixel=False)
    return y


def conv2d(y, w, stride, padding, dilation, groups, in_hw, out=None, parallel=None,
           gemm=numpy_gemm):
    """The input adjoint; arguments and result of :func:`fastconvt.kernels.direct.conv2d`,
    for a layer where :func:`applies`."""
    geometry = (stride, padding, dilation, groups)
    _check_layer("conv2d", geometry, in_hw, w=w, y=y)
    _require("conv2d", w.shape, geometry)
    x = _output("conv2d", out, (y.shape[0], w.shape[0]) + tuple(in_hw), y.dtype)
    _correlate(y, w, np.empty(0, y.dtype), tuple(padding), x, parallel, gemm)
    if not np.isfinite(x).all():
        gemm_family.conv2d(y, w, stride, padding, dilation, groups, in_hw, x, parallel, gemm,
                           subpixel=False)
    return x
