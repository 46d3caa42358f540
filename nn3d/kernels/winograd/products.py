"""The matrix products of a block of tiles, one per transformed position xi (algorithm.py's notation:
64 of them for F(2^3, 3^3), 216 for F(4^3, 3^3)), register-blocked like the direct kernels (a tile
of rows x 16 output channels in local variables): the forward's M[xi] = V[xi] U[xi]
(`multiply_block`) and grad-weight's dU[xi] += V[xi]^T dM[xi] (`accumulate_block_products`).

The tile per CPU (`PRODUCT_ROWS`, from the tile width the kernels compile for), rows of
nn3d/kernels/simd.py's 16-lane vectors: on AVX-512, 8 rows (8 zmm accumulators); on AVX2, 6 rows
(12 ymm accumulators, the 16 weights in 2 more, one broadcast: 15 of the 16 registers), then 4-row
tiles for the rows a 6-row tile leaves (a multiple of 16 or 8 rows is 6k, 6k + 4 or
6k + 2 = 6(k - 1) + 4 + 4). Each product sums over the same index in
the same order whatever the tile, so every tile gives the same bits (tests/test_winograd.py).
"""
import numpy as np

from ..jit import inlined_tile_helper, tile_helper
from ..register_tile import BLOCK_C, BLOCK_W, UINT, fma_tile4
from ..simd import add_into16, fma16, load16, load16_at, store16_at

PRODUCT_ROWS = 8 if BLOCK_W == 8 else 6   # rows of a product tile on this CPU: AVX-512 8, AVX2 6
SIXTEEN = np.uint64(BLOCK_C)                  # BLOCK_C, unsigned


@tile_helper
def end_of_6_tiles(rows, block_rows):
    """Where the 6-row tiles stop when block_rows == 6 (rows a multiple of 4, at least 4): the rest is
    a multiple of 4 rows, for the 4-row tiles; 0 (all 4-row tiles) when block_rows == 4."""
    if block_rows != 6:
        return 0
    end6 = rows // 6 * 6
    return end6 - 6 if rows - end6 == 2 else end6


