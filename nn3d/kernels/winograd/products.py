"""The 64 matrix products of a block of tiles, one per transformed position xi (algorithm.py's
notation), register-blocked like the direct kernels (a tile of 8 or 4 rows x 16 output channels in
local variables): the forward's M[xi] = V[xi] U[xi] (`multiply_block`) and grad-weight's
dU[xi] += V[xi]^T W[xi] (`accumulate_block_products`).
"""
import numpy as np

from ..jit import inlined_tile_helper, tile_helper
from ..register_tile import BLOCK_C, UINT, add16, fma16, load16, load16_at, store16_at
from .algorithm import TILE_VALUES


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


@inlined_tile_helper
def add_into16(flat, at, v, fresh):
    """flat[at:at + 16] += the 16-tuple v (`at` unsigned); = v when `fresh` (its first sum: the
    partial dU is never zeroed)."""
    if fresh:
        store16_at(flat, at, v)
    else:
        store16_at(flat, at, add16(load16_at(flat, at), v))


@tile_helper
def accumulate_block_products(v, w_matrix, count, rows, cin_padded, n_cblocks, cb_first, cb_end, block_rows,
                              du, fresh, zeros):
    """dU[xi, ci, 16cb:16cb+16] += sum_{t < count} V[xi, t, ci] W[xi, cb, t, :] for the 64 positions xi
    and the output-channel blocks cb_first <= cb < cb_end:
    (Cin x count) @ (count x 16) per output-channel block cb, a register tile of block_rows = 8
    input channels (else 4) x 16 output channels that runs over the block's tiles (per tile: one
    load of 16 W values, block_rows broadcasts of V, block_rows FMAs), then is added into dU. Both
    tiles are spelled out, like winograd.multiply_block's: written as tuples of 16-tuples (one helper
    for both widths), the accumulators compiled to shuffles and stack spills around every FMA.
    v (64, rows, Cin_padded) flat; w_matrix rows (xi, cb, t) of 16; du (64, Cin_padded,
    Cout_padded) flat."""
    row_u = np.uint64(cin_padded)                          # from V[xi, t] to V[xi, t + 1]
    du_row = np.uint64(n_cblocks * BLOCK_C)                # from dU[xi, ci] to dU[xi, ci + 1]
    count_u = np.uint64(count)
    end8 = cin_padded if block_rows == 8 else 0
    for xi in range(TILE_VALUES):
        for cb in range(cb_first, cb_end):
            w_0 = np.uint64((xi * n_cblocks + cb) * rows)
            for ci0 in range(0, end8, 8):
                v_0 = np.uint64(xi * rows * cin_padded + ci0)
                acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = load16(zeros, 0)
                for t in range(count_u):
                    e = load16(w_matrix, w_0 + t)
                    at = v_0 + t * row_u
                    acc0 = fma16(acc0, v[at], e)
                    acc1 = fma16(acc1, v[at + UINT[1]], e)
                    acc2 = fma16(acc2, v[at + UINT[2]], e)
                    acc3 = fma16(acc3, v[at + UINT[3]], e)
                    acc4 = fma16(acc4, v[at + UINT[4]], e)
                    acc5 = fma16(acc5, v[at + UINT[5]], e)
                    acc6 = fma16(acc6, v[at + UINT[6]], e)
                    acc7 = fma16(acc7, v[at + UINT[7]], e)
                to = np.uint64((xi * cin_padded + ci0) * n_cblocks * BLOCK_C + cb * BLOCK_C)
                add_into16(du, to, acc0, fresh)
                add_into16(du, to + du_row, acc1, fresh)
                add_into16(du, to + UINT[2] * du_row, acc2, fresh)
                add_into16(du, to + UINT[3] * du_row, acc3, fresh)
                add_into16(du, to + UINT[4] * du_row, acc4, fresh)
                add_into16(du, to + UINT[5] * du_row, acc5, fresh)
                add_into16(du, to + UINT[6] * du_row, acc6, fresh)
                add_into16(du, to + UINT[7] * du_row, acc7, fresh)
            for ci0 in range(end8, cin_padded, 4):
                v_0 = np.uint64(xi * rows * cin_padded + ci0)
                acc0 = acc1 = acc2 = acc3 = load16(zeros, 0)
                for t in range(count_u):
                    e = load16(w_matrix, w_0 + t)
                    at = v_0 + t * row_u
                    acc0 = fma16(acc0, v[at], e)
                    acc1 = fma16(acc1, v[at + UINT[1]], e)
                    acc2 = fma16(acc2, v[at + UINT[2]], e)
                    acc3 = fma16(acc3, v[at + UINT[3]], e)
                to = np.uint64((xi * cin_padded + ci0) * n_cblocks * BLOCK_C + cb * BLOCK_C)
                add_into16(du, to, acc0, fresh)
                add_into16(du, to + du_row, acc1, fresh)
                add_into16(du, to + UINT[2] * du_row, acc2, fresh)
                add_into16(du, to + UINT[3] * du_row, acc3, fresh)
