"""The direct 3x3x3 convolution, from the NumPy reference to nn3d's kernel, one step at a time.

    python docs/kernels/conv3d_steps.py --size 32      # PYTHONPATH=. from a source checkout

Each step computes the same layer (docs/kernels/ladder.py: 3x3x3, stride 1, padding 1, 16 -> 16
channels, float32, channels-last) and says in its docstring what changes and why that is faster
(step 2: why not yet).
The script prints per step the time, GFLOP/s, the speed-up over the step before and the max error
against step 0, and exits 1 if a step leaves the float32 tolerance (ladder.py says why it is what it
is). What the ladder shows (docs/performance.md has the numbers): compiled loops gain a little; a
register tile alone gains nothing, even loses, until the compiler settings of step 3 make it vector
FMAs on registers, the one big step.

    0 the reference: 27 matrix products, one per kernel offset (NumPy)
    1 plain loops over the packed layout (Numba)
    2 a register tile: 4 voxels x 16 output channels in local variables (Numba's default settings)
    3 the same tile with the library's compiler settings and unsigned offsets
    4 the library's kernel, as nn3d.Conv3d calls it

Steps 1-3 run their output rows in parallel on Numba's threads like step 4, so the speed-ups come
from the inner loops. Their tile is 4 voxels wide on every CPU (8 vector registers of accumulators on
AVX2, 4 on AVX-512); the library's kernel picks 8 on AVX-512 (nn3d/kernels/register_tile.py).
"""
import sys

import numba
import numpy as np
from numba import prange

from ladder import arguments, run
from nn3d.kernels.conv3d import conv3d_forward
from nn3d.kernels.jit import blocked_kernel, parallel_kernel, tile_helper
from nn3d.kernels.padding import pad_and_concatenate, pad_channels_last
from nn3d.kernels.reference import conv3d_forward_reference
from nn3d.kernels.register_tile import BLOCK_C
from nn3d.kernels.weight_packing import pack_weight

PADDING = (1, 1, 1)
STRIDE = (1, 1, 1)


def reference(x, weight, bias):
    """Step 0, nn3d/kernels/reference.py's conv3d_forward_reference: for each of the 27 kernel offsets
    (kz, ky, kx), the input window it meets, (voxels x Cin), times weight[:, :, kz, ky, kx]^T,
    (Cin x Cout), summed in float64. NumPy, one matrix product per offset; the yardstick."""
    x_pad = pad_channels_last(x, PADDING)                                 # (N, D+2, H+2, W+2, Cin)
    return conv3d_forward_reference(x_pad, weight, bias, STRIDE)           # (N, D, H, W, Cout)


# ---- step 1 ----------------------------------------------------------------------------------------
@parallel_kernel
def plain_loops_kernel(x_pad, w_packed, bias, y):
    """y[n, od, oh, ow, co] = bias[co] + sum_{kz, ky, j} x_row[ow*Cin + j] * w_packed[kz, ky, j, co], where
    x_row is the padded input row (n, od + kz, oh + ky) flattened: for fixed (kz, ky) the inputs of the
    3 taps kx and Cin channels are one contiguous run of 3*Cin values, j = kx*Cin + ci.
    x_pad (N, D+2, H+2, W+2, Cin), w_packed (3, 3, 3*Cin, Cout), bias (Cout,), y (N, D, H, W, Cout)."""
    n_batch, out_d, out_h, out_w, cout = y.shape
    kernel_d, kernel_h, run, _ = w_packed.shape
    cin = x_pad.shape[4]
    x_rows = x_pad.reshape(n_batch, x_pad.shape[1], x_pad.shape[2], x_pad.shape[3] * cin)   # rows flattened
    for row in prange(n_batch * out_d * out_h):                      # one output row per iteration
        n, od, oh = row // (out_d * out_h), row // out_h % out_d, row % out_h
        for ow in range(out_w):
            for co in range(cout):
                y[n, od, oh, ow, co] = bias[co]
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    for j in range(run):
                        value = x_rows[n, od + kz, oh + ky, ow * cin + j]
                        for co in range(cout):                       # accumulates in memory, in y
                            y[n, od, oh, ow, co] += value * w_packed[kz, ky, j, co]


