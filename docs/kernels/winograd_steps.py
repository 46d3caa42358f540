"""Winograd's F(2^3, 3^3) convolution, from the einsum reference to nn3d's kernels, one step at a time.

    python docs/kernels/winograd_steps.py --size 32     # PYTHONPATH=. from a source checkout

The same layer as docs/kernels/conv3d_steps.py (docs/kernels/ladder.py: 3x3x3, stride 1, padding 1,
16 -> 16 channels, float32, channels-last), computed by Winograd's minimal filtering
(nn3d/kernels/winograd/algorithm.py derives it and names everything used here: the 4x4x4 input tile
d, B^T, G, A^T, U, V, M, the 64 positions xi). GFLOP/s is effective: the direct convolution's FLOPs
over the time, so it can beat the machine's peak (Winograd does 64 multiplications per output tile
and channel pair where the direct sum does 216). What the ladder shows: the products are matrix
products and want to be done as such (step 2); the rest is keeping the transformed tiles in cache
and the products in registers (step 3); then larger tiles do fewer multiplications (step 4).

    0 the reference: F(2^3, 3^3) as three einsums over all tiles, in float64 (NumPy)
    1 one tile at a time in plain loops: gather d, B^T along three axes, 64 products per channel
      pair, A^T along three axes (Numba, tiles in parallel)
    2 all tiles at once: the 64 products as 64 (tiles x Cin) @ (Cin x Cout) matrix products (NumPy)
    3 the library's fused, blocked kernel (nn3d.Conv3d's with NN3D_CONV=winograd)
    4 F(4^3, 3^3): the same kernel structure with 6x6x6 input tiles, 2.37x fewer products (the
      library's forward and grad-input from 16^3 on, and on AVX2 its transpose for grad-weight,
      nn3d/kernels/winograd/grad_weight4.py; nn3d/kernels/winograd/algorithm4.py)

Steps 1-4 use every core (Numba's threads, or NumPy's BLAS threads in step 2). Steps 0 and 2 hold
every transformed tile in memory (8x the input, and float64 in step 0), and step 0 is slow (0.1-0.6
GFLOP/s; most of it the einsum of the input transform, 10x its products at 32^3): above 32^3 it runs
on a 32^3 crop, and the other steps' errors are measured where that crop's output is exact (the
table says so).
"""
import sys

import numpy as np
from numba import prange

from ladder import arguments, run
from nn3d.kernels.jit import kernel, parallel_kernel
from nn3d.kernels.winograd.algorithm import A_T, B_T, filter_transform_reference, winograd_forward_reference
from nn3d.kernels.winograd.convolution import winograd_forward
from nn3d.kernels.winograd.convolution4 import winograd4_forward
from nn3d.kernels.winograd.filter_transform import filter_transform
from nn3d.kernels.winograd.filter_transform4 import filter_transform4


def reference(x, weight, bias):
    """Step 0, nn3d/kernels/winograd/algorithm.py's winograd_forward_reference: every 4x4x4 input tile
    gathered from the zero-padded input, then V = B^T along three axes, M = the 64 products with
    U = G along three axes of the filter, y = A^T along three axes, each one np.einsum over all tiles,
    in float64. The yardstick."""
    return winograd_forward_reference(x, weight, bias).astype(np.float32)          # (N, D, H, W, Cout)


def filter_transform_matrices(weight):
    """U as 64 matrices (Cin x Cout), float32: U[xi][ci, co] = (G g G^T along each axis)[xi] for the filter
    g = weight[co, ci]. algorithm.py's filter_transform_reference, (4, 4, 4, Cout, Cin), transposed."""
    cout, cin = weight.shape[:2]
    u = filter_transform_reference(weight).reshape(64, cout, cin)                # (64, Cout, Cin)
    return np.ascontiguousarray(u.transpose(0, 2, 1), dtype=np.float32)          # (64, Cin, Cout)


# ---- step 1 ----------------------------------------------------------------------------------------
@kernel
def along_first_axis(matrix, source, target):
    """target[j, k, a, ch] = sum_i matrix[a, i] source[i, j, k, ch]: the matrix applied along the first
    axis, which moves last among the three. Three such passes apply it along every axis and bring the
    axes back in order: (i, j, k) -> (j, k, a) -> (k, a, b) -> (a, b, c).
    matrix (P, 4), source (4, J, K, C), target (J, K, P, C)."""
    points, taps = matrix.shape
    for j in range(source.shape[1]):
        for k in range(source.shape[2]):
            for a in range(points):
                for ch in range(source.shape[3]):
                    total = np.float32(0)
                    for i in range(taps):
                        total += matrix[a, i] * source[i, j, k, ch]
                    target[j, k, a, ch] = total


