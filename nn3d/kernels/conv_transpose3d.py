"""The transposed 3-D convolution (channels-last) for kernel == stride, padding 0: kernels of its own
for forward and grad-input, grad-weight through Conv3d's. Plain NumPy versions of lines (1), (3),
(4) for any kernel / stride / padding: conv_transpose3d_*_reference in nn3d/kernels/reference.py.

Notation: the numbered lines of nn3d/conv_transpose3d.py, with the channel index moved last. Index
names: (id, ih, iw) an input voxel, (kz, ky, kx) a kernel offset, ci / co an input / output channel.

    x            (N, D, H, W, Cin)
    weight       (Cin, Cout, kD, kH, kW)   PyTorch's layout
    y            (N, D*kD, H*kH, W*kW, Cout)
    grad_output  (N, D*kD, H*kH, W*kW, Cout)   dy = dL/dy

With kernel == stride and no padding, y_full is y and the kD x kH x kW blocks of different input
voxels do not overlap: input voxel (id, ih, iw) owns the output block
    y[n, id*kD + kz, ih*kH + ky, iw*kW + kx, co],   0 <= kz < kD, 0 <= ky < kH, 0 <= kx < kW,
and lines (1), (3), (4) become per-voxel products with the weight seen as a matrix
w_matrix[ci, (kz, ky, kx, co)] = weight[ci, co, kz, ky, kx]                (Cin, kD*kH*kW*Cout):

    (1) y[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co] = bias[co] + sum_ci x[n, id, ih, iw, ci] * weight[ci, co, kz, ky, kx]
    (3) grad_x[n, id, ih, iw, ci] = sum_{kz, ky, kx, co} dy[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co] * weight[ci, co, kz, ky, kx]
    (4) grad_weight[ci, co, kz, ky, kx] = sum_{n, id, ih, iw} x[n, id, ih, iw, ci] * dy[n, id*kD+kz, ih*kH+ky, iw*kW+kx, co]

The kernels read and write the blocks where they lie in y and dy (no gathered copy of the blocks),
with the register tiles of nn3d/kernels/register_tile.py: 16 values of one axis carried as one
16-lane vector (nn3d/kernels/simd.py: one AVX-512 register, two AVX2 ones), times BLOCK_W (8 on
AVX-512, 4 on AVX2) values of another axis, one accumulator each. The width is an argument, so the tests run both widths on any
machine, and the 8-wide loop is followed by 4-wide and single tails.

- Forward (1), `conv_transpose3d_blocks_forward_kernel`: a tile is BLOCK_W neighbouring input voxels
  along W x 16 output channels of one kernel offset (kz, ky, kx); it starts at the bias and runs over
  ci (one 16-weight load, one broadcast of x per voxel, one FMA per voxel), then each accumulator is
  stored straight into its voxel's block of y. One prange iteration per input row (n, id, ih), which
  owns the kD x kH output rows of its blocks.
- Grad-input (3), `conv_transpose3d_blocks_grad_input_kernel`: a tile is BLOCK_W neighbouring input
  voxels x 16 input channels; for each (kz, ky) it runs over the contiguous run of kW*Cout values
  (kx, co) of each voxel's block row in dy (one 16-weight load, one broadcast of dy per voxel, one FMA
  per voxel). (3) is also Conv3d's forward of dy with stride = kernel size (identity (A) of the layer
  file); this kernel differs from Conv3d's in keeping the tile in registers for one run at a time
  (see its docstring). One prange iteration per input row (n, id, ih), which owns that row of grad_x.
- Grad-weight (4), `conv_transpose3d_blocks_grad_weight`, has no kernel of its own: it is Conv3d's
  grad-weight kernel (nn3d/kernels/conv3d_grad_weight.py) with stride = kernel size, dy in the place
  of its input and x in the place of its grad_output (identity (4) of the layer file), as fast as a
  kernel of its own was, and compiled for every Conv3d anyway.
"""
import numpy as np
from numba import prange

