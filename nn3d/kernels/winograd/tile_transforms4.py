"""The transforms of one block of F(4^3, 3^3) tiles (algorithm4.py), 16 channels at a time: the input
transform V = B4^T along each axis of a 6x6x6 input tile d (`transform_input_block4`), the output
transform y = A4^T along each axis of M plus the bias, with the ReLU folded in
(`transform_output_block4`), and the output-gradient transform dM = A4 along each axis of a 4x4x4
tile of dy (`transform_grad_output_block4`, grad_weight4.py's). The notation is algorithm.py's and
algorithm4.py's.

A 6x6x6 tile of 16-channel vectors is 216 vectors; AVX2 has 16 vector registers (8 such vectors),
AVX-512 32. So each axis is one pass over the tile: a pass reads a line of 6 vectors (a column of
the tile along the pass's axis), transforms it in registers (six vectors and four temporaries, 12 +
8 ymm on AVX2: LLVM's schedule of one line of B4^T is 12 vector loads, 20 arithmetic instructions,
12 vector stores and 4-5 stack accesses, for the broadcast constants 4 and -5 that no register is
left for), and writes the line into a small scratch tile (216 x 16 values, 13.5 KiB in float32: the
two scratch tiles stay in L1). The last pass writes V (or y) directly. Per tile and 16 channels: 3 *
216 vector loads and stores, against F(2^3, 3^3)'s 8 * (128 loads + 64 stores) for the same 64
output voxels.

The vectors are simd.py's explicit `Vector`s (one LLVM vector value each), so no vectoriser has to
find them; every index below is a plain integer (the vector loads and stores have no negative-index
checks to avoid). Tiles at the volume's faces, and the last block of channels when Cin is not a
multiple of 16, are staged with their zeros into a 6x6x6x16 buffer (`stage_edge_tile4`); every
other tile is read where it lies.
"""

from ..jit import inlined_tile_helper, tile_helper
from ..register_tile import BLOCK_C
from ..simd import add16, fma16, load16_at, relu16, store16_at, sub16
from .tile_transforms import tile_position

LINE = 6 * BLOCK_C            # one line of 6 vectors in a scratch tile, from one position to the next along y
PLANE = 36 * BLOCK_C          # one plane of 36 vectors, from one position to the next along z


# ---- the 1-D transforms ----------------------------------------------------------------------------
@tile_helper
def input_transform4_1d(d0, d1, d2, d3, d4, d5):
    """B4^T (d0, ..., d5) on 16-channel vectors, factored into 12 operations (algorithm4.py, section 1):
    rows 1 and 2 share (d4 - 4 d2) and (d3 - 4 d1), rows 3 and 4 share (d4 - d2) and (d3 - d1)."""
    four_d2 = fma16(d4, -4.0, d2)                     # d4 - 4 d2
    four_d1 = fma16(d3, -4.0, d1)                     # d3 - 4 d1
    even = sub16(d4, d2)
    odd = sub16(d3, d1)
    return (fma16(fma16(d4, 4.0, d0), -5.0, d2),       # 4 d0 - 5 d2 + d4
            add16(four_d2, four_d1), sub16(four_d2, four_d1),
            fma16(even, 2.0, odd), fma16(even, -2.0, odd),
            fma16(fma16(d5, 4.0, d1), -5.0, d3))       # 4 d1 - 5 d3 + d5


@tile_helper
def output_transform4_1d(m0, m1, m2, m3, m4, m5):
    """A4^T (m0, ..., m5) on 16-channel vectors: with a = m1 + m2, b = m1 - m2, c = m3 + m4,
    e = m3 - m4: (m0 + a + c, b + 2e, a + 4c, b + 8e + m5)."""
    a = add16(m1, m2)
    b = sub16(m1, m2)
    c = add16(m3, m4)
    e = sub16(m3, m4)
    return add16(add16(m0, a), c), fma16(b, 2.0, e), fma16(a, 4.0, c), add16(fma16(b, 8.0, e), m5)


