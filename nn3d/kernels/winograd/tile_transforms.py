"""The transforms of one block of tiles, 16 channels at a time: the input transform V = B^T along
each axis of d (`transform_input_block`), the output transform y = A^T along each axis of M plus the
bias (`transform_output_block`) and the output-gradient transform dM = A along each axis of dy
(`transform_grad_output_block`, grad_weight.py's). Tiles at the volume's faces are first staged with
their zeros into a small buffer (`tile_source`, `stage_edge_tile`); every other tile is read where it
lies, so no padded copy of the input is made. The notation is algorithm.py's.
"""
import numpy as np

from ..jit import inlined_tile_helper, tile_helper
from ..register_tile import BLOCK_C, UINT, store4x16_at
from ..simd import add16, load16_at, relu16, store16_at, sub16
from .algorithm import TILE_VALUES


# ---- the 1-D transforms and the tile numbering ---------------------------------------------------
@tile_helper
def input_transform_1d(d0, d1, d2, d3):
    """B^T (d0, d1, d2, d3) = (d0 - d2, d1 + d2, d2 - d1, d3 - d1), on 16-channel vectors."""
    return sub16(d0, d2), add16(d1, d2), sub16(d2, d1), sub16(d3, d1)


@tile_helper
def output_transform_1d(m0, m1, m2, m3):
    """A^T (m0, m1, m2, m3) = (m0 + m1 + m2, m1 - m2 + m3), on 16-channel vectors."""
    return add16(add16(m0, m1), m2), add16(sub16(m1, m2), m3)


@tile_helper
def grad_output_transform_1d(dy0, dy1):
    """A (dy0, dy1) = (dy0, dy0 + dy1, dy0 - dy1, dy1) on 16-channel vectors (A = (A^T)^T: grad_weight.py,
    section 1)."""
    return dy0, add16(dy0, dy1), sub16(dy0, dy1), dy1


