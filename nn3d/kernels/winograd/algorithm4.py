"""Winograd's minimal filtering F(4^3, 3^3): the 3x3x3, stride-1, padding-1 convolution with 4x4x4
output tiles, 216 multiplications per tile and channel pair instead of 64 * 27 = 1728 direct (8x
fewer; 2.37x fewer than F(2^3, 3^3)'s 8 * 64 = 512 for the same 64 outputs). algorithm.py derives
F(2, 3) and holds the package's notation; this file derives F(4, 3) the same way, adds its names to
that notation, and holds its plain NumPy references. The fast kernel is convolution4.py.

1. F(4, 3) in one dimension: four outputs of a 3-tap filter from 6 inputs, with 6 multiplications.
   As in algorithm.py, start from the linear convolution s(x) = h(x) g(x) of h = (h0, h1, h2, h3)
   with g = (g0, g1, g2): degree 5, fixed by 6 values. Take them at the points
   x_a = 0, 1, -1, 2, -2 and infinity (the leading coefficient, h3 g2): m_a = h(x_a) g(x_a).
   Lagrange interpolation through the five finite points, plus the point at infinity, gives

       s(x) = sum_{a<5} m_a N_a(x) / N_a(x_a)  +  m_5 P(x),     N_a(x) = prod_{b<5, b!=a} (x - x_b),
                                                               P(x)   = x (x^2 - 1)(x^2 - 4)

   (P vanishes at the five points and has leading coefficient 1, so it adds m_5 = s5 x^5 without
   disturbing the other values). The denominators N_a(x_a) are 4, -6, -6, 24, 24; move them into
   the filter side. Writing s = C [(A h) * (G g)] and transposing as in algorithm.py, section 1,
   the correlation y_i = sum_j d_{i+j} g_j is y = A^T [(G g) * (B^T d)] with B^T = C^T, whose rows
   are the coefficients (in increasing powers of x) of N_0..N_4 and of P:

       B^T = [[4,  0, -5,  0, 1, 0],    N_0 = (x^2 - 1)(x^2 - 4)      G = [[ 1/4,     0,    0],
              [0, -4, -4,  1, 1, 0],    N_1 = x (x + 1)(x^2 - 4)           [-1/6,  -1/6, -1/6],
              [0,  4, -4, -1, 1, 0],    N_2 = x (x - 1)(x^2 - 4)           [-1/6,   1/6, -1/6],
              [0, -2, -1,  2, 1, 0],    N_3 = x (x^2 - 1)(x + 2)           [1/24,  1/12,  1/6],
              [0,  2, -1, -2, 1, 0],    N_4 = x (x^2 - 1)(x - 2)           [1/24, -1/12,  1/6],
              [0,  4,  0, -5, 0, 1]]    P                                  [   0,     0,    1]]

       A^T = [[1, 1,  1, 1,  1, 0],     (h at the six points: column a is (1, x_a, x_a^2, x_a^3),
              [0, 1, -1, 2, -2, 0],      the last (0, 0, 0, 1))
              [0, 1,  1, 4,  4, 0],
              [0, 1, -1, 8, -8, 1]]

   G's row a is g at x_a, (g0 + g1 x_a + g2 x_a^2), divided by N_a(x_a). These are Lavin & Gray's
   matrices for F(4, 3) ("Fast Algorithms for Convolutional Neural Networks", 2016, section 5).
   The test checks them against the direct sum.

2. Three dimensions: as in algorithm.py, section 2, each matrix along each axis. U = G along each
   axis of a 3x3x3 filter (6, 6, 6), V = B^T along each axis of a 6x6x6 input tile (6, 6, 6),
   M = U * V (216 multiplications), y = A^T along each axis of M (4, 4, 4). With channels:
   M[xi][t, co] = sum_ci V[xi][t, ci] U[xi][ci, co], 216 matrix products per block of tiles.
   Input tiles overlap by 2 (a halo of 1 each side of 4 output voxels).

3. The count. Per 4x4x4 output tile and channel pair: 216 products against F(2^3, 3^3)'s 512 and
   the direct 1728. The transformed tiles (V, M) hold 216 values per 64 outputs, F(2^3, 3^3)'s 512
   per 64, so the buffers the products read and write shrink by the same 2.37x. The transforms cost
   about the same per output: B^T along one axis is 12 additions or multiply-adds per 6 values
   (the factorisation in tile_transforms4.py), 3 * 36 * 12 = 1296 per tile and channel, about 20 per
   output against F(2^3, 3^3)'s 192 / 8 = 24.

4. Where the float32 error comes from. F(2, 3)'s entries are 0, +-1 and 1/2, exact in binary; here
   - B4^T's 4 and 5: a row of B4^T has 3 or 4 nonzero entries, so a V entry sums 27 to 64 inputs
     with weights up to 5 * 5 * 5 = 125: V is up to two orders of magnitude larger than the
     inputs, and its rounding error with it;
   - G4's 1/6, 1/12 and 1/24 are not binary fractions: U is rounded (once: it is computed in
     float64), and U at the points +-2 is 1/24 of weights scaled by up to 4;
   - A4^T's 2, 4 and 8 (x_a^3 at +-2): y sums M scaled by up to 8^3 = 512 with signs, products far
     larger than the outputs they make, so their rounding errors (relative to |M|) survive the
     cancellation.
   So the float32 error is some 60x F(2^3, 3^3)'s (docs/performance.md gives the measured figures;
   tests/test_winograd4.py bounds it). The points 0, +-1, +-2 are the smallest integers there are;
   other choices (+-1/2) move the large entries from B^T to G without making them smaller.

Notation: algorithm.py's, with these added for F(4^3, 3^3) (each name has this meaning only):

    B4_T, G4, A4_T  F(4, 3)'s 1-D input (6, 6), filter (6, 3) and output (4, 6) transforms
    xi              a transformed position (az*6 + ay)*6 + ax, 0 <= xi < TILE_VALUES_4 = 216, with
                    az, ay, ax the points 0, 1, -1, 2, -2, infinity along z, y and x
    d, y            a 6x6x6 input tile and a 4x4x4 output tile, when the text is about F(4^3, 3^3)
    t               a 4x4x4 tile's number, ((n * tiles_d + td) * tiles_h + th) * tiles_w + tw, with
                    tiles_d = ceil(D / 4) and so on
"""
import numpy as np