from ..core import arena
from .conv3d_grad_weight import conv3d_grad_weight
from .jit import blocked_kernel, parallel_kernel
from .register_tile import (BLOCK_C, BLOCK_J, BLOCK_W, UINT, fma_tile4, fma_tile8, load_tile4, load_tile8,
                            padded_channels, store_tile4, store_tile8)
from .simd import fma16, load16, store16
from .weight_packing import pack_weight


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
    `pack_weight`, so that no one-thread copy holds up the short 8^3 pass."""
    cin, cout, kernel_d, kernel_h, kernel_w = weight.shape
    w_packed = np.empty((kernel_d, kernel_h, kernel_w, padded_channels(cout) // BLOCK_C, cin, BLOCK_C),
                        weight.dtype)
    pack_weight_columns_kernel(weight, w_packed)
    return w_packed


# ---- forward: line (1) ---------------------------------------------------------------------------
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
                            tile8 = load_tile8(bias, cb, UINT[0])
                            for ci in range(cin_u):
                                tile8 = fma_tile8(tile8, x_t_flat, ci * width + np.uint64(iw0), UINT[1],
                                                  load16(w_matrix, w_0 + ci))
                            store_tile8(y_tiles, np.uint64(y_row + (iw0 * kernel_w + kx) * n_cblocks + cb),
                                        y_step, tile8)
                        for iw0 in range(end8, end4, 4):
                            tile4 = load_tile4(bias, cb, UINT[0])
                            for ci in range(cin_u):
                                tile4 = fma_tile4(tile4, x_t_flat, ci * width + np.uint64(iw0), UINT[1],
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


def conv_transpose3d_blocks_work_items(input_shape):
    """The parallel work items of the forward and grad-input kernels for an input (N, D, H, W, Cin):
    one per input row (n, id, ih)."""
    return input_shape[0] * input_shape[1] * input_shape[2]


# ---- grad-input: line (3) -----------------------------------------------------------------------
@blocked_kernel
def conv_transpose3d_blocks_grad_input_kernel(grad_output, w_packed, block_w, grad_input):
    """Line (3) for kernel == stride, padding 0: grad_input (N, D, H, W, Cin_padded) from
    grad_output (N, D*kD, H*kH, W*kW, Cout) C-contiguous, w_packed (kD, kH, Cin_padded/16,
    kW*Cout, 16): Conv3d's `pack_weight` of the weight read as a Conv3d weight (Cout_conv = Cin,
    Cin_conv = Cout), [kz, ky, cb, j, c] = weight[16*cb + c, co, kz, ky, kx], j = kx*Cout + co;
    block_w = BLOCK_W (8 or 4).

    Each prange iteration owns one row grad_input[n, id, ih]. For a fixed (kz, ky), the block rows
    dy[n, id*kD+kz, ih*kH+ky, iw*kW + kx, co] of voxel iw, all (kx, co), are ONE contiguous run of
    kW*Cout values (index j = kx*Cout + co), starting at element iw*kW*Cout of that row of dy.
    A tile of neighbouring voxels x 16 input channels runs over j (one 16-weight load, one
    broadcast of dy per voxel, one FMA per voxel). (kz, ky) is outside the tile: the row of
    grad_input is zeroed first, and for each (kz, ky) the tile is loaded from it, runs over j, and
    is stored back (the row stays in L1); on the same (3) this was faster than Conv3d's forward
    kernel, which keeps its tile across (kz, ky) (docs/performance.md).
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
def conv_transpose3d_blocks_grad_weight(x, grad_output, kernel_size, block_j=BLOCK_J):
    """Line (4), kernel == stride, padding 0: dL/dweight (Cin, Cout, kD, kH, kW) from
    x (N, D, H, W, Cin) and grad_output (N, D*kD, H*kH, W*kW, Cout). (4) is Conv3d's grad-weight (4)
    with grad_output as its input and x as its output gradient, stride = kernel size: each window
    of that convolution is one voxel's block, so it does no extra work. block_j: the register tile
    width (this CPU's BLOCK_J by default)."""
    return conv3d_grad_weight(grad_output, x, kernel_size, kernel_size, block_j)