@tile_helper
def multiply_block(v, u_matrix, rows, cin, n_cblocks, block_rows, m, zeros, positions):
    """M[xi, cb, t, :] = sum_ci V[xi, t, ci] U[xi, cb, ci, :] for the transformed positions
    xi < positions (TILE_VALUES = 64 for F(2^3, 3^3), TILE_VALUES_4 = 216 for F(4^3, 3^3)): (rows x Cin) @
    (Cin x 16) per output-channel block cb, a register tile of block_rows = 8 tiles (AVX-512's
    zmm vectors), or 6 then 4 (AVX2; 4 alone when block_rows is 4) x 16 output channels
    at a time. v (positions, rows, Cin_padded) and m (positions, Cout_padded/16, rows, 16) flat, rows
    a multiple of 4 (of 8 when block_rows is 8); u_matrix rows (xi, cb, ci) of 16."""
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    step = np.uint64(cin_padded)                           # from one V row (tile) to the next
    cin_u = np.uint64(cin)
    end8 = rows if block_rows == 8 else 0
    end6 = end8 if block_rows == 8 else end_of_6_tiles(rows, block_rows)
    u_flat = u_matrix.reshape(u_matrix.size)
    zeros_flat = zeros.reshape(zeros.size)
    for xi in range(positions):
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
                    u_row = load16(u_matrix, u_0 + ci)
                    acc0 = fma16(acc0, v[v_0 + ci], u_row)
                    acc1 = fma16(acc1, v[v_1 + ci], u_row)
                    acc2 = fma16(acc2, v[v_2 + ci], u_row)
                    acc3 = fma16(acc3, v[v_3 + ci], u_row)
                    acc4 = fma16(acc4, v[v_4 + ci], u_row)
                    acc5 = fma16(acc5, v[v_5 + ci], u_row)
                    acc6 = fma16(acc6, v[v_6 + ci], u_row)
                    acc7 = fma16(acc7, v[v_7 + ci], u_row)
                to = np.uint64((m_0 + t0) * BLOCK_C)
                store16_at(m, to, acc0)
                store16_at(m, to + np.uint64(BLOCK_C), acc1)
                store16_at(m, to + np.uint64(2 * BLOCK_C), acc2)
                store16_at(m, to + np.uint64(3 * BLOCK_C), acc3)
                store16_at(m, to + np.uint64(4 * BLOCK_C), acc4)
                store16_at(m, to + np.uint64(5 * BLOCK_C), acc5)
                store16_at(m, to + np.uint64(6 * BLOCK_C), acc6)
                store16_at(m, to + np.uint64(7 * BLOCK_C), acc7)
            for t0 in range(end8, end6, 6):
                v_0 = np.uint64((xi * rows + t0) * cin_padded)
                v_1 = v_0 + step
                v_2 = v_1 + step
                v_3 = v_2 + step
                v_4 = v_3 + step
                v_5 = v_4 + step
                acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = load16_at(zeros_flat, UINT[0])
                for ci in range(cin_u):
                    u_row = load16_at(u_flat, (u_0 + ci) * SIXTEEN)
                    acc0 = fma16(acc0, v[v_0 + ci], u_row)
                    acc1 = fma16(acc1, v[v_1 + ci], u_row)
                    acc2 = fma16(acc2, v[v_2 + ci], u_row)
                    acc3 = fma16(acc3, v[v_3 + ci], u_row)
                    acc4 = fma16(acc4, v[v_4 + ci], u_row)
                    acc5 = fma16(acc5, v[v_5 + ci], u_row)
                to = np.uint64((m_0 + t0) * BLOCK_C)
                store16_at(m, to, acc0)
                store16_at(m, to + SIXTEEN, acc1)
                store16_at(m, to + UINT[2] * SIXTEEN, acc2)
                store16_at(m, to + UINT[3] * SIXTEEN, acc3)
                store16_at(m, to + UINT[4] * SIXTEEN, acc4)
                store16_at(m, to + UINT[5] * SIXTEEN, acc5)
            for t0 in range(end6, rows, 4):
                v_0 = np.uint64((xi * rows + t0) * cin_padded)
                v_1 = v_0 + step
                v_2 = v_1 + step
                v_3 = v_2 + step
                acc0 = acc1 = acc2 = acc3 = load16_at(zeros_flat, UINT[0])
                for ci in range(cin_u):
                    u_row = load16_at(u_flat, (u_0 + ci) * SIXTEEN)
                    acc0 = fma16(acc0, v[v_0 + ci], u_row)
                    acc1 = fma16(acc1, v[v_1 + ci], u_row)
                    acc2 = fma16(acc2, v[v_2 + ci], u_row)
                    acc3 = fma16(acc3, v[v_3 + ci], u_row)
                to = np.uint64((m_0 + t0) * BLOCK_C)
                store16_at(m, to, acc0)
                store16_at(m, to + SIXTEEN, acc1)
                store16_at(m, to + UINT[2] * SIXTEEN, acc2)
                store16_at(m, to + UINT[3] * SIXTEEN, acc3)


@tile_helper
def add_or_store16(flat, at, v, fresh):
    """flat[at:at + 16] += the vector v (`at` unsigned); = v when `fresh` (its first sum: the partial
    dU is never zeroed)."""
    if fresh:
        store16_at(flat, at, v)
    else:
        add_into16(flat, at, v)


@inlined_tile_helper
def add_rows4_into(flat, at, row_step, tile, fresh):
    """`add_or_store16` of tile[q] at flat[at + q*row_step] for q < 4."""
    add_or_store16(flat, at, tile[0], fresh)
    add_or_store16(flat, at + row_step, tile[1], fresh)
    add_or_store16(flat, at + UINT[2] * row_step, tile[2], fresh)
    add_or_store16(flat, at + UINT[3] * row_step, tile[3], fresh)


