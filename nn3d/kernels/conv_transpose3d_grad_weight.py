"""Grad-weight of the transposed 3-D convolution for kernel == stride, padding 0: line (4) of
nn3d/kernels/conv_transpose3d.py's header (read its notation first), as per-chunk partial sums added
in a fixed order. Its plain NumPy version is conv_transpose3d_grad_weight_reference in
nn3d/kernels/reference.py.

Grad-weight (4), `conv_transpose3d_blocks_grad_weight_kernel`: a tile is BLOCK_J input channels ci
  x 16 output channels of one kernel offset; it runs over the voxels of a chunk (one load of 16
  values of dy, BLOCK_J broadcasts of x, BLOCK_J FMAs per voxel). A work item is (chunk of input rows,
  offset (kz, ky, kx), block of 16 output channels): it writes its own slice of the chunk's partial
  sum. The chunks are fixed by the shapes (`grad_weight_partition`), never by the thread count, and
  `sum_partials` adds them in chunk order in parallel: the same bits on any number of threads.
"""
import numpy as np
from numba import prange

from ..core import arena
from .jit import blocked_kernel, parallel_kernel
from .partial_sums import WORK_ITEMS, sum_partials
from .register_tile import (BLOCK_C, BLOCK_J, UINT, fma16, fma_tile4, fma_tile8, load16, load_tile4, load_tile8,
                            padded_channels, store16, store_tile4, store_tile8)


# float32 values a grad-weight chunk's data may take so that its sweeps stay in one core's L2: 512 KiB
# (all of Zen 2's L2, half of a 1 MiB one; larger chunks are slower, docs/performance.md).
L2_VALUES = 131072


@parallel_kernel
def unpack_grad_weight_kernel(total, grad_weight):
    """grad_weight[ci, co, kz, ky, kx] = total[ci, kz, ky, kx, co] (grad-weight's layout, its padding
    channels dropped). One work item per (ci, co)."""
    cin, cout, kernel_d, kernel_h, kernel_w = grad_weight.shape
    for item in prange(cin * cout):
        ci, co = item // cout, item % cout
        for kz in range(kernel_d):
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    grad_weight[ci, co, kz, ky, kx] = total[ci, kz, ky, kx, co]