@kernel
def row_of_tiles(x, u, bias, b_t, a_t, n, td, th, y):
    """The output tiles (n, td, th, tw) for every tw, one at a time, by F(2^3, 3^3). x (N, D, H, W, Cin)
    unpadded, u (64, Cin, Cout) from `filter_transform_matrices`, bias (Cout,), b_t (4, 4), a_t (2, 4),
    y (N, D, H, W, Cout). A tile at a face reads zeros beyond the volume (the padding) and stores only
    its voxels inside it (odd sizes)."""
    _, size_d, size_h, size_w, cin = x.shape
    cout = y.shape[4]
    d = np.empty((4, 4, 4, cin), x.dtype)                            # the input tile
    d_1, d_2 = np.empty((4, 4, 4, cin), x.dtype), np.empty((4, 4, 4, cin), x.dtype)     # between passes
    v = np.empty((4, 4, 4, cin), x.dtype)                            # V = B^T along each axis of d
    m = np.empty((4, 4, 4, cout), x.dtype)                           # M[xi, co]
    m_1, m_2 = np.empty((4, 4, 2, cout), x.dtype), np.empty((4, 2, 2, cout), x.dtype)
    y_tile = np.empty((2, 2, 2, cout), x.dtype)                      # A^T along each axis of M
    for tw in range((size_w + 1) // 2):
        for i in range(4):                                           # gather d: voxels 2t - 1 .. 2t + 2
            for j in range(4):
                for k in range(4):
                    iz, iy, ix = 2 * td - 1 + i, 2 * th - 1 + j, 2 * tw - 1 + k
                    inside = 0 <= iz < size_d and 0 <= iy < size_h and 0 <= ix < size_w
                    for ci in range(cin):
                        d[i, j, k, ci] = x[n, iz, iy, ix, ci] if inside else 0
        along_first_axis(b_t, d, d_1)                                # V = B^T along each axis of d
        along_first_axis(b_t, d_1, d_2)
        along_first_axis(b_t, d_2, v)
        v_flat, m_flat = v.reshape(64, cin), m.reshape(64, cout)
        for xi in range(64):                                         # the 64 products, M[xi] = V[xi] U[xi]
            for co in range(cout):
                m_flat[xi, co] = 0
            for ci in range(cin):
                for co in range(cout):
                    m_flat[xi, co] += v_flat[xi, ci] * u[xi, ci, co]
        along_first_axis(a_t, m, m_1)                                # y tile = A^T along each axis of M
        along_first_axis(a_t, m_1, m_2)
        along_first_axis(a_t, m_2, y_tile)
        for p in range(2):                                           # store the voxels inside the volume
            for q in range(2):
                for r in range(2):
                    oz, oy, ox = 2 * td + p, 2 * th + q, 2 * tw + r
                    if oz < size_d and oy < size_h and ox < size_w:
                        for co in range(cout):
                            y[n, oz, oy, ox, co] = y_tile[p, q, r, co] + bias[co]


@parallel_kernel
def tile_at_a_time_kernel(x, u, bias, b_t, a_t, y):
    """y = conv(x, weight) + bias by F(2^3, 3^3): the rows of tiles (n, td, th) in parallel, each with
    its own scratch tiles (`row_of_tiles`)."""
    n_batch, size_d, size_h = x.shape[:3]
    tiles_d, tiles_h = (size_d + 1) // 2, (size_h + 1) // 2
    for row in prange(n_batch * tiles_d * tiles_h):
        n, td, th = row // (tiles_d * tiles_h), row // tiles_h % tiles_d, row % tiles_h
        row_of_tiles(x, u, bias, b_t, a_t, n, td, th, y)


def tile_at_a_time(x, weight, bias):
    """Step 1: compiled loops, one tile at a time, straight from the algorithm: 64 multiplications per
    output tile and channel pair instead of the direct sum's 216, no padded copy, no float64, and
    nothing larger than one tile in flight (step 0 holds all tiles, 8x the input, several times over)."""
    y = np.empty((*x.shape[:4], weight.shape[0]), np.float32)                   # (N, D, H, W, Cout)
    tile_at_a_time_kernel(x, filter_transform_matrices(weight), bias, B_T.astype(np.float32),
                          A_T.astype(np.float32), y)
    return y


# ---- step 2 ----------------------------------------------------------------------------------------
def along_axis(matrix, tiles, axis):
    """matrix (P, 4) applied along axis `axis` (0, 1 or 2, of length 4) of `tiles`, as one matrix product
    per index of the axes before it, (P, 4) @ (4, everything after): no transposed copies."""
    before, after = tiles.shape[:axis], tiles.shape[axis + 1:]
    product = matrix @ tiles.reshape(*before, 4, -1)                           # (*before, P, prod(after))
    return product.reshape(*before, matrix.shape[0], *after)


def batched_products(x, weight, bias):
    """Step 2: all tiles at once, so each of the 64 products is one big matrix product, (tiles x Cin) @
    (Cin x Cout), one BLAS call, where step 1 ran 64 short loop nests per tile. The price: every
    transformed tile goes through memory (V and M are 8x the input and output) and the transforms are
    NumPy passes over them: at 32^3 on one thread (CPU time) the products took 4 ms of its 41 ms."""
    n_batch, *size, cin = x.shape
    cout = weight.shape[0]
    tiles = [(s + 1) // 2 for s in size]                                        # tiles_d, tiles_h, tiles_w
    x_pad = np.zeros((n_batch, *(2 * t + 2 for t in tiles), cin), np.float32)  # halo 1, even length
    x_pad[:, 1:size[0] + 1, 1:size[1] + 1, 1:size[2] + 1] = x
    d = np.empty((4, 4, 4, n_batch, *tiles, cin), np.float32)         # (4, 4, 4, N, Td, Th, Tw, Cin)
    for i in range(4):
        for j in range(4):
            for k in range(4):
                d[i, j, k] = x_pad[:, i:i + 2 * tiles[0]:2, j:j + 2 * tiles[1]:2, k:k + 2 * tiles[2]:2]
    b_t = B_T.astype(np.float32)
    v = along_axis(b_t, along_axis(b_t, along_axis(b_t, d, 0), 1), 2)  # V (4, 4, 4, N, Td, Th, Tw, Cin)
    m = v.reshape(64, -1, cin) @ filter_transform_matrices(weight)   # (64, tiles, Cout)
    a_t = A_T.astype(np.float32)
    m = m.reshape(4, 4, 4, n_batch, *tiles, cout)
    y_tiles = along_axis(a_t, along_axis(a_t, along_axis(a_t, m, 0), 1), 2)   # (2, 2, 2, N, Td, Th, Tw, Cout)
    y = y_tiles.transpose(3, 4, 0, 5, 1, 6, 2, 7).reshape(n_batch, *(2 * t for t in tiles), cout)
    return y[:, :size[0], :size[1], :size[2]] + bias                             # (N, D, H, W, Cout)


# ---- step 3 ----------------------------------------------------------------------------------------
def library(x, weight, bias):
    """Step 3, nn3d's winograd_forward as nn3d.Conv3d calls it with NN3D_CONV=winograd (by default
    the layer runs step 4, and on AVX-512 this kernel's transpose for grad-weight), after
    filter_transform (U packed in blocks of 16 output channels): step 2's matrix products without its memory traffic. Blocks of
    8-64 consecutive tiles, one per worker thread at a time: a block's V and M (about 128 KiB) stay in
    L2 from the input transform through the products to the output transform; the transforms run 16
    channels at a time in vector registers, one plane of a tile at a time; the products are register
    tiles (6 or 8 tiles x 16 output channels), like the direct kernel's."""
    u_packed = filter_transform(weight)                                         # (64, Cout/16, Cin, 16)
    return winograd_forward((x,), u_packed, bias, weight.shape[0])              # (N, D, H, W, Cout)


# ---- step 4 ----------------------------------------------------------------------------------------
def larger_tiles(x, weight, bias):
    """Step 4, nn3d's winograd4_forward (after filter_transform4): F(4^3, 3^3), 216 products per 4x4x4
    output tile and channel pair where step 3 does 64 per 2x2x2 tile, so 2.37x fewer products, and
    2.37x less transformed data per output to carry through V and M; the transforms cost about as
    much per output as step 3's. The price is accuracy: B4^T's and A4^T's entries up to 5 and 8 make
    intermediate values larger than the outputs, and the float32 error some 60x step 3's (still far
    inside the tolerance; algorithm4.py, section 4). nn3d runs it for the forward and grad-input of
    the layers of 16^3 and more, in training too, where a 100-epoch run trained to the same loss as
    step 3 (docs/performance.md)."""
    return winograd4_forward((x,), filter_transform4(weight), bias, weight.shape[0])   # (N, D, H, W, Cout)


STEPS = [(reference, 32), (tile_at_a_time, None), (batched_products, None), (library, None), (larger_tiles, None)]

if __name__ == "__main__":
    sys.exit(run("3x3x3 convolution, Winograd F(2^3, 3^3)", STEPS, arguments(__doc__.splitlines()[0])))