@tile_helper
def accumulate_block_products(v, dm_matrix, count, rows, cin_padded, n_cblocks, cb_first, cb_end, block_rows,
                              du, fresh, zeros, positions):
    """dU[xi, ci, 16cb:16cb+16] += sum_{t < count} V[xi, t, ci] dM[xi, cb, t, :] for the transformed
    positions xi < positions (64 for F(2^3, 3^3), 216 for F(4^3, 3^3)) and the output-channel blocks
    cb_first <= cb < cb_end:
    (Cin x count) @ (count x 16) per output-channel block cb, a register tile of block_rows = 8
    input channels (AVX-512), or 6 then 4 (AVX2) x 16 output channels that runs over the block's
    tiles (per tile: one load of 16 dM values, a broadcast of V and an FMA per row), then is added
    into dU. v (positions, rows, Cin_padded) flat; dm_matrix rows (xi, cb, t) of 16;
    du (positions, Cin_padded, Cout_padded) flat."""
    row_u = np.uint64(cin_padded)                          # from V[xi, t] to V[xi, t + 1]
    du_row = np.uint64(n_cblocks * BLOCK_C)                # from dU[xi, ci] to dU[xi, ci + 1]
    count_u = np.uint64(count)
    end8 = cin_padded if block_rows == 8 else 0
    end6 = end8 if block_rows == 8 else end_of_6_tiles(cin_padded, block_rows)
    dm_flat = dm_matrix.reshape(dm_matrix.size)
    zeros_flat = zeros.reshape(zeros.size)
    for xi in range(positions):
        for cb in range(cb_first, cb_end):
            dm_0 = np.uint64((xi * n_cblocks + cb) * rows)
            # AVX-512's 8-row tile stays written out: it cannot be timed on AVX2 (docs/performance.md)
            for ci0 in range(0, end8, 8):
                v_0 = np.uint64(xi * rows * cin_padded + ci0)
                acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = load16(zeros, 0)
                for t in range(count_u):
                    dm_row = load16(dm_matrix, dm_0 + t)
                    at = v_0 + t * row_u
                    acc0 = fma16(acc0, v[at], dm_row)
                    acc1 = fma16(acc1, v[at + UINT[1]], dm_row)
                    acc2 = fma16(acc2, v[at + UINT[2]], dm_row)
                    acc3 = fma16(acc3, v[at + UINT[3]], dm_row)
                    acc4 = fma16(acc4, v[at + UINT[4]], dm_row)
                    acc5 = fma16(acc5, v[at + UINT[5]], dm_row)
                    acc6 = fma16(acc6, v[at + UINT[6]], dm_row)
                    acc7 = fma16(acc7, v[at + UINT[7]], dm_row)
                to = np.uint64((xi * cin_padded + ci0) * n_cblocks * BLOCK_C + cb * BLOCK_C)
                add_or_store16(du, to, acc0, fresh)
                add_or_store16(du, to + du_row, acc1, fresh)
                add_or_store16(du, to + UINT[2] * du_row, acc2, fresh)
                add_or_store16(du, to + UINT[3] * du_row, acc3, fresh)
                add_or_store16(du, to + UINT[4] * du_row, acc4, fresh)
                add_or_store16(du, to + UINT[5] * du_row, acc5, fresh)
                add_or_store16(du, to + UINT[6] * du_row, acc6, fresh)
                add_or_store16(du, to + UINT[7] * du_row, acc7, fresh)
            for ci0 in range(end8, end6, 6):
                v_0 = np.uint64(xi * rows * cin_padded + ci0)
                acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = load16_at(zeros_flat, UINT[0])
                for t in range(count_u):
                    dm_row = load16_at(dm_flat, (dm_0 + t) * SIXTEEN)
                    at = v_0 + t * row_u
                    acc0 = fma16(acc0, v[at], dm_row)
                    acc1 = fma16(acc1, v[at + UINT[1]], dm_row)
                    acc2 = fma16(acc2, v[at + UINT[2]], dm_row)
                    acc3 = fma16(acc3, v[at + UINT[3]], dm_row)
                    acc4 = fma16(acc4, v[at + UINT[4]], dm_row)
                    acc5 = fma16(acc5, v[at + UINT[5]], dm_row)
                to = np.uint64((xi * cin_padded + ci0) * n_cblocks * BLOCK_C + cb * BLOCK_C)
                add_or_store16(du, to, acc0, fresh)
                add_or_store16(du, to + du_row, acc1, fresh)
                add_or_store16(du, to + UINT[2] * du_row, acc2, fresh)
                add_or_store16(du, to + UINT[3] * du_row, acc3, fresh)
                add_or_store16(du, to + UINT[4] * du_row, acc4, fresh)
                add_or_store16(du, to + UINT[5] * du_row, acc5, fresh)
            for ci0 in range(end6, cin_padded, 4):
                v_0 = np.uint64(xi * rows * cin_padded + ci0)
                zero = load16_at(zeros_flat, UINT[0])
                tile = (zero, zero, zero, zero)                    # input channels ci0 .. ci0 + 3
                for t in range(count_u):
                    tile = fma_tile4(tile, v, v_0 + t * row_u, UINT[1], load16_at(dm_flat, (dm_0 + t) * SIXTEEN))
                to = np.uint64((xi * cin_padded + ci0) * n_cblocks * BLOCK_C + cb * BLOCK_C)
                add_rows4_into(du, to, du_row, tile, fresh)
