"""Winograd's minimal filtering F(2^3, 3^3): a 3x3x3, stride-1, padding-1 convolution with 3.4x fewer
multiplications than the direct sum (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016). The direct kernels (nn3d/kernels/conv3d.py) already run near this machine's FMA
peak, so the only way to be much faster is to do less arithmetic.

1. F(2, 3) in one dimension: two outputs of a 3-tap filter from 4 inputs, with 4 multiplications.
   The correlation we need (nn3d/conv3d.py (1), one axis, one channel pair):

       y0 = d0 g0 + d1 g1 + d2 g2          y1 = d1 g0 + d2 g1 + d3 g2          (6 multiplications)

   Start from the *linear convolution* of h = (h0, h1) with g = (g0, g1, g2): the coefficients of the
   product polynomial s(x) = h(x) g(x), s_k = sum_{i+j=k} h_i g_j (degree 3, 4 coefficients). A
   polynomial of degree 3 is fixed by 4 values; take them at the points 0, 1, -1 and "infinity" (the
   leading coefficient), each value costing one multiplication:

       m0 = h(0) g(0)   = h0 g0                      m1 = h(1) g(1)   = (h0 + h1)(g0 + g1 + g2)
       m2 = h(-1) g(-1) = (h0 - h1)(g0 - g1 + g2)    m3 = h(inf) g(inf) = h1 g2

   Interpolation recovers s: s0 = m0, s3 = m3, s(1) = s0+s1+s2+s3 = m1, s(-1) = s0-s1+s2-s3 = m2, so
   s1 = (m1 - m2)/2 - m3 and s2 = (m1 + m2)/2 - m0. Move the halves into the filter side and write it
   as matrices: s = C [(A h) * (G g)] with * element-wise,

       A = [[1, 0], [1, 1], [1, -1], [0, 1]]        (h evaluated at 0, 1, -1, inf)
       G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]    (g at the same points, halved)
       C = [[1, 0, 0, 0], [0, 1, -1, -1], [-1, 1, 1, 0], [0, 0, 0, 1]]   (interpolation)

   The correlation is the transpose of this convolution: for any d,
   sum_k d_k s_k = sum_{i,j} d_{i+j} h_i g_j = sum_i h_i y_i, so y_i is the coefficient of h_i in
   d . s = (C^T d) . ((A h) * (G g)) = sum_xi (C^T d)_xi (A h)_xi (G g)_xi, i.e.

       y = A^T [(G g) * (B^T d)]     with  B^T = C^T = [[1, 0, -1, 0],    A^T = [[1, 1, 1, 0],
                                                        [0, 1,  1, 0],           [0, 1, -1, 1]]
                                                        [0, -1, 1, 0],
                                                        [0, -1, 0, 1]]
   (Lavin & Gray print the last row of B^T and the last column of A^T with the opposite sign: the
   same algorithm, the point at infinity scaled by -1.) The test checks it against the direct sum.

2. Three dimensions. The 3-D correlation of a 4x4x4 input tile d with a 3x3x3 filter g (2x2x2
   outputs) is the 1-D one along each axis in turn: y[p, q, r] = sum_{i,j,k} d[p+i, q+j, r+k] g[i, j, k]
   is, for fixed (j, k), a 1-D correlation along z, and the 1-D identity holds for every (j, k) and
   every (q, r); applying it along z, then y, then x turns each matrix into its tensor product:

       U[a, b, c]   = sum_{i,j,k} G[a, i] G[b, j] G[c, k] g[i, j, k]              (4, 4, 4)  filter transform
       V[a, b, c]   = sum_{i,j,k} B^T[a, i] B^T[b, j] B^T[c, k] d[i, j, k]        (4, 4, 4)  input transform
       M[a, b, c]   = U[a, b, c] * V[a, b, c]                                     64 multiplications
       y[p, q, r]   = sum_{a,b,c} A^T[p, a] A^T[q, b] A^T[r, c] M[a, b, c]        (2, 2, 2)  output transform

   With channels, the 64 products become 64 independent matrix products, one per transformed
   position xi = (a, b, c): M[xi][t, co] = sum_ci V[xi][t, ci] U[xi][ci, co] over all tiles t.

3. The count. Per 2x2x2 output tile and (ci, co) pair: 4^3 = 64 multiplications against
   2^3 * 3^3 = 216 direct, 3.375x fewer. The transforms are additions only (entries 0, +-1, and the
   1/2 of G, exact in binary), and they are shared: V once per (tile, ci) for all Cout, the output
   transform once per (tile, co) for all Cin, U once per call. B^T along one axis is 4 additions per
   4 values, so V costs 3 * 16 * 4 = 192 additions per tile and ci against 64 * Cout multiply-adds
   in the products; the fast kernel does them 16 channels at a time in vector registers.

4. Where the float32 error comes from. Each V entry sums up to 2^3 = 8 inputs with signs, each U
   entry up to 27 weights (scaled by 1/8), each y entry up to 3^3 = 27 products M. The products are
   of larger magnitude than the outputs they make, and A^T subtracts them (m1 - m2 - ...), so their
   rounding errors (relative to |M|, not to |y|) survive the cancellation. Against that, the long sum
   is shorter: each product M[xi] sums over Cin only, where the direct kernel runs one float32 chain
   over all Cin * 27 terms. Measured (python -m benchmarks.winograd_accuracy, U-Net layers at 64^3,
   max error relative to the output's scale vs float64): Winograd 2e-7 .. 7e-7, the direct kernels
   7e-7 .. 2.6e-6, so here Winograd is the more accurate of the two (tests/test_winograd.py bounds
   it). F(2, 3) is the most accurate Winograd variant: its points 0, +-1 keep every coefficient 0,
   +-1 or 1/2; larger tiles (F(4, 3): points +-2, +-1/2) lose far more.

Layout of the fast kernel (`winograd_kernel`): channels-last x (N, D, H, W, Cin) without a halo
(tiles inside the volume are read from x directly, tiles at its faces are first copied with their
zeros into a small buffer, so no padded copy of x is made), output tiles of 2x2x2 voxels numbered
t = ((n * tiles_d + td) * tiles_h + th) * tiles_w + tw. Work comes in blocks of `tiles_per_block`
consecutive tiles; one worker thread owns a block and its output voxels (deterministic, no
reductions between threads) and keeps V (64, rows, Cin) and M (64, Cout/16, rows, 16) of that block
in buffers sized for L2: the transformed tiles, 8x the size of the output, never travel through main
memory. Per block: input transform, 64 register-blocked matrix products (rows of tiles x 16 output
channels in local variables, like the direct kernel's voxels), output transform with the bias,
written to y. The input may be two arrays (a decoder's up-sampled tensor and its skip connection),
read in place as if concatenated along the channels; the output may be two arrays likewise (the
gradients of those two inputs).

The filter transform U is computed once per training step: forward computes it from the weights
(`filter_transform`) and keeps it for backward, where grad-input's kernel, the flipped and
in/out-swapped weights, has the transform U with its channels swapped and its points 0 and infinity
exchanged along each axis (`flipped_transposed_transform`).
"""
import numba
import numpy as np
from numba import prange