def plain_loops(x, weight, bias):
    """Step 1: compiled loops instead of NumPy's 27 passes over the whole volume (each reading a
    strided window and writing all of y). The weights are packed so that the 3*Cin inputs of one
    kernel row (kz, ky) are one contiguous run j = kx*Cin + ci, read once per voxel, and the Cout
    weights of each j are adjacent. Every product still goes through y in memory."""
    x_pad = pad_channels_last(x, PADDING)                                       # (N, D+2, H+2, W+2, Cin)
    cout, cin = weight.shape[:2]
    w_packed = weight.transpose(2, 3, 4, 1, 0).reshape(3, 3, 3 * cin, cout)    # [kz, ky, j = kx*Cin + ci, co]
    y = np.empty((*x.shape[:4], cout), np.float32)                              # (N, D, H, W, Cout)
    plain_loops_kernel(x_pad, w_packed, bias, y)
    return y


# ---- step 2 ----------------------------------------------------------------------------------------
def load16_tuple(matrix, i):
    """matrix[i, 0:16] as a tuple of 16 scalars: a register tile, since Numba keeps tuples in registers."""
    return (matrix[i, 0], matrix[i, 1], matrix[i, 2], matrix[i, 3], matrix[i, 4], matrix[i, 5],
            matrix[i, 6], matrix[i, 7], matrix[i, 8], matrix[i, 9], matrix[i, 10], matrix[i, 11],
            matrix[i, 12], matrix[i, 13], matrix[i, 14], matrix[i, 15])


def fma16_tuple(acc, value, w):
    """acc + value * w, element-wise on 16-tuples, value broadcast."""
    return (acc[0] + value * w[0], acc[1] + value * w[1], acc[2] + value * w[2], acc[3] + value * w[3],
            acc[4] + value * w[4], acc[5] + value * w[5], acc[6] + value * w[6], acc[7] + value * w[7],
            acc[8] + value * w[8], acc[9] + value * w[9], acc[10] + value * w[10], acc[11] + value * w[11],
            acc[12] + value * w[12], acc[13] + value * w[13], acc[14] + value * w[14],
            acc[15] + value * w[15])


load16_default = numba.njit(load16_tuple)     # compiled with Numba's defaults (no FMA contraction)
fma16_default = numba.njit(fma16_tuple)
load16 = tile_helper(load16_tuple)            # compiled as nn3d compiles its tile helpers (step 3)
fma16 = tile_helper(fma16_tuple)


