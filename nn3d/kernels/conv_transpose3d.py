"""Transposed 3-D convolution kernels (channels-last) for kernel == stride, padding 0. Plain NumPy
versions of lines (1), (3), (4) for any kernel / stride / padding: conv_transpose3d_*_reference in
nn3d/kernels/reference.py.

Notation: the numbered lines of nn3d/conv_transpose3d.py, with the channel index moved last. Index
names: (id, ih, iw) an input voxel, (kz, ky, kx) a kernel offset, ci / co an input / output channel.

    x            (N, D, H, W, Cin)
    weight       (Cin, Cout, kD, kH, kW)   PyTorch's layout
    y            (N, D*kD, H*kH, W*kW, Cout)
    grad_output  (N, D*kD, H*kH, W*kW, Cout)   G = dL/dy

With kernel == stride and no padding, y_full is y and the kD x kH x kW blocks of different input
voxels do not overlap: input voxel (id, ih, iw) owns the output block
    y[n, id*kD + kz, ih*kH + ky, iw*kW + kx, co],   0 <= kz < kD, 0 <= ky < kH, 0 <= kx < kW,
and lines (1), (3), (4) become per-voxel products with the weight seen as a matrix
w_matrix[ci, (kz, ky, kx, co)] = weight[ci, co, kz, ky, kx]                (Cin, kD*kH*kW*Cout):

    (1) y[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co] = bias[co] + sum_ci x[n, id, ih, iw, ci] * weight[ci, co, kz, ky, kx]
    (3) grad_x[n, id, ih, iw, ci] = sum_{kz, ky, kx, co} G[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co] * weight[ci, co, kz, ky, kx]
    (4) grad_weight[ci, co, kz, ky, kx] = sum_{n, id, ih, iw} x[n, id, ih, iw, ci] * G[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co]

The kernels read and write the blocks where they lie in y and G (no gathered copy of the blocks),
with the register tiles of nn3d/kernels/conv3d.py (`load16`, `fma16`): 16 values of one axis carried
as a 16-tuple (one AVX-512 vector, two AVX2 vectors), times BLOCK_W (8 on AVX-512, 4 on AVX2) values of
another axis, one accumulator each. The width is an argument, so the tests run both widths on any
machine, and the 8-wide loop is followed by 4-wide and single tails.

- Forward (1), `conv_transpose3d_blocks_forward_kernel`: a tile is BLOCK_W neighbouring input voxels
  along W x 16 output channels of one kernel offset (kz, ky, kx); it starts at the bias and runs over
  ci (one 16-weight load, one broadcast of x per voxel, one FMA per voxel), then each accumulator is
  stored straight into its voxel's block of y. One prange iteration per input row (n, id, ih), which
  owns the kD x kH output rows of its blocks.
- Grad-input (3), `conv_transpose3d_blocks_grad_input_kernel`: a tile is BLOCK_W neighbouring input
  voxels x 16 input channels; for each (kz, ky) it runs over the contiguous run of kW*Cout values
  (kx, co) of each voxel's block row in G (one 16-weight load, one broadcast of G per voxel, one FMA
  per voxel). (3) is also Conv3d's forward of G with stride = kernel size (identity (A) of the layer
  file); this kernel differs from Conv3d's in keeping the tile in registers for one run at a time
  (see its docstring). One prange iteration per input row (n, id, ih), which owns that row of grad_x.
- Grad-weight (4), `conv_transpose3d_blocks_grad_weight_kernel`: a tile is BLOCK_J input channels ci
  x 16 output channels of one kernel offset; it runs over the voxels of a chunk (one load of 16
  values of G, BLOCK_J broadcasts of x, BLOCK_J FMAs per voxel). A work item is (chunk of input rows,
  offset (kz, ky, kx), block of 16 output channels): it writes its own slice of the chunk's partial
  sum. The chunks are fixed by the shapes (`grad_weight_partition`), never by the thread count, and
  `sum_partials` adds them in chunk order in parallel: the same bits on any number of threads.
"""
import numpy as np
from numba import prange

from .conv3d import BLOCK_C, BLOCK_J, BLOCK_W, LANE, WORK_ITEMS, fma16, load16, pack_weight
from .jit import blocked_kernel, inlined_tile_helper, parallel_kernel
from .partial_sums import sum_partials
from ..core import arena