@tile_helper
def grad_output_transform4_1d(g0, g1, g2, g3):
    """A4 (g0, g1, g2, g3) on 16-channel vectors (A4 = (A4^T)^T, the output gradient at the six
    points 0, 1, -1, 2, -2, infinity: grad_weight4.py): with e = g0 + g2, o = g1 + g3,
    e4 = g0 + 4 g2, o4 = g1 + 4 g3: (g0, e + o, e - o, e4 + 2 o4, e4 - 2 o4, g3)."""
    even = add16(g0, g2)
    odd = add16(g1, g3)
    even4 = fma16(g0, 4.0, g2)                        # g0 + 4 g2
    odd4 = fma16(g1, 4.0, g3)                         # g1 + 4 g3
    return g0, add16(even, odd), sub16(even, odd), fma16(even4, 2.0, odd4), fma16(even4, -2.0, odd4), g3


@tile_helper
def store_line6(to_flat, to, to_step, line):
    """to_flat[to + a*to_step : ... + 16] = line[a] for the six vectors of a transformed line, a < 6."""
    store16_at(to_flat, to, line[0])
    store16_at(to_flat, to + to_step, line[1])
    store16_at(to_flat, to + 2 * to_step, line[2])
    store16_at(to_flat, to + 3 * to_step, line[3])
    store16_at(to_flat, to + 4 * to_step, line[4])
    store16_at(to_flat, to + 5 * to_step, line[5])


@tile_helper
def input_line(source, at, step, to_flat, to, to_step):
    """to_flat[to + a*to_step : ... + 16] = (B4^T line)[a] for a < 6, the line's vector i at
    source[at + i*step]."""
    store_line6(to_flat, to, to_step,
                input_transform4_1d(load16_at(source, at), load16_at(source, at + step),
                                    load16_at(source, at + 2 * step), load16_at(source, at + 3 * step),
                                    load16_at(source, at + 4 * step), load16_at(source, at + 5 * step)))


@tile_helper
def output_line(source, at, step):
    """A4^T of the line whose vector a (a < 6) is at source[at + a*step]: four vectors."""
    return output_transform4_1d(load16_at(source, at), load16_at(source, at + step), load16_at(source, at + 2 * step),
                                load16_at(source, at + 3 * step), load16_at(source, at + 4 * step),
                                load16_at(source, at + 5 * step))


@tile_helper
def output_line_to(source, at, step, to_flat, to, to_step):
    """to_flat[to + p*to_step : ... + 16] = (A4^T line)[p] for p < 4 (`output_line`)."""
    r = output_line(source, at, step)
    store16_at(to_flat, to, r[0])
    store16_at(to_flat, to + to_step, r[1])
    store16_at(to_flat, to + 2 * to_step, r[2])
    store16_at(to_flat, to + 3 * to_step, r[3])


@tile_helper
def grad_output_line(source, at, step, to_flat, to, to_step):
    """to_flat[to + a*to_step : ... + 16] = (A4 line)[a] for a < 6, the line's vector p (p < 4) at
    source[at + p*step]."""
    store_line6(to_flat, to, to_step,
                grad_output_transform4_1d(load16_at(source, at), load16_at(source, at + step),
                                          load16_at(source, at + 2 * step), load16_at(source, at + 3 * step)))


