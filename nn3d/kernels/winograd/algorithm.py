"""Winograd's minimal filtering F(2^3, 3^3): a 3x3x3, stride-1, padding-1 convolution with 3.4x fewer
multiplications than the direct sum (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016). The direct kernels (nn3d/kernels/conv3d.py) already run near this machine's FMA
peak, so the only way to be much faster is to do less arithmetic. This file holds the derivation,
the matrices, the notation of the package and plain NumPy references; the other files of
nn3d/kernels/winograd/ are the fast kernels (their order: __init__.py).

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

       U[az, ay, ax] = sum_{i,j,k} G[az, i] G[ay, j] G[ax, k] g[i, j, k]            (4, 4, 4)  filter transform
       V[az, ay, ax] = sum_{i,j,k} B^T[az, i] B^T[ay, j] B^T[ax, k] d[i, j, k]      (4, 4, 4)  input transform
       M[az, ay, ax] = U[az, ay, ax] * V[az, ay, ax]                                64 multiplications
       y[p, q, r]    = sum_{az,ay,ax} A^T[p, az] A^T[q, ay] A^T[r, ax] M[az, ay, ax]  (2, 2, 2)  output transform

   With channels, the 64 products become 64 independent matrix products, one per transformed
   position xi = (az, ay, ax): M[xi][t, co] = sum_ci V[xi][t, ci] U[xi][ci, co] over all tiles t.

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

Notation, here and in every file of this package (no letter means two things: the transformed
positions are az, ay, ax, never a channel c or a bias b; the output gradient is dy, never G or w;
G is only the filter matrix):

    g            a 3x3x3 filter: weight[co, ci] of a weight (Cout, Cin, 3, 3, 3); i, j, k its taps
    d            a 4x4x4 input tile, i, j, k its voxels; tiles overlap by 2 (a halo of 1 each side)
    y, dy        a 2x2x2 output tile and its output gradient dL/dy; p, q, r their voxels
    t            a tile's number, ((n * tiles_d + td) * tiles_h + th) * tiles_w + tw
    B^T, G, A^T  the 1-D input, filter and output transforms (B_T, G, A_T below); A = (A^T)^T
    az, ay, ax   a transformed position's points (0, 1, -1, infinity) along z, y and x (as kz, ky, kx
                 are a kernel offset's)
    xi           a transformed position (az*4 + ay)*4 + ax, 0 <= xi < TILE_VALUES = 64
    U            the filter transform, G along each axis of g: (4, 4, 4) per (co, ci) pair
    V            the input transform, B^T along each axis of d: (4, 4, 4) per tile and ci
    M            the products M[xi][t, co] = sum_ci V[xi][t, ci] U[xi][ci, co]; y = A^T along each axis of M
    dM           dL/dM, the output-gradient transform: A along each axis of dy (grad_weight.py)
    dU           dL/dU[xi][ci, co] = sum_t V[xi][t, ci] dM[xi][t, co] (grad_weight.py)
    cb, c        a block of BLOCK_C = 16 output channels (a register tile), and a lane of it
"""
import numpy as np


B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], dtype=np.float64)   # (4, 4)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)        # (4, 3)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, 1]], dtype=np.float64)                                  # (2, 4)
G_KRON = np.kron(np.kron(G, G), G)                                  # (64, 27): G along three axes at once
TILE_VALUES = 64       # 4 x 4 x 4 transformed positions xi = (az*4 + ay)*4 + ax


def filter_transform_reference(weight):
    """U[az, ay, ax, co, ci] = sum_{i,j,k} G[az, i] G[ay, j] G[ax, k] weight[co, ci, i, j, k] plainly,
    in float64: G along kz, ky and kx at once, as one (64, 27) @ (27, Cout*Cin) product with the
    Kronecker product G (x) G (x) G, whose row az*16 + ay*4 + ax, column i*9 + j*3 + k is
    G[az, i] G[ay, j] G[ax, k]. weight (Cout, Cin, 3, 3, 3) -> U (4, 4, 4, Cout, Cin). The kernels use
    `filter_transform`, tested against this."""
    cout, cin = weight.shape[:2]
    u = G_KRON @ weight.reshape(cout * cin, 27).astype(np.float64).T       # (64, Cout*Cin)
    return u.reshape(4, 4, 4, cout, cin)