from ..core import arena
from .conv3d import BLOCK_C, BLOCK_W, fma16, load16
from .jit import blocked_kernel, inlined_tile_helper, parallel_kernel, tile_helper
from .padding import pad_and_concatenate

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], dtype=np.float64)   # (4, 4)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)        # (4, 3)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, 1]], dtype=np.float64)                                  # (2, 4)
G_KRON = np.kron(np.kron(G, G), G)                                  # (64, 27): G along three axes at once


def filter_transform_reference(weight):
    """U[a, b, c, co, ci] = sum_{i,j,k} G[a, i] G[b, j] G[c, k] weight[co, ci, i, j, k] plainly, in
    float64: G along kz, ky and kx at once, as one (64, 27) @ (27, Cout*Cin) product with the
    Kronecker product G (x) G (x) G, whose row a*16 + b*4 + c, column i*9 + j*3 + k is
    G[a,i] G[b,j] G[c,k]. weight (Cout, Cin, 3, 3, 3) -> U (4, 4, 4, Cout, Cin). The kernels use
    `filter_transform`, tested against this."""
    cout, cin = weight.shape[:2]
    u = G_KRON @ weight.reshape(cout * cin, 27).astype(np.float64).T       # (64, Cout*Cin)
    return u.reshape(4, 4, 4, cout, cin)


POINTS_FLIPPED = [3, 1, 2, 0]   # G applied to (g2, g1, g0): the points 0 and infinity trade places
POSITIONS_FLIPPED = np.array([(POINTS_FLIPPED[a] * 4 + POINTS_FLIPPED[b]) * 4 + POINTS_FLIPPED[c]   # xi -> xi'
                              for a in range(4) for b in range(4) for c in range(4)])


def flipped_transposed_transform_reference(u):
    """The filter transform of grad-input's kernel (nn3d/conv3d.py (3): the weight flipped along
    every axis, in/out channels swapped), from the forward's U instead of from the weights: G applied
    to the flipped filter (g2, g1, g0) gives (g2, (g0+g1+g2)/2, (g0-g1+g2)/2, g0), which is
    ((G g)[3], (G g)[1], (G g)[2], (G g)[0]); so per axis U'[a] = U[POINTS_FLIPPED[a]], and the
    channel matrices are transposed. U (4, 4, 4, Cout, Cin) -> U' (4, 4, 4, Cin, Cout), plainly
    (`flipped_transposed_transform` is the kernels' version, on the packed layout)."""
    cout, cin = u.shape[3:]
    return u.reshape(TILE_VALUES, cout, cin)[POSITIONS_FLIPPED].transpose(0, 2, 1).reshape(4, 4, 4, cin, cout)