def tile_count4(shape):
    """The 4x4x4 output tiles of a volume (N, D, H, W, ...): N * ceil(D/4) * ceil(H/4) * ceil(W/4)."""
    return shape[0] * ((shape[1] + 3) // 4) * ((shape[2] + 3) // 4) * ((shape[3] + 3) // 4)


# ---- input tiles -----------------------------------------------------------------------------------
@inlined_tile_helper
def input_tile4(source, at, plane, row_length, voxel_step, v, to, xi_step, scratch_z, scratch_zy):
    """V[xi = (az*6 + ay)*6 + ax] = sum_{i,j,k} B4^T[az, i] B4^T[ay, j] B4^T[ax, k] d[i, j, k] for one
    6x6x6 input tile and 16 channels, stored at v[to + xi * xi_step]; d[i, j, k] at
    source[at + i*plane + j*row_length + k*voxel_step]. scratch_z holds the tile after the pass
    along z (az, j, k), scratch_zy after the pass along y (az, ay, k), 216 x 16 values each."""
    for j in range(6):
        for k in range(6):
            input_line(source, at + j * row_length + k * voxel_step, plane, scratch_z, (j * 6 + k) * BLOCK_C, PLANE)
    for az in range(6):
        for k in range(6):
            input_line(scratch_z, az * PLANE + k * BLOCK_C, LINE, scratch_zy, az * PLANE + k * BLOCK_C, LINE)
    for line in range(36):                                   # (az, ay): V[xi] for ax = 0..5
        input_line(scratch_zy, line * LINE, BLOCK_C, v, to + line * 6 * xi_step, xi_step)


@inlined_tile_helper
def stage_edge_tile4(x, x_flat, n, iz0, iy0, ix0, c0, staged):
    """staged[i, j, k, q] = x[n, iz0 + i, iy0 + j, ix0 + k, c0 + q] for i, j, k < 6, zero where that
    voxel is padding or channel c0 + q does not exist: (6, 6, 6, 16) flat."""
    size_d, size_h, size_w, cin = x.shape[1:]
    width = min(BLOCK_C, cin - c0)
    staged[:] = 0
    for i in range(max(0, -iz0), min(6, size_d - iz0)):
        for j in range(max(0, -iy0), min(6, size_h - iy0)):
            for k in range(max(0, -ix0), min(6, size_w - ix0)):
                to = ((i * 6 + j) * 6 + k) * BLOCK_C
                at = (((n * size_d + iz0 + i) * size_h + iy0 + j) * size_w + ix0 + k) * cin + c0
                if width == BLOCK_C:
                    store16_at(staged, to, load16_at(x_flat, at))
                else:
                    for q in range(width):
                        staged[to + q] = x_flat[at + q]


@tile_helper
def transform_input_block4(x0, x1, first, count, rows, v, staged, scratch_z, scratch_zy):
    """V[xi, t, :] = (B4^T d B4 along each axis) of the input tiles first + t, t < count; V's other
    rows are zeros. The input is x0 and x1 side by side along the channels (N, D, H, W, C0 + C1),
    read in place (C0 a multiple of 16 when x1 has channels, as in tile_transforms.py).
    v (216, rows, Cin_padded) flat; staged, scratch_z, scratch_zy (216 * 16,)."""
    n_batch, size_d, size_h, size_w, cin0 = x0.shape
    cin = cin0 + x1.shape[4]
    tiles_d, tiles_h, tiles_w = (size_d + 3) // 4, (size_h + 3) // 4, (size_w + 3) // 4
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    x0_flat, x1_flat = x0.reshape(x0.size), x1.reshape(x1.size)
    xi_step = rows * cin_padded                            # from V[xi] to V[xi + 1]
    for xi in range(216):
        v[(xi * rows + count) * cin_padded:(xi + 1) * rows * cin_padded] = 0
    for t in range(count):
        n, td, th, tw = tile_position(first + t, tiles_d, tiles_h, tiles_w)
        iz0, iy0, ix0 = 4 * td - 1, 4 * th - 1, 4 * tw - 1      # the tile's first input voxel
        interior = (iz0 >= 0 and iy0 >= 0 and ix0 >= 0 and iz0 + 5 < size_d and iy0 + 5 < size_h
                    and ix0 + 5 < size_w)
        for c0 in range(0, cin, BLOCK_C):
            x, x_flat, channel = (x0, x0_flat, c0) if c0 < cin0 else (x1, x1_flat, c0 - cin0)
            channels = x.shape[4]
            if interior and channel + BLOCK_C <= channels:
                at = (((n * size_d + iz0) * size_h + iy0) * size_w + ix0) * channels + channel
                input_tile4(x_flat, at, size_h * size_w * channels, size_w * channels, channels, v,
                            t * cin_padded + c0, xi_step, scratch_z, scratch_zy)
            else:
                stage_edge_tile4(x, x_flat, n, iz0, iy0, ix0, channel, staged)
                input_tile4(staged, 0, PLANE, LINE, BLOCK_C, v, t * cin_padded + c0, xi_step, scratch_z,
                            scratch_zy)


# ---- output tiles ----------------------------------------------------------------------------------
@tile_helper
def store_output4(y_flat, at, value, b16, relu):
    """y_flat[at : at + 16] = value + bias, max(0, .) of it if relu."""
    biased = add16(value, b16)
    store16_at(y_flat, at, relu16(biased) if relu else biased)


@inlined_tile_helper
def output_tile4(m, at, xi_step, b16, relu, y_flat, to, plane, row_length, voxel_step, nz, ny, nx,
                 scratch_z, scratch_zy):
    """y[p, q, r] = sum_{az,ay,ax} A4^T[p, az] A4^T[q, ay] A4^T[r, ax] M[(az*6 + ay)*6 + ax] + bias
    (then max(0, .) if relu) for the voxels p < nz, q < ny, r < nx that exist, M[xi] at
    m[at + xi * xi_step], y[p, q, r] at y_flat[to + p*plane + q*row_length + r*voxel_step].
    scratch_z holds (p, ay, ax) after the pass along z, scratch_zy (p, q, ax) after y."""
    for line in range(36):                                   # (ay, ax): along z
        output_line_to(m, at + line * xi_step, 36 * xi_step, scratch_z, line * BLOCK_C, PLANE)
    for p in range(nz):
        for ax in range(6):
            output_line_to(scratch_z, p * PLANE + ax * BLOCK_C, LINE, scratch_zy, (p * 4 * 6 + ax) * BLOCK_C, LINE)
    for p in range(nz):
        for q in range(ny):
            r = output_line(scratch_zy, (p * 4 + q) * LINE, BLOCK_C)
            voxel = to + p * plane + q * row_length
            store_output4(y_flat, voxel, r[0], b16, relu)
            if nx > 1:
                store_output4(y_flat, voxel + voxel_step, r[1], b16, relu)
            if nx > 2:
                store_output4(y_flat, voxel + 2 * voxel_step, r[2], b16, relu)
            if nx > 3:
                store_output4(y_flat, voxel + 3 * voxel_step, r[3], b16, relu)


@tile_helper
def transform_output_block4(m, bias, relu, first, count, rows, y0, y1, scratch_z, scratch_zy):
    """The output voxels of the tiles first + t, t < count: (A4^T M A4 along each axis) + bias, 16
    output channels at a time, into the voxels that exist (a tile past an edge that is not a
    multiple of 4 is partial), max(0, .) of it if relu. The output is y0 and y1 side by side along
    the channels, as in tile_transforms.py's transform_output_block. m (216, Cout_padded/16, rows, 16)
    flat; bias (Cout_padded,); y0 (N, D, H, W, C0), y1 (N, D, H, W, C1)."""
    n_batch, size_d, size_h, size_w, cout0 = y0.shape
    tiles_d, tiles_h, tiles_w = (size_d + 3) // 4, (size_h + 3) // 4, (size_w + 3) // 4
    n_cblocks = (cout0 + y1.shape[4]) // BLOCK_C
    y0_flat, y1_flat = y0.reshape(y0.size), y1.reshape(y1.size)
    xi_step = n_cblocks * rows * BLOCK_C                   # from M[xi] to M[xi + 1]
    for t in range(count):
        n, td, th, tw = tile_position(first + t, tiles_d, tiles_h, tiles_w)
        nz, ny, nx = min(4, size_d - 4 * td), min(4, size_h - 4 * th), min(4, size_w - 4 * tw)
        corner_voxel = ((n * size_d + 4 * td) * size_h + 4 * th) * size_w + 4 * tw
        for cb in range(n_cblocks):
            target_flat, channels, channel = ((y0_flat, cout0, cb * BLOCK_C) if cb * BLOCK_C < cout0
                                              else (y1_flat, y1.shape[4], cb * BLOCK_C - cout0))
            b16 = load16_at(bias, cb * BLOCK_C)
            output_tile4(m, (cb * rows + t) * BLOCK_C, xi_step, b16, relu, target_flat,
                         corner_voxel * channels + channel, size_h * size_w * channels, size_w * channels, channels,
                         nz, ny, nx, scratch_z, scratch_zy)


# ---- output-gradient tiles (grad-weight) -----------------------------------------------------------
@inlined_tile_helper
def grad_output_tile4(source, at, plane, row_length, voxel_step, dm, to, xi_step, scratch_z, scratch_zy):
    """dM[xi = (az*6 + ay)*6 + ax] = sum_{p,q,r} A4^T[p, az] A4^T[q, ay] A4^T[r, ax] dy[p, q, r] for one
    4x4x4 tile of the output gradient and 16 channels, stored at dm[to + xi * xi_step]; dy[p, q, r] at
    source[at + p*plane + q*row_length + r*voxel_step]. scratch_z holds (az, q, r) after the pass
    along z (6x4x4 vectors), scratch_zy (az, ay, r) after the pass along y (6x6x4)."""
    for q in range(4):
        for r in range(4):
            grad_output_line(source, at + q * row_length + r * voxel_step, plane, scratch_z,
                             (q * 4 + r) * BLOCK_C, 16 * BLOCK_C)
    for az in range(6):
        for r in range(4):
            grad_output_line(scratch_z, (az * 16 + r) * BLOCK_C, 4 * BLOCK_C, scratch_zy, (az * 24 + r) * BLOCK_C,
                             4 * BLOCK_C)
    for line in range(36):                                   # (az, ay): dM[xi] for ax = 0..5
        grad_output_line(scratch_zy, line * 4 * BLOCK_C, BLOCK_C, dm, to + line * 6 * xi_step, xi_step)


@tile_helper
def transform_grad_output_block4(grad_output, first, count, rows, cb_first, cb_end, dm, staged, scratch_z,
                                 scratch_zy):
    """dM[xi, cb, t, :] = (A4 dy_t A4^T along each axis) of the output-gradient tiles first + t,
    t < count, for the output-channel blocks cb_first <= cb < cb_end (16 channels each).
    grad_output (N, D, H, W, Cout); dm (216, Cout_padded/16, rows, 16) flat; staged, scratch_z,
    scratch_zy (216 * 16,). A tile past an edge that is not a multiple of 4, and the last block of
    channels when Cout is not a multiple of 16, are read from `staged` with their zeros
    (`stage_edge_tile4`: a 6x6x6 window whose first 4x4x4 voxels are the tile)."""
    n_batch, size_d, size_h, size_w, cout = grad_output.shape
    tiles_d, tiles_h, tiles_w = (size_d + 3) // 4, (size_h + 3) // 4, (size_w + 3) // 4
    n_cblocks = (cout + BLOCK_C - 1) // BLOCK_C
    g_flat = grad_output.reshape(grad_output.size)
    xi_step = n_cblocks * rows * BLOCK_C                   # from dM[xi] to dM[xi + 1]
    for t in range(count):
        n, td, th, tw = tile_position(first + t, tiles_d, tiles_h, tiles_w)
        iz0, iy0, ix0 = 4 * td, 4 * th, 4 * tw             # the tile's first voxel
        whole = iz0 + 3 < size_d and iy0 + 3 < size_h and ix0 + 3 < size_w
        for cb in range(cb_first, cb_end):
            c0 = cb * BLOCK_C
            to = (cb * rows + t) * BLOCK_C
            if whole and c0 + BLOCK_C <= cout:
                at = (((n * size_d + iz0) * size_h + iy0) * size_w + ix0) * cout + c0
                grad_output_tile4(g_flat, at, size_h * size_w * cout, size_w * cout, cout, dm, to, xi_step,
                                  scratch_z, scratch_zy)
            else:
                stage_edge_tile4(grad_output, g_flat, n, iz0, iy0, ix0, c0, staged)
                grad_output_tile4(staged, 0, PLANE, LINE, BLOCK_C, dm, to, xi_step, scratch_z, scratch_zy)