def tile_count(shape):
    """The 2x2x2 output tiles of a volume (N, D, H, W, ...): N * ceil(D/2) * ceil(H/2) * ceil(W/2)."""
    return shape[0] * ((shape[1] + 1) // 2) * ((shape[2] + 1) // 2) * ((shape[3] + 1) // 2)


@inlined_tile_helper
def tile_position(tile, tiles_d, tiles_h, tiles_w):
    """Tile number t = ((n * tiles_d + td) * tiles_h + th) * tiles_w + tw -> (n, td, th, tw)."""
    return (tile // (tiles_w * tiles_h * tiles_d), tile // (tiles_w * tiles_h) % tiles_d,
            tile // tiles_w % tiles_h, tile % tiles_w)


# ---- input tiles ---------------------------------------------------------------------------------
# The transforms of one tile and 16 channels. The helper a block's loop calls per tile (`input_tile`,
# `output_tile_plane`) is an `inlined_tile_helper`; the helpers it calls are plain `tile_helper`s,
# which LLVM inlines into it (nn3d/kernels/jit.py says why no deeper). A whole 4x4x4 tile of
# 16-channel vectors does not fit in the 32 vector registers, one plane of it does: each plane of the
# transformed tile is B^T along z for its 16 positions, read straight from the tile's voxels, then
# B^T along y and along x in registers, stored once. Per tile and 16 channels that is 128 vector
# loads and 64 stores (one pass per axis through scratch tiles would take 192 of each).
@tile_helper
def input_voxel_along_z(source, voxel, plane, az):
    """(B^T d[:, j, k])[az] for the tile's column (j, k), whose d[i, j, k] is at source[voxel + i*plane]
    (unsigned). `az` is a constant where this is inlined: the loads and sums of B^T's other rows
    compile to nothing."""
    return input_transform_1d(load16_at(source, voxel), load16_at(source, voxel + plane),
                              load16_at(source, voxel + UINT[2] * plane),
                              load16_at(source, voxel + UINT[3] * plane))[az]


@tile_helper
def input_row_along_z(source, row, plane, voxel_step, az):
    """input_voxel_along_z for the four columns (j, k), k = 0..3, of the row whose d[0, j, 0] is at
    source[row] (voxels voxel_step apart)."""
    return (input_voxel_along_z(source, row, plane, az), input_voxel_along_z(source, row + voxel_step, plane, az),
            input_voxel_along_z(source, row + UINT[2] * voxel_step, plane, az),
            input_voxel_along_z(source, row + UINT[3] * voxel_step, plane, az))


@tile_helper
def input_tile_plane(source, at, plane, row_length, voxel_step, az, v, to, xi_step):
    """V[xi = (az*4 + ay)*4 + ax] = sum_{i,j,k} B^T[az, i] B^T[ay, j] B^T[ax, k] d[i, j, k] for
    ay, ax = 0..3 (plane az of the transformed tile), stored at v[to + xi * xi_step]; d[i, j, k] at
    source[at + i*plane + j*row_length + k*voxel_step] (all unsigned)."""
    z0 = input_row_along_z(source, at, plane, voxel_step, az)                   # z0[k] = row j = 0, B^T along z done
    z1 = input_row_along_z(source, at + row_length, plane, voxel_step, az)
    z2 = input_row_along_z(source, at + UINT[2] * row_length, plane, voxel_step, az)
    z3 = input_row_along_z(source, at + UINT[3] * row_length, plane, voxel_step, az)
    zy0 = input_transform_1d(z0[0], z1[0], z2[0], z3[0])                        # zy0[ay] = column k = 0, along y done
    zy1 = input_transform_1d(z0[1], z1[1], z2[1], z3[1])
    zy2 = input_transform_1d(z0[2], z1[2], z2[2], z3[2])
    zy3 = input_transform_1d(z0[3], z1[3], z2[3], z3[3])
    plane_at = to + np.uint64(16 * az) * xi_step                                # V[az, 0, 0]
    ay_step = UINT[4] * xi_step                                                 # V[az, ay] to V[az, ay + 1]
    store4x16_at(v, plane_at, xi_step, input_transform_1d(zy0[0], zy1[0], zy2[0], zy3[0]))  # x done, ay = 0
    store4x16_at(v, plane_at + ay_step, xi_step, input_transform_1d(zy0[1], zy1[1], zy2[1], zy3[1]))
    store4x16_at(v, plane_at + UINT[2] * ay_step, xi_step, input_transform_1d(zy0[2], zy1[2], zy2[2], zy3[2]))
    store4x16_at(v, plane_at + UINT[3] * ay_step, xi_step, input_transform_1d(zy0[3], zy1[3], zy2[3], zy3[3]))


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
    return staged, UINT[0], np.uint64(16 * BLOCK_C), np.uint64(4 * BLOCK_C), np.uint64(BLOCK_C)


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


# ---- output tiles --------------------------------------------------------------------------------
# The output transform of one tile and 16 channels, one output plane p at a time like the input
# transform: A^T along z for the plane's 16 positions, read straight from M, then A^T along y and along
# x in registers, plus the bias, stored to y (per tile and 16 channels 96 vector loads and 8 stores).
@tile_helper
def output_row_along_z(m, row, az_step, xi_step, p):
    """(A^T M[:, ay, ax])[p] for ax = 0..3, the row (ay) whose M[az, ay, ax] is at
    m[row + az*az_step + ax*xi_step]
    (all unsigned). `p` is a constant where this is inlined: the other row of A^T compiles to nothing."""
    ax1, ax2, ax3 = row + xi_step, row + UINT[2] * xi_step, row + UINT[3] * xi_step
    return (output_transform_1d(load16_at(m, row), load16_at(m, row + az_step),
                                load16_at(m, row + UINT[2] * az_step), load16_at(m, row + UINT[3] * az_step))[p],
            output_transform_1d(load16_at(m, ax1), load16_at(m, ax1 + az_step),
                                load16_at(m, ax1 + UINT[2] * az_step), load16_at(m, ax1 + UINT[3] * az_step))[p],
            output_transform_1d(load16_at(m, ax2), load16_at(m, ax2 + az_step),
                                load16_at(m, ax2 + UINT[2] * az_step), load16_at(m, ax2 + UINT[3] * az_step))[p],
            output_transform_1d(load16_at(m, ax3), load16_at(m, ax3 + az_step),
                                load16_at(m, ax3 + UINT[2] * az_step), load16_at(m, ax3 + UINT[3] * az_step))[p])


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
    """y[p, q, r] = sum_{az,ay,ax} A^T[p, az] A^T[q, ay] A^T[r, ax] M[(az*4 + ay)*4 + ax] + bias (then max(0, .) if
    relu) for q, r = 0, 1 (plane p of the output tile), M[xi] at m[at + xi * xi_step], for the voxels
    that exist: y[p, 0, 0] at y_flat[to], y[p, q, r] at to + q*row_length + r*voxel_step if q1_inside
    (for q = 1) and r1_inside (for r = 1)."""
    az_step = np.uint64(16) * xi_step                                           # M[az, ay, ax] to M[az + 1, ay, ax]
    ay_step = UINT[4] * xi_step                                                 # M[az, ay, ax] to M[az, ay + 1, ax]
    z0 = output_row_along_z(m, at, az_step, xi_step, p)  # z0[ax] = row ay = 0, A^T along z done
    z1 = output_row_along_z(m, at + ay_step, az_step, xi_step, p)
    z2 = output_row_along_z(m, at + UINT[2] * ay_step, az_step, xi_step, p)
    z3 = output_row_along_z(m, at + UINT[3] * ay_step, az_step, xi_step, p)
    zy0 = output_transform_1d(z0[0], z1[0], z2[0], z3[0])                       # zy0[q] = column ax = 0, along y done
    zy1 = output_transform_1d(z0[1], z1[1], z2[1], z3[1])
    zy2 = output_transform_1d(z0[2], z1[2], z2[2], z3[2])
    zy3 = output_transform_1d(z0[3], z1[3], z2[3], z3[3])
    store_output_pair(y_flat, to, voxel_step, output_transform_1d(zy0[0], zy1[0], zy2[0], zy3[0]), b16, relu,
                      r1_inside)                                             # x done, q = 0
    if q1_inside:
        store_output_pair(y_flat, to + row_length, voxel_step, output_transform_1d(zy0[1], zy1[1], zy2[1], zy3[1]),
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


# ---- output-gradient tiles -----------------------------------------------------------------------
# The transform of one output-gradient tile and 16 channels, inlined and one plane of the transformed
# tile at a time like the input transform (A along z read straight from the tile's voxels,
# then along y and x in registers, stored once: per tile 24 vector loads and 64 stores).
@tile_helper
def grad_output_row_along_z(source, row, plane, voxel_step, az):
    """(A dy[:, q, r])[az] for r = 0, 1, the row (q) of the tile whose dy[p, q, r] is at
    source[row + p*plane + r*voxel_step] (all unsigned); `az` a constant where this is inlined."""
    return (grad_output_transform_1d(load16_at(source, row), load16_at(source, row + plane))[az],
            grad_output_transform_1d(load16_at(source, row + voxel_step),
                                     load16_at(source, row + voxel_step + plane))[az])


@inlined_tile_helper
def grad_output_tile_plane(source, at, plane, row_length, voxel_step, az, dm, to, xi_step):
    """dM[xi = (az*4 + ay)*4 + ax] = sum_{p,q,r} A[az, p] A[ay, q] A[ax, r] dy[p, q, r] for ay, ax = 0..3
    (plane az of the transformed tile), stored at dm[to + xi * xi_step]; dy[p, q, r] at
    source[at + p*plane + q*row_length + r*voxel_step] (all unsigned)."""
    z0 = grad_output_row_along_z(source, at, plane, voxel_step, az)             # z0[r] = row q = 0, A along z done
    z1 = grad_output_row_along_z(source, at + row_length, plane, voxel_step, az)
    zy0 = grad_output_transform_1d(z0[0], z1[0])                                # zy0[ay] = column r = 0, along y done
    zy1 = grad_output_transform_1d(z0[1], z1[1])
    plane_at = to + np.uint64(16 * az) * xi_step                                # dM[az, 0, 0]
    ay_step = UINT[4] * xi_step                                                 # dM[az, ay] to dM[az, ay + 1]
    store4x16_at(dm, plane_at, xi_step, grad_output_transform_1d(zy0[0], zy1[0]))  # x done, ay = 0
    store4x16_at(dm, plane_at + ay_step, xi_step, grad_output_transform_1d(zy0[1], zy1[1]))
    store4x16_at(dm, plane_at + UINT[2] * ay_step, xi_step, grad_output_transform_1d(zy0[2], zy1[2]))
    store4x16_at(dm, plane_at + UINT[3] * ay_step, xi_step, grad_output_transform_1d(zy0[3], zy1[3]))


@tile_helper
def transform_grad_output_block(grad_output, first, count, rows, cb_first, cb_end, dm, staged):
    """dM[xi, cb, t, :] = (A dy_t A^T along each axis) of the output-gradient tiles first + t, t < count,
    for the output-channel blocks cb_first <= cb < cb_end (16 channels each).
    grad_output (N, D, H, W, Cout); dm (64, Cout_padded/16, rows, 16) flat; staged (4 * 4 * 4 * 16,).
    A tile sticking out of an odd-sized volume, and the last block of channels when Cout is not a
    multiple of 16, are read from `staged` (`tile_source`: a 4x4x4 window with zeros
    outside the volume, whose first 2x2x2 voxels are the tile)."""
    n_batch, size_d, size_h, size_w, cout = grad_output.shape
    tiles_d, tiles_h, tiles_w = (size_d + 1) // 2, (size_h + 1) // 2, (size_w + 1) // 2
    n_cblocks = (cout + BLOCK_C - 1) // BLOCK_C
    g_flat = grad_output.reshape(grad_output.size)
    xi_step = np.uint64(n_cblocks * rows * BLOCK_C)                             # from dM[xi] to dM[xi + 1]
    for t in range(count):
        n, td, th, tw = tile_position(first + t, tiles_d, tiles_h, tiles_w)
        iz0, iy0, ix0 = 2 * td, 2 * th, 2 * tw             # the tile's first voxel
        whole = iz0 + 1 < size_d and iy0 + 1 < size_h and ix0 + 1 < size_w
        for cb in range(cb_first, cb_end):
            source, at, plane, row_length, voxel_step = tile_source(grad_output, g_flat, n, iz0, iy0, ix0,
                                                                    cb * BLOCK_C, whole, staged)
            to = np.uint64((cb * rows + t) * BLOCK_C)
            grad_output_tile_plane(source, at, plane, row_length, voxel_step, 0, dm, to, xi_step)
            grad_output_tile_plane(source, at, plane, row_length, voxel_step, 1, dm, to, xi_step)
            grad_output_tile_plane(source, at, plane, row_length, voxel_step, 2, dm, to, xi_step)
            grad_output_tile_plane(source, at, plane, row_length, voxel_step, 3, dm, to, xi_step)