ZERO, ONE = LANE[0], LANE[1]   # unsigned 0 and 1 (steps of the tile helpers)
# float32 values a grad-weight chunk's data may take so that its sweeps stay in one core's L2: 512 KiB
# (all of Zen 2's L2, half of a 1 MiB one). Measured on one Zen 4 core, up1 at 64^3: 2.5 ms at 512 KiB
# (12 chunks), 3.2 ms at 1 MiB (6 chunks), 3.5 ms at 2 MiB.
L2_VALUES = 131072


def padded_channels(cout):
    """Cout rounded up to whole register tiles of BLOCK_C = 16 channels."""
    return -(-cout // BLOCK_C) * BLOCK_C


@parallel_kernel
def pack_weight_columns_kernel(weight, w_packed):
    """w_packed[kz, ky, kx, cb, ci, c] = weight[ci, 16*cb + c, kz, ky, kx], zeros for the padding
    channels. One work item per (ci, cb): its 16 channels' kD x kH x kW taps."""
    cin, cout, kernel_d, kernel_h, kernel_w = weight.shape
    n_cblocks = w_packed.shape[3]
    for item in prange(cin * n_cblocks):
        ci, cb = item // n_cblocks, item % n_cblocks
        for kz in range(kernel_d):
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    for c in range(BLOCK_C):
                        co = cb * BLOCK_C + c
                        w_packed[kz, ky, kx, cb, ci, c] = weight[ci, co, kz, ky, kx] if co < cout else 0


def pack_weight_columns(weight):
    """(Cin, Cout, kD, kH, kW) -> w_packed (kD, kH, kW, Cout_padded/16, Cin, 16):
    w_packed[kz, ky, kx, cb, ci, c] = weight[ci, 16*cb + c, kz, ky, kx], zeros for the padding
    channels. The 16 weights that one step of the forward kernel's loop over ci needs are adjacent,
    and so are the Cin steps of one tile's column (kz, ky, kx, cb). A parallel kernel, as Conv3d's
    `pack_weight`: NumPy's one-thread copy was a tenth of the 8^3 layer's 0.25 ms pass."""
    cin, cout, kernel_d, kernel_h, kernel_w = weight.shape
    w_packed = np.empty((kernel_d, kernel_h, kernel_w, padded_channels(cout) // BLOCK_C, cin, BLOCK_C),
                        weight.dtype)
    pack_weight_columns_kernel(weight, w_packed)
    return w_packed


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


# ---- tiles of 4 and 8 accumulators --------------------------------------------------------------
# A register tile is a tuple of 4 (or 8) accumulators, each a 16-tuple (`load16`). The kernels below
# differ only in where the broadcast values and the 16-vectors come from; these helpers are the
# arithmetic they share (an 8-tile is two 4-tiles). Inlined, they leave the loops as vector loads,
# broadcast FMAs and vector stores.
@inlined_tile_helper
def store16(matrix, i, tile):
    """matrix[i, 0:16] = tile, a 16-tuple: one vector store once inlined (a loop `for c in
    range(16): matrix[i, c] = tile[c]` indexes the tuple at run time: 16 scalar stores via a jump table)."""
    matrix[i, 0], matrix[i, 1], matrix[i, 2], matrix[i, 3] = tile[0], tile[1], tile[2], tile[3]
    matrix[i, 4], matrix[i, 5], matrix[i, 6], matrix[i, 7] = tile[4], tile[5], tile[6], tile[7]
    matrix[i, 8], matrix[i, 9], matrix[i, 10], matrix[i, 11] = tile[8], tile[9], tile[10], tile[11]
    matrix[i, 12], matrix[i, 13], matrix[i, 14], matrix[i, 15] = tile[12], tile[13], tile[14], tile[15]


@inlined_tile_helper
def load_tile4(matrix, i, step):
    """(matrix[i + q*step, 0:16] for q < 4): step 0 repeats one row (a bias, or zeros)."""
    return (load16(matrix, i), load16(matrix, i + step), load16(matrix, i + LANE[2] * step),
            load16(matrix, i + LANE[3] * step))


@inlined_tile_helper
def fma_tile4(tile, values, at, step, w):
    """tile[q] + values[at + q*step] * w for q < 4: w a 16-tuple, each value broadcast."""
    return (fma16(tile[0], values[at], w), fma16(tile[1], values[at + step], w),
            fma16(tile[2], values[at + LANE[2] * step], w), fma16(tile[3], values[at + LANE[3] * step], w))


@inlined_tile_helper
def store_tile4(matrix, i, step, tile):
    """matrix[i + q*step, 0:16] = tile[q] for q < 4."""
    store16(matrix, i, tile[0])
    store16(matrix, i + step, tile[1])
    store16(matrix, i + LANE[2] * step, tile[2])
    store16(matrix, i + LANE[3] * step, tile[3])


@inlined_tile_helper
def load_tile8(matrix, i, step):
    """`load_tile4` for q < 8."""
    return load_tile4(matrix, i, step) + load_tile4(matrix, i + LANE[4] * step, step)


@inlined_tile_helper
def fma_tile8(tile, values, at, step, w):
    """`fma_tile4` for q < 8."""
    return fma_tile4(tile[:4], values, at, step, w) + fma_tile4(tile[4:], values, at + LANE[4] * step, step, w)


@inlined_tile_helper
def store_tile8(matrix, i, step, tile):
    """`store_tile4` for q < 8."""
    store_tile4(matrix, i, step, tile[:4])
    store_tile4(matrix, i + LANE[4] * step, step, tile[4:])


# ---- forward: line (1) --------------------------------------------------------------------------
@blocked_kernel
def conv_transpose3d_blocks_forward_kernel(x, w_packed, bias, block_w, y):
    """Line (1) for kernel == stride, padding 0: y (N, D*kD, H*kH, W*kW, Cout_padded) from
    x (N, D, H, W, Cin) C-contiguous, w_packed (kD, kH, kW, Cout_padded/16, Cin, 16) from
    `pack_weight_columns`, bias (Cout_padded/16, 16); block_w = BLOCK_W (8 or 4).

    Each prange iteration owns one input row x[n, id, ih] and so the kD x kH output rows its blocks
    fill. Differs from conv_transpose3d_forward_reference in loop order only: a tile of neighbouring
    input voxels x 16 output channels of one column (kz, ky, kx, cb) of w_matrix stays in registers
    while the loop runs over ci: 8 voxels (`tile8`) when block_w == 8, then 4 while at least 4
    are left in the row, then single voxels. Why this order: the columns are the outer loop and the
    tiles of the row the inner one, so a column's Cin x 16 weights (8 KiB at Cin = 128) stay in L1
    while every tile of the row uses them, and the input row (W*Cin values) stays in L1 across all
    columns; each output value is written once, 16 at a time (a whole 64-byte line).
    The row is first copied transposed, x_t[ci, iw] (Cin*W copies against Cin*W*kD*kH*kW*Cout
    multiply-adds), so that the 8 inputs one step of a tile broadcasts are adjacent: the compiled
    loop reads them at constant offsets from one pointer (one weight load and 8 FMAs with broadcast
    operands per step). Read in place, 8 voxels Cin apart need 8 address registers, which spill.
    All offsets are unsigned (no negative-index checks).
    """
    n_batch, in_d, in_h, in_w, cin = x.shape
    kernel_d, kernel_h, kernel_w, n_cblocks = w_packed.shape[:4]
    out_d, out_h, out_w = y.shape[1:4]
    w_matrix = w_packed.reshape(w_packed.size // BLOCK_C, BLOCK_C)   # rows (kz, ky, kx, cb, ci)
    y_tiles = y.reshape(y.size // BLOCK_C, BLOCK_C)                   # rows (n, od, oh, ow, cb)
    width = np.uint64(in_w)                       # x_t offsets between neighbouring ci
    y_step = np.uint64(kernel_w * n_cblocks)      # y_tiles rows between the blocks of neighbouring voxels
    cin_u = np.uint64(cin)
    end8 = in_w // 8 * 8 if block_w == 8 else 0            # voxels [0, end8) in tiles of 8
    end4 = end8 + (in_w - end8) // 4 * 4                   # [end8, end4) in tiles of 4, then singles
    for row in prange(n_batch * in_d * in_h):
        n = row // (in_d * in_h)
        id = row // in_h % in_d
        ih = row % in_h
        x_t = np.empty((cin, in_w), dtype=x.dtype)         # the input row transposed: x_t[ci, iw]
        for iw in range(in_w):
            for ci in range(cin):
                x_t[ci, iw] = x[n, id, ih, iw, ci]
        x_t_flat = x_t.reshape(x_t.size)
        for kz in range(kernel_d):
            for ky in range(kernel_h):
                y_row = ((n * out_d + id * kernel_d + kz) * out_h + ih * kernel_h + ky) * out_w * n_cblocks
                for kx in range(kernel_w):
                    for cb in range(n_cblocks):
                        w_0 = np.uint64((((kz * kernel_h + ky) * kernel_w + kx) * n_cblocks + cb) * cin)
                        for iw0 in range(0, end8, 8):
                            tile8 = load_tile8(bias, cb, ZERO)
                            for ci in range(cin_u):
                                tile8 = fma_tile8(tile8, x_t_flat, ci * width + np.uint64(iw0), ONE,
                                                  load16(w_matrix, w_0 + ci))
                            store_tile8(y_tiles, np.uint64(y_row + (iw0 * kernel_w + kx) * n_cblocks + cb),
                                        y_step, tile8)
                        for iw0 in range(end8, end4, 4):
                            tile4 = load_tile4(bias, cb, ZERO)
                            for ci in range(cin_u):
                                tile4 = fma_tile4(tile4, x_t_flat, ci * width + np.uint64(iw0), ONE,
                                                  load16(w_matrix, w_0 + ci))
                            store_tile4(y_tiles, np.uint64(y_row + (iw0 * kernel_w + kx) * n_cblocks + cb),
                                        y_step, tile4)
                        for iw0 in range(end4, in_w):
                            acc = load16(bias, cb)
                            for ci in range(cin_u):
                                acc = fma16(acc, x_t_flat[ci * width + np.uint64(iw0)], load16(w_matrix, w_0 + ci))
                            store16(y_tiles, np.uint64(y_row + (iw0 * kernel_w + kx) * n_cblocks + cb), acc)


def conv_transpose3d_blocks_forward(x, weight, bias, block_w=BLOCK_W):
    """Line (1), kernel == stride, padding 0: x (N, D, H, W, Cin) -> y (N, D*kD, H*kH, W*kW, Cout).
    weight (Cin, Cout, kD, kH, kW); bias (Cout,) or None; block_w: the register tile width (this
    CPU's BLOCK_W; the tests pass 4 and 8 to check both paths on any machine)."""
    n_batch, d, h, w, _ = x.shape
    cout, (kernel_d, kernel_h, kernel_w) = weight.shape[1], weight.shape[2:]
    cout_padded = padded_channels(cout)
    bias_padded = np.zeros(cout_padded, x.dtype)
    if bias is not None:
        bias_padded[:cout] = bias
    y = arena.empty((n_batch, d * kernel_d, h * kernel_h, w * kernel_w, cout_padded), x.dtype)
    w_packed = pack_weight_columns(weight.astype(x.dtype, copy=False))
    conv_transpose3d_blocks_forward_kernel(np.ascontiguousarray(x), w_packed,
                                           bias_padded.reshape(-1, BLOCK_C), np.int64(block_w), y)
    return y if cout_padded == cout else arena.copy(y[..., :cout])


# ---- grad-input: line (3) -----------------------------------------------------------------------
@blocked_kernel
def conv_transpose3d_blocks_grad_input_kernel(grad_output, w_packed, block_w, grad_input):
    """Line (3) for kernel == stride, padding 0: grad_input (N, D, H, W, Cin_padded) from
    grad_output (N, D*kD, H*kH, W*kW, Cout) C-contiguous, w_packed (kD, kH, Cin_padded/16,
    kW*Cout, 16): Conv3d's `pack_weight` of the weight read as a Conv3d weight (Cout_conv = Cin,
    Cin_conv = Cout), [kz, ky, cb, j, c] = weight[16*cb + c, co, kz, ky, kx], j = kx*Cout + co;
    block_w = BLOCK_W (8 or 4).

    Each prange iteration owns one row grad_input[n, id, ih]. For a fixed (kz, ky), the block rows
    G[n, id*kD+kz, ih*kH+ky, iw*kW + kx, co] of voxel iw, all (kx, co), are ONE contiguous run of
    kW*Cout values (index j = kx*Cout + co), starting at element iw*kW*Cout of that row of G.
    A tile of neighbouring voxels x 16 input channels runs over j (one 16-weight load, one
    broadcast of G per voxel, one FMA per voxel). Why (kz, ky) is outside the tile: a tile kept in
    registers across two nested loops is taken apart into scalars and rebuilt at every exit of the
    inner loop (LLVM's SLP vectoriser does not carry it as a vector there), which costs more than
    loading and storing the 8 accumulators: so the row of grad_input is zeroed first, and for each
    (kz, ky) the tile is loaded from it, runs over j, and is stored back (the row stays in L1).
    Measured on one core: 1.3x the rate of Conv3d's forward kernel on the same (3), which keeps
    its tile across (kz, ky).
    """
    n_batch, in_d, in_h, in_w, cin_padded = grad_input.shape
    kernel_d, kernel_h, n_cblocks, run = w_packed.shape[:4]
    out_d, out_h, out_w, cout = grad_output.shape[1:]
    g_flat = grad_output.reshape(grad_output.size)
    w_matrix = w_packed.reshape(w_packed.size // BLOCK_C, BLOCK_C)   # rows (kz, ky, cb, j)
    gi_tiles = grad_input.reshape(grad_input.size // BLOCK_C, BLOCK_C)   # rows (n, id, ih, iw, cb)
    g_step = np.uint64(run)                       # g_flat offsets between neighbouring voxels' runs
    gi_step = np.uint64(n_cblocks)                # gi_tiles rows between neighbouring voxels
    run_u = np.uint64(run)
    end8 = in_w // 8 * 8 if block_w == 8 else 0            # voxels [0, end8) in tiles of 8
    end4 = end8 + (in_w - end8) // 4 * 4                   # [end8, end4) in tiles of 4, then singles
    for row in prange(n_batch * in_d * in_h):
        n = row // (in_d * in_h)
        id = row // in_h % in_d
        ih = row % in_h
        gi_row = row * in_w * n_cblocks                    # gi_tiles row of grad_input[n, id, ih, 0, 0]
        grad_input[n, id, ih] = 0                          # every (kz, ky) below adds its run
        for cb in range(n_cblocks):
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    g_row = ((n * out_d + id * kernel_d + kz) * out_h + ih * kernel_h + ky) * out_w * cout
                    w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                    for iw0 in range(0, end8, 8):
                        t = np.uint64(gi_row + iw0 * n_cblocks + cb)
                        tile8 = load_tile8(gi_tiles, t, gi_step)
                        for j in range(run_u):
                            tile8 = fma_tile8(tile8, g_flat, np.uint64(g_row + iw0 * run) + j, g_step,
                                              load16(w_matrix, w_0 + j))
                        store_tile8(gi_tiles, t, gi_step, tile8)
                    for iw0 in range(end8, end4, 4):
                        t = np.uint64(gi_row + iw0 * n_cblocks + cb)
                        tile4 = load_tile4(gi_tiles, t, gi_step)
                        for j in range(run_u):
                            tile4 = fma_tile4(tile4, g_flat, np.uint64(g_row + iw0 * run) + j, g_step,
                                              load16(w_matrix, w_0 + j))
                        store_tile4(gi_tiles, t, gi_step, tile4)
                    for iw0 in range(end4, in_w):
                        t = np.uint64(gi_row + iw0 * n_cblocks + cb)
                        acc = load16(gi_tiles, t)
                        for j in range(run_u):
                            acc = fma16(acc, g_flat[np.uint64(g_row + iw0 * run) + j], load16(w_matrix, w_0 + j))
                        store16(gi_tiles, t, acc)


def conv_transpose3d_blocks_grad_input(grad_output, weight, input_shape, block_w=BLOCK_W):
    """Line (3), kernel == stride, padding 0: grad_output (N, D*kD, H*kH, W*kW, Cout) ->
    dL/dx (N, D, H, W, Cin) = input_shape + (Cin,)."""
    cin = weight.shape[0]
    cin_padded = padded_channels(cin)
    grad_input = arena.empty((*input_shape, cin_padded), grad_output.dtype)
    conv_transpose3d_blocks_grad_input_kernel(np.ascontiguousarray(grad_output),
                                              pack_weight(weight.astype(grad_output.dtype, copy=False)),
                                              np.int64(block_w), grad_input)
    return grad_input if cin_padded == cin else arena.copy(grad_input[..., :cin])


# ---- grad-weight: line (4) ----------------------------------------------------------------------
@blocked_kernel
def conv_transpose3d_blocks_grad_weight_kernel(x, grad_output, rows_per_chunk, block_j, partial):
    """Line (4) for kernel == stride, padding 0, as per-chunk partial sums:
    partial[chunk, ci, kz, ky, kx, co] = sum over the voxels of the input rows (n, id, ih) of chunk
    `chunk` (rows_per_chunk consecutive rows) of x[n, id, ih, iw, ci] * G[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co].

    x (N, D, H, W, Cin) C-contiguous; grad_output (N, D*kD, H*kH, W*kW, Cout_padded) C-contiguous,
    its channels padded with zeros to a multiple of 16; partial (n_chunks, Cin, kD, kH, kW,
    Cout_padded); block_j = BLOCK_J (8 or 4). Work items: one prange iteration per (chunk, column
    (kz, ky, kx, cb)); it writes partial[chunk, :, kz, ky, kx, 16cb:16cb+16] and nothing else.
    Differs from conv_transpose3d_grad_weight_reference in loop order only: a tile of input channels
    x 16 output channels stays in registers while the loop runs over every voxel of the chunk: 8
    channels ci0..ci0+7 (`tile8`) when block_j == 8, then 4 while at least 4 are left, then single
    channels. Why this order: the chunk (its x rows and this column of its G rows) is sized to stay in
    L2 (`grad_weight_partition`), so the sweeps of the tiles after the first read it from cache; the
    accumulators are written once per sweep, not per voxel. For each voxel, the tile reads one vector
    of 16 values of G (the voxel's block, offset (kz, ky, kx)) and broadcasts its 8 (or 4) inputs x.
    The sweep is ONE loop over the chunk's voxels, whose G offsets are listed first (g_voxels): with
    a loop over rows and one over the voxels of a row, LLVM takes the tile apart into scalars and
    rebuilds it at every step (measured 10-15 GFLOP/s instead of 90-145 on one core).
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
        # g_voxels[p]: the g_tiles row of G[n, id*kD+kz, ih*kH+ky, iw*kW+kx, 16cb] for the chunk's
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
            tile8 = load_tile8(zero_tile, ZERO, ZERO)
            for p in range(n_voxels):
                tile8 = fma_tile8(tile8, x_flat, x_start + p * x_step + np.uint64(ci0), ONE,
                                  load16(g_tiles, g_voxels[p]))
            store_tile8(partial_tiles, p_0 + np.uint64(ci0) * ci_step, ci_step, tile8)
        for ci0 in range(end8, end4, 4):
            tile4 = load_tile4(zero_tile, ZERO, ZERO)
            for p in range(n_voxels):
                tile4 = fma_tile4(tile4, x_flat, x_start + p * x_step + np.uint64(ci0), ONE,
                                  load16(g_tiles, g_voxels[p]))
            store_tile4(partial_tiles, p_0 + np.uint64(ci0) * ci_step, ci_step, tile4)
        for ci0 in range(end4, cin):
            acc = load16(zero_tile, ZERO)
            for p in range(n_voxels):
                acc = fma16(acc, x_flat[x_start + p * x_step + np.uint64(ci0)], load16(g_tiles, g_voxels[p]))
            store16(partial_tiles, p_0 + np.uint64(ci0) * ci_step, acc)


def grad_weight_partition(input_shape, kernel_size, cout):
    """The grad-weight kernel's work items for x (N, D, H, W, Cin) = input_shape, from the shapes
    alone (never the thread count, so the sums are the same on any machine): (n_chunks,
    rows_per_chunk, n_columns), n_chunks * n_columns items. Enough chunks of input rows for
    WORK_ITEMS items, so that 32 cores have work on every up-convolution of the U-Net, and enough
    that a chunk's x rows and one column of its G rows (W*(Cin + 16) values per row) fit in
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