POINTS_FLIPPED = [3, 1, 2, 0]   # G applied to (g2, g1, g0): the points 0 and infinity trade places
POSITIONS_FLIPPED = np.array([(POINTS_FLIPPED[az] * 4 + POINTS_FLIPPED[ay]) * 4 + POINTS_FLIPPED[ax]   # xi -> xi'
                              for az in range(4) for ay in range(4) for ax in range(4)])


def flipped_transposed_transform_reference(u):
    """The filter transform of grad-input's kernel (nn3d/conv3d.py (3): the weight flipped along
    every axis, in/out channels swapped), from the forward's U instead of from the weights: G applied
    to the flipped filter (g2, g1, g0) gives (g2, (g0+g1+g2)/2, (g0-g1+g2)/2, g0), which is
    ((G g)[3], (G g)[1], (G g)[2], (G g)[0]); so per axis U'[az] = U[POINTS_FLIPPED[az]], and the
    channel matrices are transposed. U (4, 4, 4, Cout, Cin) -> U' (4, 4, 4, Cin, Cout), plainly
    (`flipped_transposed_transform` is the kernels' version, on the packed layout)."""
    cout, cin = u.shape[3:]
    return u.reshape(TILE_VALUES, cout, cin)[POSITIONS_FLIPPED].transpose(0, 2, 1).reshape(4, 4, 4, cin, cout)


def winograd_reference(x, weight, bias, b_t, g, a_t):
    """Winograd's convolution plainly, in float64, for the 1-D transforms of any F(e, 3) (e outputs
    per axis from e + 2 inputs): b_t = B^T (e+2, e+2), g = G (e+2, 3), a_t = A^T (e, e+2); F(2, 3)'s
    above, algorithm4.py's F(4, 3). x (N, D, H, W, Cin) channels-last, unpadded; weight (Cout, Cin,
    3, 3, 3); bias (Cout,) or None -> y (N, D, H, W, Cout), the stride-1, padding-1 convolution (1)
    of nn3d/conv3d.py. Sizes that are not multiples of e: the last tile is partial (zeros beyond the
    halo, outputs beyond the volume dropped). In the einsum strings a, b, c stand for az, ay, ax (one
    letter per index), o and x for co and ci."""
    e, e2 = a_t.shape                                                      # e outputs, e + 2 inputs
    n_batch, *size, cin = x.shape
    cout = weight.shape[0]
    tiles_d, tiles_h, tiles_w = (-(-s // e) for s in size)
    x_pad = np.zeros((n_batch, e * tiles_d + 2, e * tiles_h + 2, e * tiles_w + 2, cin))   # halo 1, rounded up
    x_pad[:, 1:size[0] + 1, 1:size[1] + 1, 1:size[2] + 1] = x
    d = np.empty((n_batch, tiles_d, tiles_h, tiles_w, e2, e2, e2, cin))   # input tiles, overlapping by 2
    for i in range(e2):
        for j in range(e2):
            for k in range(e2):
                d[:, :, :, :, i, j, k] = x_pad[:, i:i + e * tiles_d:e, j:j + e * tiles_h:e, k:k + e * tiles_w:e]
    u = np.einsum("ai,bj,ck,oxijk->abcox", g, g, g, weight.astype(np.float64), optimize=True)  # U
    v = np.einsum("ai,bj,ck,ntuvijkx->ntuvabcx", b_t, b_t, b_t, d, optimize=True)             # V per tile
    products = np.einsum("ntuvabcx,abcox->ntuvabco", v, u, optimize=True)                    # M per tile
    y_tiles = np.einsum("pa,qb,rc,ntuvabco->ntpuqvro", a_t, a_t, a_t, products, optimize=True)
    y = y_tiles.reshape(n_batch, e * tiles_d, e * tiles_h, e * tiles_w, cout)[:, :size[0], :size[1], :size[2]]
    return y + (0 if bias is None else bias)


def winograd_forward_reference(x, weight, bias):
    """F(2^3, 3^3) plainly, in float64 (`winograd_reference` with B^T, G and A^T above): x (N, D, H, W,
    Cin) channels-last, unpadded; weight (Cout, Cin, 3, 3, 3); bias (Cout,) or None -> y (N, D, H, W,
    Cout). Its U equals `filter_transform_reference(weight)`."""
    return winograd_reference(x, weight, bias, B_T, G, A_T)