from .algorithm import winograd_reference

B4_T = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)                  # (6, 6)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64)                           # (6, 3)
A4_T = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                dtype=np.float64)                                                                # (4, 6)
TILE_VALUES_4 = 216    # 6 x 6 x 6 transformed positions xi = (az*6 + ay)*6 + ax
OUTPUT_TILE_4 = 4      # output voxels per tile along each axis


def filter_transform4_reference(weight):
    """U[az, ay, ax, co, ci] = sum_{i,j,k} G4[az, i] G4[ay, j] G4[ax, k] weight[co, ci, i, j, k]
    plainly, in float64: weight (Cout, Cin, 3, 3, 3) -> U (6, 6, 6, Cout, Cin)."""
    return np.einsum("ai,bj,ck,oxijk->abcox", G4, G4, G4, weight.astype(np.float64), optimize=True)


def winograd4_forward_reference(x, weight, bias):
    """F(4^3, 3^3) plainly, in float64: algorithm.py's `winograd_reference` with B4^T, G4 and A4^T.
    x (N, D, H, W, Cin) channels-last, unpadded; weight (Cout, Cin, 3, 3, 3); bias (Cout,) or None ->
    y (N, D, H, W, Cout), the stride-1, padding-1 convolution (1) of nn3d/conv3d.py."""
    return winograd_reference(x, weight, bias, B4_T, G4, A4_T)