@parallel_kernel
def register_tile_kernel(x_pad, w_packed, bias, y):
    """y as in step 1, a tile of 4 neighbouring voxels (acc0..acc3) x 16 output channels at a time,
    each acc a 16-tuple. x_pad (N, D+2, H+2, W+2, Cin), w_packed (3, 3, Cout/16, 3*Cin, 16) from
    nn3d's pack_weight, bias (Cout/16, 16), y (N, D, H, W, Cout), Cout a multiple of 16; signed
    offsets, default settings."""
    n_batch, out_d, out_h, out_w, cout = y.shape
    kernel_d, kernel_h, n_cblocks, run, _ = w_packed.shape
    cin = x_pad.shape[4]
    x_flat = x_pad.reshape(x_pad.size)
    w_matrix = w_packed.reshape(w_packed.size // BLOCK_C, BLOCK_C)          # rows (kz, ky, cb, j)
    y_tiles = y.reshape(n_batch, out_d, out_h, out_w, n_cblocks, BLOCK_C)
    row_length = x_pad.shape[3] * cin
    plane_length = x_pad.shape[2] * row_length
    end4 = out_w // 4 * 4                                       # voxels [0, end4) in tiles of 4
    for row in prange(n_batch * out_d * out_h):
        n, od, oh = row // (out_d * out_h), row // out_h % out_d, row % out_h
        row_start = ((n * x_pad.shape[1] + od) * x_pad.shape[2] + oh) * row_length
        for cb in range(n_cblocks):
            for ow0 in range(0, end4, 4):
                acc0 = acc1 = acc2 = acc3 = load16_default(bias, cb)
                for kz in range(kernel_d):
                    for ky in range(kernel_h):
                        x_0 = row_start + kz * plane_length + ky * row_length + ow0 * cin   # voxel ow0's run
                        w_0 = ((kz * kernel_h + ky) * n_cblocks + cb) * run
                        for j in range(run):
                            w = load16_default(w_matrix, w_0 + j)        # 16 weights, reused by 4 voxels
                            acc0 = fma16_default(acc0, x_flat[x_0 + j], w)
                            acc1 = fma16_default(acc1, x_flat[x_0 + cin + j], w)
                            acc2 = fma16_default(acc2, x_flat[x_0 + 2 * cin + j], w)
                            acc3 = fma16_default(acc3, x_flat[x_0 + 3 * cin + j], w)
                for c in range(BLOCK_C):                              # y written once per tile
                    y_tiles[n, od, oh, ow0, cb, c] = acc0[c]
                    y_tiles[n, od, oh, ow0 + 1, cb, c] = acc1[c]
                    y_tiles[n, od, oh, ow0 + 2, cb, c] = acc2[c]
                    y_tiles[n, od, oh, ow0 + 3, cb, c] = acc3[c]
            for ow in range(end4, out_w):                             # the rest of the row, a voxel at a time
                acc0 = load16_default(bias, cb)
                for kz in range(kernel_d):
                    for ky in range(kernel_h):
                        x_0 = row_start + kz * plane_length + ky * row_length + ow * cin
                        w_0 = ((kz * kernel_h + ky) * n_cblocks + cb) * run
                        for j in range(run):
                            acc0 = fma16_default(acc0, x_flat[x_0 + j], load16_default(w_matrix, w_0 + j))
                for c in range(BLOCK_C):
                    y_tiles[n, od, oh, ow, cb, c] = acc0[c]


def register_tile(x, weight, bias):
    """Step 2: the outputs stay in local variables. A tile of 4 voxels x 16 output channels (4 tuples
    of 16 scalars, never an array) lives through the whole sum over (kz, ky, j): each step loads 16
    weights once for 4 voxels, and y is written once instead of 432 times. Not faster by itself:
    with Numba's default settings those are 64 scalar accumulators, 4x the 16 registers, and they
    spill to the stack (measured here slower than step 1, whose loop over co was vectorised). Step 3
    turns them into 8 vector registers. The weights are packed in blocks of 16 output channels
    (nn3d's pack_weight)."""
    x_pad = pad_channels_last(x, PADDING)                                       # (N, D+2, H+2, W+2, Cin)
    w_packed = pack_weight(weight)                                              # (3, 3, Cout/16, 3*Cin, 16)
    y = np.empty((*x.shape[:4], weight.shape[0]), np.float32)                   # (N, D, H, W, Cout)
    register_tile_kernel(x_pad, w_packed, bias.reshape(-1, BLOCK_C), y)
    return y


# ---- step 3 ----------------------------------------------------------------------------------------
@blocked_kernel
def compiler_settings_kernel(x_pad, w_packed, bias, y):
    """`register_tile_kernel` with every offset into x_flat and w_matrix an unsigned np.uint64 (and the
    j loop over an unsigned range), compiled by nn3d's blocked_kernel, its tuple helpers by tile_helper."""
    n_batch, out_d, out_h, out_w, cout = y.shape
    kernel_d, kernel_h, n_cblocks, run, _ = w_packed.shape
    cin = x_pad.shape[4]
    x_flat = x_pad.reshape(x_pad.size)
    w_matrix = w_packed.reshape(w_packed.size // BLOCK_C, BLOCK_C)          # rows (kz, ky, cb, j)
    y_tiles = y.reshape(n_batch, out_d, out_h, out_w, n_cblocks, BLOCK_C)
    row_length = x_pad.shape[3] * cin
    plane_length = x_pad.shape[2] * row_length
    step = np.uint64(cin)                                       # from one voxel's run to the next
    run_u = np.uint64(run)
    end4 = out_w // 4 * 4
    for row in prange(n_batch * out_d * out_h):
        n, od, oh = row // (out_d * out_h), row // out_h % out_d, row % out_h
        row_start = ((n * x_pad.shape[1] + od) * x_pad.shape[2] + oh) * row_length
        for cb in range(n_cblocks):
            for ow0 in range(0, end4, 4):
                acc0 = acc1 = acc2 = acc3 = load16(bias, cb)
                for kz in range(kernel_d):
                    for ky in range(kernel_h):
                        x_0 = np.uint64(row_start + kz * plane_length + ky * row_length + ow0 * cin)
                        x_1 = x_0 + step
                        x_2 = x_1 + step
                        x_3 = x_2 + step
                        w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                        for j in range(run_u):
                            w = load16(w_matrix, w_0 + j)
                            acc0 = fma16(acc0, x_flat[x_0 + j], w)
                            acc1 = fma16(acc1, x_flat[x_1 + j], w)
                            acc2 = fma16(acc2, x_flat[x_2 + j], w)
                            acc3 = fma16(acc3, x_flat[x_3 + j], w)
                for c in range(BLOCK_C):
                    y_tiles[n, od, oh, ow0, cb, c] = acc0[c]
                    y_tiles[n, od, oh, ow0 + 1, cb, c] = acc1[c]
                    y_tiles[n, od, oh, ow0 + 2, cb, c] = acc2[c]
                    y_tiles[n, od, oh, ow0 + 3, cb, c] = acc3[c]
            for ow in range(end4, out_w):
                acc0 = load16(bias, cb)
                for kz in range(kernel_d):
                    for ky in range(kernel_h):
                        x_0 = np.uint64(row_start + kz * plane_length + ky * row_length + ow * cin)
                        w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                        for j in range(run_u):
                            acc0 = fma16(acc0, x_flat[x_0 + j], load16(w_matrix, w_0 + j))
                for c in range(BLOCK_C):
                    y_tiles[n, od, oh, ow, cb, c] = acc0[c]


def compiler_settings(x, weight, bias):
    """Step 3: the same source, compiled so that the tile becomes vector instructions. LLVM's SLP
    vectoriser turns the 16 scalar FMAs of each fma16 into two AVX2 vector FMAs (one on AVX-512); it is
    off in Numba by default, and nn3d's blocked_kernel turns it on (with the loop vectoriser off, which
    makes gathers of such loops, and a*b + c fused, as tile_helper does for load16 and fma16). Signed
    offsets make Numba check every index for wrap-around (x[-1]); unsigned ones (np.uint64) cannot be
    negative, so the checks go."""
    x_pad = pad_channels_last(x, PADDING)
    w_packed = pack_weight(weight)
    y = np.empty((*x.shape[:4], weight.shape[0]), np.float32)
    compiler_settings_kernel(x_pad, w_packed, bias.reshape(-1, BLOCK_C), y)
    return y


# ---- step 4 ----------------------------------------------------------------------------------------
def library(x, weight, bias):
    """Step 4, nn3d's conv3d_forward as nn3d.Conv3d's direct path calls it: step 3 plus this CPU's tile
    width (tiles of 8 voxels on AVX-512, then 4, then single ones; on AVX2 step 3's loops), work items
    ordered with the blocks of 16 output channels outermost (a block's weights stay in L2; one block
    here) and a fused ReLU when asked. Its accumulators are 16-lane vectors (nn3d/kernels/simd.py)
    instead of step 3's tuples: the same vector FMAs, with no vectoriser left to find them, and about
    a third of the compile time."""
    x_pad = pad_and_concatenate((x,), PADDING)                                  # (N, D+2, H+2, W+2, Cin)
    return conv3d_forward(x_pad, weight, bias, STRIDE)                          # (N, D, H, W, Cout)


STEPS = [(reference, None), (plain_loops, None), (register_tile, None), (compiler_settings, None),
         (library, None)]

if __name__ == "__main__":
    sys.exit(run("3x3x3 convolution, direct", STEPS, arguments(__doc__.splitlines()[0])))