def winograd_forward_reference(x, weight, bias):
    """F(2^3, 3^3) plainly, in float64: x (N, D, H, W, Cin) channels-last, unpadded; weight
    (Cout, Cin, 3, 3, 3); bias (Cout,) or None -> y (N, D, H, W, Cout), the stride-1, padding-1
    convolution (1) of nn3d/conv3d.py. Odd sizes: the last tile is partial (zeros beyond the halo,
    outputs beyond the volume dropped)."""
    n_batch, *size, cin = x.shape
    cout = weight.shape[0]
    tiles = [(s + 1) // 2 for s in size]                                    # tiles_d, tiles_h, tiles_w
    x_pad = np.zeros((n_batch, *(2 * t + 2 for t in tiles), cin))          # halo 1, rounded up to even
    x_pad[:, 1:size[0] + 1, 1:size[1] + 1, 1:size[2] + 1] = x
    tiles_d, tiles_h, tiles_w = tiles
    d = np.empty((n_batch, tiles_d, tiles_h, tiles_w, 4, 4, 4, cin))      # input tiles, overlapping by 2
    for i in range(4):
        for j in range(4):
            for k in range(4):
                d[:, :, :, :, i, j, k] = x_pad[:, i:i + 2 * tiles_d:2, j:j + 2 * tiles_h:2,
                                               k:k + 2 * tiles_w:2]
    v = np.einsum("ai,bj,ck,ntuvijkx->ntuvabcx", B_T, B_T, B_T, d, optimize=True)   # (..., 4, 4, 4, Cin)
    m = np.einsum("ntuvabcx,abcox->ntuvabco", v, filter_transform_reference(weight), optimize=True)
    y_tiles = np.einsum("pa,qb,rc,ntuvabco->ntpuqvro", A_T, A_T, A_T, m, optimize=True)
    y = y_tiles.reshape(n_batch, 2 * tiles_d, 2 * tiles_h, 2 * tiles_w, cout)[:, :size[0], :size[1], :size[2]]
    return y + (0 if bias is None else bias)


# ---- the fast kernel ----------------------------------------------------------------------------
U = tuple(np.uint64(q) for q in range(BLOCK_C))   # unsigned constants 0..15
TILE_VALUES = 64       # 4 x 4 x 4 transformed positions xi = (a*4 + b)*4 + c


# The filter transform runs once per layer and step, and again for grad-input's flipped kernel:
# parallel kernels writing the packed layout directly (one-thread NumPy took 0.6-1.3 ms for the
# U-Net's 64- and 128-channel layers, 20-30 % of their 16^3 and 8^3 passes on two threads).
@tile_helper
def filter_points(g0, g1, g2):
    """(G g) along one axis: a 3-tap filter at the points 0, 1, -1, infinity, halved at +-1 (section 1)."""
    return g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2


@parallel_kernel
def filter_transform_kernel(weight, n_workers, u_packed):
    """u_packed[xi, cb, ci, c] = U[xi, 16cb + c, ci], with xi = (a*4 + b)*4 + c' and U =
    filter_transform_reference(weight), computed in float64 (exact but for the final rounding) and
    stored in u_packed's dtype; zeros for the padding output channels. Work items (cb, ci), dealt to
    n_workers workers with their own float64 scratch, 16 output channels side by side in each: G
    along kx (along_x[i, j, cx, c], cx the point c'), then ky (along_y[i, b, cx, c]), then kz
    (section 2: the order does not matter)."""
    cout, cin = weight.shape[:2]
    n_cblocks = u_packed.shape[1]
    for worker in prange(n_workers):
        along_x = np.empty((3, 3, 4, BLOCK_C))
        along_y = np.empty((3, 4, 4, BLOCK_C))
        for item in range(worker, n_cblocks * cin, n_workers):
            cb, ci = item // cin, item % cin
            channels = min(BLOCK_C, cout - cb * BLOCK_C)
            along_x[:, :, :, channels:] = 0                             # the padding channels
            for c in range(channels):
                co = cb * BLOCK_C + c
                for i in range(3):
                    for j in range(3):
                        along_x[i, j, 0, c], along_x[i, j, 1, c], along_x[i, j, 2, c], along_x[i, j, 3, c] = \
                            filter_points(np.float64(weight[co, ci, i, j, 0]), np.float64(weight[co, ci, i, j, 1]),
                                          np.float64(weight[co, ci, i, j, 2]))
            for i in range(3):
                for cx in range(4):
                    for c in range(BLOCK_C):
                        along_y[i, 0, cx, c], along_y[i, 1, cx, c], along_y[i, 2, cx, c], along_y[i, 3, cx, c] = \
                            filter_points(along_x[i, 0, cx, c], along_x[i, 1, cx, c], along_x[i, 2, cx, c])
            for b in range(4):
                for cx in range(4):
                    for c in range(BLOCK_C):
                        u0, u1, u2, u3 = filter_points(along_y[0, b, cx, c], along_y[1, b, cx, c],
                                                       along_y[2, b, cx, c])
                        u_packed[b * 4 + cx, cb, ci, c] = u0
                        u_packed[16 + b * 4 + cx, cb, ci, c] = u1
                        u_packed[32 + b * 4 + cx, cb, ci, c] = u2
                        u_packed[48 + b * 4 + cx, cb, ci, c] = u3


def filter_transform(weight):
    """Winograd's filter transform U = G g G^T along each axis (`filter_transform_reference`), packed
    for the kernels: weight (Cout, Cin, 3, 3, 3) -> u_packed (64, Cout_padded/16, Cin, 16) in the
    weight's dtype, u_packed[xi, cb, ci, c] = U[xi, 16cb + c, ci] (zeros for the padding channels):
    the 16 output channels one product step needs are adjacent."""
    cout, cin = weight.shape[:2]
    u_packed = np.empty((TILE_VALUES, -(-cout // BLOCK_C), cin, BLOCK_C), weight.dtype)
    filter_transform_kernel(weight, np.int64(numba.get_num_threads()), u_packed)
    return u_packed


@parallel_kernel
def flipped_transposed_kernel(u_packed, positions_flipped, u_flipped):
    """u_flipped[xi, cb, co, c] = u_packed[positions_flipped[xi], co // 16, 16cb + c, co % 16], zeros
    past Cin: one gather. Work items (xi, cb)."""
    cin = u_packed.shape[2]
    n_cblocks, cout = u_flipped.shape[1:3]
    for item in prange(TILE_VALUES * n_cblocks):
        xi, cb = item // n_cblocks, item % n_cblocks
        source = positions_flipped[xi]
        for co in range(cout):
            for c in range(BLOCK_C):
                ci = cb * BLOCK_C + c
                u_flipped[xi, cb, co, c] = u_packed[source, co // BLOCK_C, ci, co % BLOCK_C] if ci < cin else 0


def flipped_transposed_transform(u_packed, cout):
    """The packed filter transform of grad-input's kernel from the forward's (`filter_transform`;
    the derivation is at `flipped_transposed_transform_reference`): u_packed (64, Cout_padded/16,
    Cin, 16) of a layer with Cout output channels -> (64, Cin_padded/16, Cout, 16), U' = U with the
    points 0 and infinity exchanged along each axis and the channel matrices transposed."""
    cin = u_packed.shape[2]
    u_flipped = np.empty((TILE_VALUES, -(-cin // BLOCK_C), cout, BLOCK_C), u_packed.dtype)
    flipped_transposed_kernel(u_packed, POSITIONS_FLIPPED, u_flipped)
    return u_flipped


@tile_helper
def load16_at(flat, at):
    """flat[at:at + 16] as a 16-tuple; `at` unsigned and every offset an unsigned constant (at + 1
    with a plain int literal would be signed, with negative-index checks that stop vectorisation)."""
    return (flat[at], flat[at + U[1]], flat[at + U[2]], flat[at + U[3]], flat[at + U[4]], flat[at + U[5]],
            flat[at + U[6]], flat[at + U[7]], flat[at + U[8]], flat[at + U[9]], flat[at + U[10]],
            flat[at + U[11]], flat[at + U[12]], flat[at + U[13]], flat[at + U[14]], flat[at + U[15]])


@tile_helper
def store16_at(flat, at, v):
    """flat[at:at + 16] = the 16-tuple v (one vector store; `at` unsigned, offsets unsigned constants)."""
    flat[at], flat[at + U[1]], flat[at + U[2]], flat[at + U[3]] = v[0], v[1], v[2], v[3]
    flat[at + U[4]], flat[at + U[5]], flat[at + U[6]], flat[at + U[7]] = v[4], v[5], v[6], v[7]
    flat[at + U[8]], flat[at + U[9]], flat[at + U[10]], flat[at + U[11]] = v[8], v[9], v[10], v[11]
    flat[at + U[12]], flat[at + U[13]], flat[at + U[14]], flat[at + U[15]] = v[12], v[13], v[14], v[15]


@tile_helper
def add16(u, v):
    return (u[0] + v[0], u[1] + v[1], u[2] + v[2], u[3] + v[3], u[4] + v[4], u[5] + v[5], u[6] + v[6],
            u[7] + v[7], u[8] + v[8], u[9] + v[9], u[10] + v[10], u[11] + v[11], u[12] + v[12],
            u[13] + v[13], u[14] + v[14], u[15] + v[15])


@tile_helper
def sub16(u, v):
    return (u[0] - v[0], u[1] - v[1], u[2] - v[2], u[3] - v[3], u[4] - v[4], u[5] - v[5], u[6] - v[6],
            u[7] - v[7], u[8] - v[8], u[9] - v[9], u[10] - v[10], u[11] - v[11], u[12] - v[12],
            u[13] - v[13], u[14] - v[14], u[15] - v[15])


@tile_helper
def relu16(v):
    """max(0, v) element-wise on a 16-tuple; a NaN stays NaN (as ReLU)."""
    return (0 if v[0] <= 0 else v[0], 0 if v[1] <= 0 else v[1], 0 if v[2] <= 0 else v[2],
            0 if v[3] <= 0 else v[3], 0 if v[4] <= 0 else v[4], 0 if v[5] <= 0 else v[5],
            0 if v[6] <= 0 else v[6], 0 if v[7] <= 0 else v[7], 0 if v[8] <= 0 else v[8],
            0 if v[9] <= 0 else v[9], 0 if v[10] <= 0 else v[10], 0 if v[11] <= 0 else v[11],
            0 if v[12] <= 0 else v[12], 0 if v[13] <= 0 else v[13], 0 if v[14] <= 0 else v[14],
            0 if v[15] <= 0 else v[15])


@tile_helper
def store4x16_at(flat, at, step, vectors):
    """flat[at + c*step : ... + 16] = vectors[c] for c = 0..3: four 16-channel vectors, `step` apart."""
    store16_at(flat, at, vectors[0])
    store16_at(flat, at + step, vectors[1])
    store16_at(flat, at + U[2] * step, vectors[2])
    store16_at(flat, at + U[3] * step, vectors[3])


@tile_helper
def input_transform_1d(d0, d1, d2, d3):
    """B^T (d0, d1, d2, d3) = (d0 - d2, d1 + d2, d2 - d1, d3 - d1), on 16-channel vectors."""
    return sub16(d0, d2), add16(d1, d2), sub16(d2, d1), sub16(d3, d1)


@tile_helper
def output_transform_1d(m0, m1, m2, m3):
    """A^T (m0, m1, m2, m3) = (m0 + m1 + m2, m1 - m2 + m3), on 16-channel vectors."""
    return add16(add16(m0, m1), m2), add16(sub16(m1, m2), m3)


@inlined_tile_helper
def tile_position(tile, tiles_d, tiles_h, tiles_w):
    """Tile number t = ((n * tiles_d + td) * tiles_h + th) * tiles_w + tw -> (n, td, th, tw)."""
    return (tile // (tiles_w * tiles_h * tiles_d), tile // (tiles_w * tiles_h) % tiles_d,
            tile // tiles_w % tiles_h, tile % tiles_w)


# The transforms of one tile and 16 channels. The helper a block's loop calls per tile (`input_tile`,
# `output_tile_plane`) is an `inlined_tile_helper`; the helpers it calls are plain `tile_helper`s,
# which LLVM inlines into it (nn3d/kernels/jit.py says why no deeper). A whole 4x4x4 tile of
# 16-channel vectors does not fit in the 32 vector registers, one plane of it does: each plane of the
# transformed tile is B^T along z for its 16 positions, read straight from the tile's voxels, then
# B^T along y and along x in registers, stored once. Per tile and 16 channels that is 128 vector
# loads and 64 stores, where one pass per axis through two scratch tiles took 192 loads and 192
# stores.
@tile_helper
def input_voxel_along_z(source, voxel, plane, a):
    """(B^T d[:, j, k])[a] for the tile's column (j, k), whose d[i, j, k] is at source[voxel + i*plane]
    (unsigned). `a` is a constant where this is inlined: the loads and sums of B^T's other rows
    compile to nothing."""
    return input_transform_1d(load16_at(source, voxel), load16_at(source, voxel + plane),
                              load16_at(source, voxel + U[2] * plane), load16_at(source, voxel + U[3] * plane))[a]


@tile_helper
def input_row_along_z(source, row, plane, voxel_step, a):
    """input_voxel_along_z for the four columns (j, k), k = 0..3, of the row whose d[0, j, 0] is at
    source[row] (voxels voxel_step apart)."""
    return (input_voxel_along_z(source, row, plane, a), input_voxel_along_z(source, row + voxel_step, plane, a),
            input_voxel_along_z(source, row + U[2] * voxel_step, plane, a),
            input_voxel_along_z(source, row + U[3] * voxel_step, plane, a))


@tile_helper
def input_tile_plane(source, at, plane, row_length, voxel_step, a, v, to, xi_step):
    """V[xi = (a*4 + b)*4 + c] = sum_{i,j,k} B^T[a, i] B^T[b, j] B^T[c, k] d[i, j, k] for b, c = 0..3
    (plane a of the transformed tile), stored at v[to + xi * xi_step]; d[i, j, k] at
    source[at + i*plane + j*row_length + k*voxel_step] (all unsigned)."""
    e0 = input_row_along_z(source, at, plane, voxel_step, a)                   # e_j[k]: z done, j = 0
    e1 = input_row_along_z(source, at + row_length, plane, voxel_step, a)
    e2 = input_row_along_z(source, at + U[2] * row_length, plane, voxel_step, a)
    e3 = input_row_along_z(source, at + U[3] * row_length, plane, voxel_step, a)
    f0 = input_transform_1d(e0[0], e1[0], e2[0], e3[0])                        # f_k[b]: y done, k = 0
    f1 = input_transform_1d(e0[1], e1[1], e2[1], e3[1])
    f2 = input_transform_1d(e0[2], e1[2], e2[2], e3[2])
    f3 = input_transform_1d(e0[3], e1[3], e2[3], e3[3])
    plane_at = to + np.uint64(16 * a) * xi_step                              # V[a, 0, 0]
    b_step = U[4] * xi_step                                                  # V[a, b] to V[a, b + 1]
    store4x16_at(v, plane_at, xi_step, input_transform_1d(f0[0], f1[0], f2[0], f3[0]))      # x done, b = 0
    store4x16_at(v, plane_at + b_step, xi_step, input_transform_1d(f0[1], f1[1], f2[1], f3[1]))
    store4x16_at(v, plane_at + U[2] * b_step, xi_step, input_transform_1d(f0[2], f1[2], f2[2], f3[2]))
    store4x16_at(v, plane_at + U[3] * b_step, xi_step, input_transform_1d(f0[3], f1[3], f2[3], f3[3]))


@inlined_tile_helper
def input_tile(source, at, plane, row_length, voxel_step, v, to, xi_step):
    """V[xi] = (B^T d B along each axis)[xi] for one 4x4x4 input tile d and 16 channels, stored at
    v[to + xi * xi_step]; d[i, j, k] at source[at + i*plane + j*row_length + k*voxel_step]."""
    input_tile_plane(source, at, plane, row_length, voxel_step, 0, v, to, xi_step)
    input_tile_plane(source, at, plane, row_length, voxel_step, 1, v, to, xi_step)
    input_tile_plane(source, at, plane, row_length, voxel_step, 2, v, to, xi_step)
    input_tile_plane(source, at, plane, row_length, voxel_step, 3, v, to, xi_step)


@inlined_tile_helper
def stage_edge_tile(x, x_flat, n, iz0, iy0, ix0, c0, staged):
    """staged[i, j, k, q] = x[n, iz0 + i, iy0 + j, ix0 + k, c0 + q], zero where that voxel is padding
    or channel c0 + q does not exist: (4, 4, 4, 16) flat. For the tiles at the volume's faces and
    the last, partial block of channels; every other tile is read from x directly. A full block of
    16 channels moves as one vector (x_flat: x flattened)."""
    size_d, size_h, size_w, cin = x.shape[1:]
    width = min(BLOCK_C, cin - c0)
    staged[:] = 0
    for i in range(4):
        for j in range(4):
            for k in range(4):
                iz, iy, ix = iz0 + i, iy0 + j, ix0 + k
                if 0 <= iz < size_d and 0 <= iy < size_h and 0 <= ix < size_w:
                    to = ((i * 4 + j) * 4 + k) * BLOCK_C
                    at = (((n * size_d + iz) * size_h + iy) * size_w + ix) * cin + c0
                    if width == BLOCK_C:
                        store16_at(staged, np.uint64(to), load16_at(x_flat, np.uint64(at)))
                    else:
                        for q in range(width):
                            staged[to + q] = x_flat[at + q]


@inlined_tile_helper
def tile_source(x, x_flat, n, iz0, iy0, ix0, c0, inside, staged):
    """Where to read channels c0..c0+15 of the tile whose first voxel is x[n, iz0, iy0, ix0]:
    (source, at, plane, row_length, voxel_step), the tile's voxel (i, j, k) at source[at + i*plane +
    j*row_length + k*voxel_step] (all unsigned). x itself when `inside` (every voxel of the tile is
    in the volume) and 16 channels exist; else `staged`, filled by `stage_edge_tile` with its zeros."""
    size_d, size_h, size_w, channels = x.shape[1:]
    if inside and c0 + BLOCK_C <= channels:
        at = (((n * size_d + iz0) * size_h + iy0) * size_w + ix0) * channels + c0
        return (x_flat, np.uint64(at), np.uint64(size_h * size_w * channels), np.uint64(size_w * channels),
                np.uint64(channels))
    stage_edge_tile(x, x_flat, n, iz0, iy0, ix0, c0, staged)
    return staged, U[0], np.uint64(16 * BLOCK_C), np.uint64(4 * BLOCK_C), np.uint64(BLOCK_C)


@tile_helper
def transform_input_block(x0, x1, first, count, rows, v, staged):
    """V[xi, t, :] = (B^T d B along each axis) of the input tiles first + t, t < count; V's other rows
    are zeros. The input is x0 and x1 side by side along the channels (N, D, H, W, C0 + C1), read in
    place: x1 may have no channels; C0 is a multiple of 16 when it has some, so that no block of 16
    channels spans both. v (64, rows, Cin_padded) flat; staged (4 * 4 * 4 * 16,): a tile at a face,
    with its zeros. 16 channels at a time."""
    n_batch, size_d, size_h, size_w, cin0 = x0.shape
    cin = cin0 + x1.shape[4]
    tiles_d, tiles_h, tiles_w = (size_d + 1) // 2, (size_h + 1) // 2, (size_w + 1) // 2
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    x0_flat, x1_flat = x0.reshape(x0.size), x1.reshape(x1.size)
    xi_step = np.uint64(rows * cin_padded)                 # from V[xi] to V[xi + 1]
    for xi in range(TILE_VALUES):
        v[(xi * rows + count) * cin_padded:(xi + 1) * rows * cin_padded] = 0
    for t in range(count):
        n, td, th, tw = tile_position(first + t, tiles_d, tiles_h, tiles_w)
        iz0, iy0, ix0 = 2 * td - 1, 2 * th - 1, 2 * tw - 1      # the tile's first input voxel
        interior = (iz0 >= 0 and iy0 >= 0 and ix0 >= 0 and iz0 + 3 < size_d and iy0 + 3 < size_h
                    and ix0 + 3 < size_w)
        for c0 in range(0, cin, BLOCK_C):
            x, x_flat, channel = (x0, x0_flat, c0) if c0 < cin0 else (x1, x1_flat, c0 - cin0)
            source, at, plane, row_length, voxel_step = tile_source(x, x_flat, n, iz0, iy0, ix0, channel,
                                                                    interior, staged)
            input_tile(source, at, plane, row_length, voxel_step, v, np.uint64(t * cin_padded + c0), xi_step)


@tile_helper
def multiply_block(v, u_matrix, rows, cin, n_cblocks, block_rows, m, zeros):
    """M[xi, cb, t, :] = sum_ci V[xi, t, ci] U[xi, cb, ci, :] for the 64 positions xi: (rows x Cin) @
    (Cin x 16) per output-channel block cb, a register tile of 8 tiles (block_rows == 8; else 4)
    x 16 output channels at a time. v (64, rows, Cin_padded) and m (64, Cout_padded/16, rows, 16)
    flat; u_matrix rows (xi, cb, ci) of 16."""
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    step = np.uint64(cin_padded)                           # from one V row (tile) to the next
    cin_u = np.uint64(cin)
    end8 = rows if block_rows == 8 else 0
    for xi in range(TILE_VALUES):
        for cb in range(n_cblocks):
            u_0 = np.uint64((xi * n_cblocks + cb) * cin)
            m_0 = (xi * n_cblocks + cb) * rows
            for t0 in range(0, end8, 8):
                v_0 = np.uint64((xi * rows + t0) * cin_padded)
                v_1 = v_0 + step
                v_2 = v_1 + step
                v_3 = v_2 + step
                v_4 = v_3 + step
                v_5 = v_4 + step
                v_6 = v_5 + step
                v_7 = v_6 + step
                acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = load16(zeros, 0)
                for ci in range(cin_u):
                    w = load16(u_matrix, u_0 + ci)
                    acc0 = fma16(acc0, v[v_0 + ci], w)
                    acc1 = fma16(acc1, v[v_1 + ci], w)
                    acc2 = fma16(acc2, v[v_2 + ci], w)
                    acc3 = fma16(acc3, v[v_3 + ci], w)
                    acc4 = fma16(acc4, v[v_4 + ci], w)
                    acc5 = fma16(acc5, v[v_5 + ci], w)
                    acc6 = fma16(acc6, v[v_6 + ci], w)
                    acc7 = fma16(acc7, v[v_7 + ci], w)
                to = np.uint64((m_0 + t0) * BLOCK_C)
                store16_at(m, to, acc0)
                store16_at(m, to + np.uint64(BLOCK_C), acc1)
                store16_at(m, to + np.uint64(2 * BLOCK_C), acc2)
                store16_at(m, to + np.uint64(3 * BLOCK_C), acc3)
                store16_at(m, to + np.uint64(4 * BLOCK_C), acc4)
                store16_at(m, to + np.uint64(5 * BLOCK_C), acc5)
                store16_at(m, to + np.uint64(6 * BLOCK_C), acc6)
                store16_at(m, to + np.uint64(7 * BLOCK_C), acc7)
            for t0 in range(end8, rows, 4):
                v_0 = np.uint64((xi * rows + t0) * cin_padded)
                v_1 = v_0 + step
                v_2 = v_1 + step
                v_3 = v_2 + step
                acc0 = acc1 = acc2 = acc3 = load16(zeros, 0)
                for ci in range(cin_u):
                    w = load16(u_matrix, u_0 + ci)
                    acc0 = fma16(acc0, v[v_0 + ci], w)
                    acc1 = fma16(acc1, v[v_1 + ci], w)
                    acc2 = fma16(acc2, v[v_2 + ci], w)
                    acc3 = fma16(acc3, v[v_3 + ci], w)
                to = np.uint64((m_0 + t0) * BLOCK_C)
                store16_at(m, to, acc0)
                store16_at(m, to + np.uint64(BLOCK_C), acc1)
                store16_at(m, to + np.uint64(2 * BLOCK_C), acc2)
                store16_at(m, to + np.uint64(3 * BLOCK_C), acc3)


# The output transform of one tile and 16 channels, one output plane p at a time like the input
# transform: A^T along z for the plane's 16 positions, read straight from M, then A^T along y and along
# x in registers, plus the bias, stored to y (per tile and 16 channels 96 vector loads and 8 stores).
@tile_helper
def output_row_along_z(m, row, a_step, xi_step, p):
    """(A^T M[:, b, c])[p] for c = 0..3, the row (b) whose M[a, b, c] is at m[row + a*a_step + c*xi_step]
    (all unsigned). `p` is a constant where this is inlined: the other row of A^T compiles to nothing."""
    c1, c2, c3 = row + xi_step, row + U[2] * xi_step, row + U[3] * xi_step
    return (output_transform_1d(load16_at(m, row), load16_at(m, row + a_step), load16_at(m, row + U[2] * a_step),
                                load16_at(m, row + U[3] * a_step))[p],
            output_transform_1d(load16_at(m, c1), load16_at(m, c1 + a_step), load16_at(m, c1 + U[2] * a_step),
                                load16_at(m, c1 + U[3] * a_step))[p],
            output_transform_1d(load16_at(m, c2), load16_at(m, c2 + a_step), load16_at(m, c2 + U[2] * a_step),
                                load16_at(m, c2 + U[3] * a_step))[p],
            output_transform_1d(load16_at(m, c3), load16_at(m, c3 + a_step), load16_at(m, c3 + U[2] * a_step),
                                load16_at(m, c3 + U[3] * a_step))[p])


@tile_helper
def store_output_pair(y_flat, to, voxel_step, pair, b16, relu, r1_inside):
    """y_flat[to : to + 16] = pair[0] + bias, and one voxel_step on pair[1] + bias if r1_inside (the
    voxel exists); max(0, .) of them if relu."""
    y0 = add16(pair[0], b16)
    store16_at(y_flat, to, relu16(y0) if relu else y0)
    if r1_inside:
        y1 = add16(pair[1], b16)
        store16_at(y_flat, to + voxel_step, relu16(y1) if relu else y1)


@inlined_tile_helper
def output_tile_plane(m, at, xi_step, p, b16, relu, y_flat, to, row_length, voxel_step, q1_inside, r1_inside):
    """y[p, q, r] = sum_{a,b,c} A^T[p, a] A^T[q, b] A^T[r, c] M[(a*4 + b)*4 + c] + bias (then max(0, .) if
    relu) for q, r = 0, 1 (plane p of the output tile), M[xi] at m[at + xi * xi_step], for the voxels
    that exist: y[p, 0, 0] at y_flat[to], y[p, q, r] at to + q*row_length + r*voxel_step if q1_inside
    (for q = 1) and r1_inside (for r = 1)."""
    a_step = np.uint64(16) * xi_step                                         # M[a, b, c] to M[a + 1, b, c]
    b_step = U[4] * xi_step                                                  # M[a, b, c] to M[a, b + 1, c]
    e0 = output_row_along_z(m, at, a_step, xi_step, p)                       # e_b[c]: z done, b = 0
    e1 = output_row_along_z(m, at + b_step, a_step, xi_step, p)
    e2 = output_row_along_z(m, at + U[2] * b_step, a_step, xi_step, p)
    e3 = output_row_along_z(m, at + U[3] * b_step, a_step, xi_step, p)
    f0 = output_transform_1d(e0[0], e1[0], e2[0], e3[0])                     # f_c[q]: y done, c = 0
    f1 = output_transform_1d(e0[1], e1[1], e2[1], e3[1])
    f2 = output_transform_1d(e0[2], e1[2], e2[2], e3[2])
    f3 = output_transform_1d(e0[3], e1[3], e2[3], e3[3])
    store_output_pair(y_flat, to, voxel_step, output_transform_1d(f0[0], f1[0], f2[0], f3[0]), b16, relu,
                      r1_inside)                                             # x done, q = 0
    if q1_inside:
        store_output_pair(y_flat, to + row_length, voxel_step, output_transform_1d(f0[1], f1[1], f2[1], f3[1]),
                          b16, relu, r1_inside)


@tile_helper
def transform_output_block(m, bias, relu, first, count, rows, y0, y1):
    """The output voxels of the tiles first + t, t < count: (A^T M A along each axis) + bias, 16
    output channels at a time, into the voxels that exist (a tile past an odd edge is partial). The
    output (max(0, .) of it if relu) is y0 and y1 side by side along the channels: output channel
    block cb goes to y0 if 16*cb < C0, else to y1 (C0 a multiple of 16 when y1 has channels; the
    last output's channels padded to a multiple of 16). m (64, Cout_padded/16, rows, 16) flat;
    bias (Cout_padded,); y0 (N, D, H, W, C0), y1 (N, D, H, W, C1)."""
    n_batch, size_d, size_h, size_w, cout0 = y0.shape
    tiles_d, tiles_h, tiles_w = (size_d + 1) // 2, (size_h + 1) // 2, (size_w + 1) // 2
    n_cblocks = (cout0 + y1.shape[4]) // BLOCK_C
    y0_flat, y1_flat = y0.reshape(y0.size), y1.reshape(y1.size)
    xi_step = np.uint64(n_cblocks * rows * BLOCK_C)        # from M[xi] to M[xi + 1]
    for t in range(count):
        n, td, th, tw = tile_position(first + t, tiles_d, tiles_h, tiles_w)
        z1_inside, y1_inside, x1_inside = 2 * td + 1 < size_d, 2 * th + 1 < size_h, 2 * tw + 1 < size_w
        corner_voxel = ((n * size_d + 2 * td) * size_h + 2 * th) * size_w + 2 * tw
        for cb in range(n_cblocks):
            target, target_flat, channel = ((y0, y0_flat, cb * BLOCK_C) if cb * BLOCK_C < cout0
                                            else (y1, y1_flat, cb * BLOCK_C - cout0))
            voxel_step = np.uint64(target.shape[4])
            row_length = np.uint64(size_w) * voxel_step
            m_at = np.uint64((cb * rows + t) * BLOCK_C)
            b16 = load16_at(bias, np.uint64(cb * BLOCK_C))
            to = np.uint64(corner_voxel * target.shape[4] + channel)
            output_tile_plane(m, m_at, xi_step, 0, b16, relu, target_flat, to, row_length, voxel_step, y1_inside,
                              x1_inside)
            if z1_inside:
                output_tile_plane(m, m_at, xi_step, 1, b16, relu, target_flat, to + np.uint64(size_h) * row_length,
                                  row_length, voxel_step, y1_inside, x1_inside)


@blocked_kernel
def winograd_kernel(x0, x1, u_packed, bias, relu, tiles_per_block, block_rows, n_workers, y0, y1):
    """y = conv(x, weight) + bias for 3x3x3, stride 1, padding 1, by F(2^3, 3^3) (sections 2-3 above),
    or max(0, y) if relu (a folded BatchNorm's ReLU, nn3d/batchnorm_folding.py),
    where x is x0 and x1 side by side along the channels and y is y0 and y1 (see
    `transform_input_block` and `transform_output_block`: the concatenation of a decoder's inputs,
    or the split of its input gradient, costs nothing).

    x0, x1 (N, D, H, W, C) unpadded; u_packed (64, Cout_padded/16, Cin, 16) from
    `filter_transform`; bias (Cout_padded,); y0, y1 (N, D, H, W, C); block_rows = BLOCK_W
    (8 or 4 tiles per register tile). A block is `tiles_per_block` consecutive tiles; one worker owns
    a block's tiles and their output voxels, and computes what winograd_forward_reference computes,
    in the input's dtype, reordered: `transform_input_block`, `multiply_block`, `transform_output_block`
    through the block's own V and M (sized for L2). The prange runs over n_workers (the thread
    count) workers, each with its own buffers, taking blocks worker, worker + n_workers, ...: the
    buffers are allocated once per call, not once per block (fresh pages for every block cost more
    than the arithmetic). Which worker computes a tile does not change its value: deterministic.
    """
    n_batch, size_d, size_h, size_w, cin0 = x0.shape
    cin = cin0 + x1.shape[4]
    n_cblocks = u_packed.shape[1]
    n_tiles = n_batch * ((size_d + 1) // 2) * ((size_h + 1) // 2) * ((size_w + 1) // 2)
    n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
    rows = (tiles_per_block + 7) // 8 * 8                  # V and M rows: whole register tiles
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    u_matrix = u_packed.reshape(u_packed.size // BLOCK_C, BLOCK_C)       # rows (xi, cb, ci)
    for worker in prange(n_workers):
        v = np.empty(TILE_VALUES * rows * cin_padded, dtype=y0.dtype)            # V (64, rows, Cin_padded)
        m = np.empty(TILE_VALUES * n_cblocks * rows * BLOCK_C, dtype=y0.dtype)  # M (64, Cout_p/16, rows, 16)
        zeros = np.zeros((1, BLOCK_C), dtype=y0.dtype)                         # a zero register tile
        staged = np.empty(TILE_VALUES * BLOCK_C, dtype=y0.dtype)                # a tile at a face
        for block in range(worker, n_blocks, n_workers):
            first = np.int64(block) * tiles_per_block
            count = min(tiles_per_block, n_tiles - first)
            transform_input_block(x0, x1, first, count, rows, v, staged)
            multiply_block(v, u_matrix, rows, cin, n_cblocks, block_rows, m, zeros)
            transform_output_block(m, bias, relu, first, count, rows, y0, y1)


def tiles_per_block_for(cin, cout_padded):
    """Tiles per block: V and M of a block, 64 * tiles * (Cin + Cout) values, in about 128 KiB of
    float32, in whole register tiles (8..64). Measured at the U-Net's shapes on 2 threads: smaller
    blocks were faster down to 8 tiles (buffers that stay in L1/L2 while the three phases pass over
    them; many blocks to share between threads at 8^3), larger ones up to 2x slower."""
    cin_padded = -(-cin // BLOCK_C) * BLOCK_C
    return int(min(64, max(8, 512 // (cin_padded + cout_padded) // 8 * 8)))


def no_channels(like):
    """An (N, D, H, W, 0) array: the absent second input or output of `winograd_kernel`."""
    return np.empty((*like.shape[:4], 0), like.dtype)


def kernel_inputs(inputs):
    """The (x0, x1) pair the kernels read side by side from a tuple of channels-last inputs
    (N, D, H, W, C_j): two whose first has a multiple of 16 channels as they are (no block of 16
    channels spans both), one with an empty x1, anything else concatenated into one copy."""
    inputs = tuple(np.ascontiguousarray(x) for x in inputs)
    if len(inputs) > 2 or (len(inputs) == 2 and inputs[0].shape[4] % BLOCK_C):
        inputs = (pad_and_concatenate(inputs, (0, 0, 0)),)              # channels side by side
    return inputs[0], inputs[1] if len(inputs) == 2 else no_channels(inputs[0])


def winograd_convolution(inputs, u, bias, output_channels, block_rows=BLOCK_W, tiles_per_block=None,
                         relu=False):
    """The 3x3x3, stride-1, padding-1 convolution of the channel concatenation of `inputs` (a tuple
    of channels-last arrays (N, D, H, W, C_j), unpadded) by F(2^3, 3^3), with the packed transformed
    filter u (64, Cout_padded/16, Cin, 16) (`filter_transform`, in the inputs' dtype) and bias
    (Cout,) or None. Returns the output's channels cut into bands of sizes `output_channels` (summing
    to Cout): a tuple of C-contiguous (N, D, H, W, C) arrays. Two inputs whose first has a multiple
    of 16 channels are read in place, and two output bands whose first is a multiple of 16 are
    written in place; anything else goes through one concatenated (or split) copy. block_rows: the register tile (this CPU's BLOCK_W; the
    tests pass 4 and 8); tiles_per_block: None for `tiles_per_block_for`; relu: max(0, output)."""
    x0, x1 = kernel_inputs(inputs)
    cout = sum(output_channels)
    cout_padded = u.shape[1] * BLOCK_C
    bias_padded = np.zeros(cout_padded, dtype=x0.dtype)
    if bias is not None:
        bias_padded[:cout] = bias
    if tiles_per_block is None:
        tiles_per_block = tiles_per_block_for(x0.shape[4] + x1.shape[4], cout_padded)
    in_place = len(output_channels) == 2 and output_channels[0] % BLOCK_C == 0
    first_band = output_channels[0] if in_place else cout
    y0 = arena.empty((*x0.shape[:4], first_band if in_place else cout_padded), x0.dtype)
    y1 = arena.empty((*x0.shape[:4], cout_padded - first_band), x0.dtype) if in_place else no_channels(x0)
    winograd_kernel(x0, x1, u, bias_padded, relu, np.int64(tiles_per_block), np.int64(block_rows),
                    np.int64(numba.get_num_threads()), y0, y1)
    if in_place:
        outputs = (y0, y1)
    else:
        bands = np.cumsum((0, *output_channels))
        outputs = tuple(y0[..., start:stop] for start, stop in zip(bands[:-1], bands[1:]))
    return tuple(y if y.shape[4] == channels and y.flags.c_contiguous      # else: a band, or padding
                 else arena.copy(y[..., :channels]) for y, channels in zip(outputs, output_channels))


def winograd_forward(inputs, u, bias, cout, block_rows=BLOCK_W, tiles_per_block=None, relu=False):
    """Line (1) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1: inputs, a tuple of
    channels-last unpadded arrays (N, D, H, W, C_j) (one, or a decoder's two, convolved as their
    channel concatenation) -> y (N, D, H, W, Cout). u = filter_transform(weight) for a weight of
    Cout output channels; bias (Cout,) or None; relu: max(0, y) as it is stored."""
    return winograd_convolution(inputs, u, bias, (cout,), block_rows, tiles_per_block, relu)[0]


def winograd_grad_input(grad_output, u, input_channels, block_rows=BLOCK_W):
    """Line (3) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1: the output gradient
    (N, D, H, W, Cout), padded by k - 1 - p = 1, convolved with the flipped, in/out-swapped kernel
    (whose transform comes from the forward's u = filter_transform(weight), no new transform): the
    same F(2^3, 3^3) convolution, its output cut into the inputs' bands of `input_channels` channels
    -> (dL/dx_0, dL/dx_1, ...), (N, D, H, W, C_j) each. One pass for all inputs: the output-gradient
    transform and the products are shared."""
    return winograd_convolution((grad_output,), flipped_transposed_transform(u, grad_output.shape[4]), None,
                                input_channels, block_rows)