@blocked_kernel
def conv_transpose3d_blocks_grad_weight_kernel(x, grad_output, rows_per_chunk, block_j, partial):
    """Line (4) for kernel == stride, padding 0, as per-chunk partial sums:
    partial[chunk, ci, kz, ky, kx, co] = sum over the voxels of the input rows (n, id, ih) of chunk
    `chunk` (rows_per_chunk consecutive rows) of x[n, id, ih, iw, ci] * dy[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co].

    x (N, D, H, W, Cin) C-contiguous; grad_output (N, D*kD, H*kH, W*kW, Cout_padded) C-contiguous,
    its channels padded with zeros to a multiple of 16; partial (n_chunks, Cin, kD, kH, kW,
    Cout_padded); block_j = BLOCK_J (8 or 4). Work items: one prange iteration per (chunk, column
    (kz, ky, kx, cb)); it writes partial[chunk, :, kz, ky, kx, 16cb:16cb+16] and nothing else.
    Differs from conv_transpose3d_grad_weight_reference in loop order only: a tile of input channels
    x 16 output channels stays in registers while the loop runs over every voxel of the chunk: 8
    channels ci0..ci0+7 (`tile8`) when block_j == 8, then 4 while at least 4 are left, then single
    channels. Why this order: the chunk (its x rows and this column of its dy rows) is sized to stay in
    L2 (`grad_weight_partition`), so the sweeps of the tiles after the first read it from cache; the
    accumulators are written once per sweep, not per voxel. For each voxel, the tile reads one vector
    of 16 values of dy (the voxel's block, offset (kz, ky, kx)) and broadcasts its 8 (or 4) inputs x.
    The sweep is ONE loop over the chunk's voxels, whose dy offsets are listed first (g_voxels): with
    a loop over rows and one over the voxels of a row, LLVM takes the tile apart into scalars and
    rebuilds it at every step, several times slower (docs/performance.md).
    """
    n_chunks, cin, kernel_d, kernel_h, kernel_w, cout_padded = partial.shape
    n_batch, in_d, in_h, in_w = x.shape[:4]
    out_d, out_h, out_w = grad_output.shape[1:4]
    n_cblocks = cout_padded // BLOCK_C
    n_columns = kernel_d * kernel_h * kernel_w * n_cblocks
    n_rows = n_batch * in_d * in_h
    x_flat = x.reshape(x.size)
    g_tiles = grad_output.reshape(grad_output.size // BLOCK_C, BLOCK_C)   # rows (n, od, oh, ow, cb)
    partial_tiles = partial.reshape(partial.size // BLOCK_C, BLOCK_C)    # rows (chunk, ci, column)
    x_step = np.uint64(cin)                      # x_flat offsets between neighbouring voxels of a row
    g_step = kernel_w * n_cblocks                # g_tiles rows between the blocks of neighbouring voxels
    ci_step = np.uint64(n_columns)               # partial_tiles rows between neighbouring ci
    end8 = cin // 8 * 8 if block_j == 8 else 0             # channels [0, end8) in tiles of 8
    end4 = end8 + (cin - end8) // 4 * 4                    # [end8, end4) in tiles of 4, then singles
    zero_tile = np.zeros((1, BLOCK_C), dtype=partial.dtype)
    for item in prange(n_chunks * n_columns):
        chunk = np.int64(item) // n_columns
        column = np.int64(item) % n_columns
        kz = column // (kernel_h * kernel_w * n_cblocks)
        ky = column // (kernel_w * n_cblocks) % kernel_h
        kx = column // n_cblocks % kernel_w
        cb = column % n_cblocks
        first_row = chunk * rows_per_chunk
        chunk_rows = min(rows_per_chunk, n_rows - first_row)
        # g_voxels[p]: the g_tiles row of dy[n, id*kD+kz, ih*kH+ky, iw*kW+kx, 16cb] for the chunk's
        # p-th voxel (n, id, ih, iw); the chunk's inputs are consecutive in x, from x_flat[x_start]
        g_voxels = np.empty(chunk_rows * in_w, dtype=np.uint64)
        for r in range(chunk_rows):
            row = first_row + r
            n = row // (in_d * in_h)
            id = row // in_h % in_d
            ih = row % in_h
            g_row = (((n * out_d + id * kernel_d + kz) * out_h + ih * kernel_h + ky) * out_w + kx) * n_cblocks + cb
            for iw in range(in_w):
                g_voxels[r * in_w + iw] = g_row + iw * g_step
        x_start = np.uint64(first_row * in_w * cin)
        n_voxels = np.uint64(chunk_rows * in_w)
        p_0 = np.uint64(chunk * cin * n_columns + column)   # partial_tiles row of (chunk, ci = 0, column)
        for ci0 in range(0, end8, 8):
            tile8 = load_tile8(zero_tile, UINT[0], UINT[0])
            for p in range(n_voxels):
                tile8 = fma_tile8(tile8, x_flat, x_start + p * x_step + np.uint64(ci0), UINT[1],
                                  load16(g_tiles, g_voxels[p]))
            store_tile8(partial_tiles, p_0 + np.uint64(ci0) * ci_step, ci_step, tile8)
        for ci0 in range(end8, end4, 4):
            tile4 = load_tile4(zero_tile, UINT[0], UINT[0])
            for p in range(n_voxels):
                tile4 = fma_tile4(tile4, x_flat, x_start + p * x_step + np.uint64(ci0), UINT[1],
                                  load16(g_tiles, g_voxels[p]))
            store_tile4(partial_tiles, p_0 + np.uint64(ci0) * ci_step, ci_step, tile4)
        for ci0 in range(end4, cin):
            acc = load16(zero_tile, UINT[0])
            for p in range(n_voxels):
                acc = fma16(acc, x_flat[x_start + p * x_step + np.uint64(ci0)], load16(g_tiles, g_voxels[p]))
            store16(partial_tiles, p_0 + np.uint64(ci0) * ci_step, acc)


def grad_weight_partition(input_shape, kernel_size, cout):
    """The grad-weight kernel's work items for x (N, D, H, W, Cin) = input_shape, from the shapes
    alone (never the thread count, so the sums are the same on any machine): (n_chunks,
    rows_per_chunk, n_columns), n_chunks * n_columns items. Enough chunks of input rows for
    WORK_ITEMS items, so that 32 cores have work on every up-convolution of the U-Net, and enough
    that a chunk's x rows and one column of its dy rows (W*(Cin + 16) values per row) fit in
    L2_VALUES; at most one per row. 64^3 U-Net: up3 1 chunk x 32 columns, up2 3 x 16, up1 12 x 8
    (128^3: 5 x 32, 20 x 16, 96 x 8)."""
    n_batch, d, h, w, cin = input_shape
    n_columns = int(np.prod(kernel_size)) * padded_channels(cout) // BLOCK_C
    n_rows = n_batch * d * h
    for_items = -(-WORK_ITEMS // n_columns)
    for_cache = -(-n_rows * w * (cin + BLOCK_C) // L2_VALUES)
    n_chunks = max(1, min(n_rows, max(for_items, for_cache)))
    rows_per_chunk = -(-n_rows // n_chunks)
    return -(-n_rows // rows_per_chunk), rows_per_chunk, n_columns   # (rounding up may leave fewer chunks)


def conv_transpose3d_blocks_grad_weight_work_items(input_shape, kernel_size, cout):
    """The parallel work items of `conv_transpose3d_blocks_grad_weight_kernel` for an input
    (N, D, H, W, Cin): (chunk of input rows, column (kz, ky, kx, cb)) pairs."""
    n_chunks, _, n_columns = grad_weight_partition(input_shape, kernel_size, cout)
    return n_chunks * n_columns


def conv_transpose3d_blocks_grad_weight(x, grad_output, kernel_size, cout, block_j=BLOCK_J):
    """Line (4), kernel == stride, padding 0: dL/dweight (Cin, Cout, kD, kH, kW) from
    x (N, D, H, W, Cin) and grad_output (N, D*kD, H*kH, W*kW, Cout); block_j: the register tile
    width (this CPU's BLOCK_J by default)."""
    cin = x.shape[4]
    kernel_d, kernel_h, kernel_w = kernel_size
    cout_padded = padded_channels(cout)
    if cout_padded != cout:                      # channels padded with zeros to whole blocks of 16
        padded = arena.zeros((*grad_output.shape[:4], cout_padded), grad_output.dtype)
        padded[..., :cout] = grad_output
        grad_output = padded                     # (N, D*kD, H*kH, W*kW, Cout_padded)
    n_chunks, rows_per_chunk, _ = grad_weight_partition(x.shape, kernel_size, cout)
    partial = np.empty((n_chunks, cin, kernel_d, kernel_h, kernel_w, cout_padded), x.dtype)
    conv_transpose3d_blocks_grad_weight_kernel(np.ascontiguousarray(x), np.ascontiguousarray(grad_output),
                                               np.int64(rows_per_chunk), np.int64(block_j), partial)
    total = sum_partials(partial)                       # (Cin, kD, kH, kW, Cout_padded), chunk order
    grad_weight = np.empty((cin, cout, *kernel_size), x.dtype)                  # (Cin, Cout, kD, kH, kW)
    unpack_grad_weight_kernel(total, grad_weight)
    return grad_weight
