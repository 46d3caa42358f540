"""3-D convolution kernels on channels-last arrays: forward (1) and grad-input (3) here, grad-weight
(4) in conv3d_grad_weight.py. Their plain NumPy versions, with the same index names, are
conv3d_*_reference in nn3d/kernels/reference.py: read those first.

Notation: the numbered lines of nn3d/conv3d.py, with the channel index moved last. Index names:
(od, oh, ow) an output voxel, (id, ih, iw) an input voxel, (kz, ky, kx) a kernel offset, ci / co an
input / output channel; x_pad, y, weight, grad_output, S are tensors.

    x_pad        (N, Dp, Hp, Wp, Cin)    input with its zero halo already in memory
    weight       (Cout, Cin, kD, kH, kW) PyTorch's layout
    grad_output  (N, Do, Ho, Wo, Cout)   dy = dL/dy

    (1) y[n, od, oh, ow, co] = b[co] + sum_{kz, ky, kx, ci} x_pad[n, od*sd+kz, oh*sh+ky, ow*sw+kx, ci]
                                                             * weight[co, ci, kz, ky, kx]   # (N, Do, Ho, Wo, Cout)
    (2) grad_x_pad[n, id, ih, iw, ci] = sum over (od, kz) with od*sd+kz = id, (oh, ky), (ow, kx) alike,
                                        and co of grad_output[n, od, oh, ow, co] * weight[co, ci, kz, ky, kx]
                                                                      # (N, Dp, Hp, Wp, Cin)  the scatter
    (3) grad_x[n, id, ih, iw, ci] = sum_{kz', ky', kx', co} S[n, id+kz', ih+ky', iw+kx', co]
                                    * weight[co, ci, kD-1-kz', kH-1-ky', kW-1-kx']
                                    # S: grad_output spread by the stride, (N, D+kD-1, H+kH-1, W+kW-1, Cout)
                                    # grad_x: (N, D, H, W, Cin)                      the gather
    (4) grad_weight[co, ci, kz, ky, kx] = sum_{n, od, oh, ow} x_pad[n, od*sd+kz, oh*sh+ky, ow*sw+kx, ci]
                                          * grad_output[n, od, oh, ow, co]           # (Cout, Cin, kD, kH, kW)
    (5) grad_bias[co] = sum_{n, od, oh, ow} grad_output[n, od, oh, ow, co]    # (Cout,)  nn3d/kernels/channel_sum.py

The fast kernels see the kx and ci axes as one axis j = kx*Cin + ci: for a fixed (n, od, oh, kz, ky)
the values x_pad[n, od*sd+kz, oh*sh+ky, ow*sw + kx, ci] for all (kx, ci) form ONE contiguous run of
kW*Cin numbers in channels-last memory, starting at element ow*sw*Cin of that row. The weights are
repacked to match (`pack_weight`, nn3d/kernels/weight_packing.py):
w_packed[kz, ky, cb, j, c] = weight[16*cb + c, ci, kz, ky, kx], with the output channels padded with
zeros up to a multiple of BLOCK_C = 16 (BLOCK_C, BLOCK_W, load16 and fma16, the register-tile
vocabulary, are nn3d/kernels/register_tile.py's).

Register blocking (docs/performance.md): the forward kernel keeps a tile of outputs
(BLOCK_W neighbouring voxels along W x BLOCK_C = 16 output channels) in registers while it runs over
the whole reduction (kz, ky, j); per reduction step it loads 16 weights (one AVX-512 vector, two
AVX2 vectors in float32), broadcasts one input value per voxel and does one FMA per voxel and
vector.

Grad-input (3) has no kernel of its own: it is the forward kernel applied to S (the spread, padded
output gradient) with the flipped, in/out-swapped weights (`conv3d_grad_input`).
"""
import numpy as np
from numba import prange

from ..core import arena
from ..core.shapes import window_output_size
from .jit import blocked_kernel, tile_helper
from .padding import embed_strided, pad_channels_last
from .pointwise import is_pointwise, pointwise_forward, pointwise_forward_work_items, pointwise_grad_input
from .register_tile import BLOCK_C, BLOCK_W, UINT, fma_tile4
from .simd import fma16, load16, relu16, store16
from .weight_packing import flipped_transposed, pack_weight


@tile_helper
def store_rectified16(matrix, i, vector, relu):
    """matrix[i, 0:16] = max(0, vector) if relu, else vector; a NaN stays NaN (as ReLU and
    nn3d/kernels/batchnorm3d.py)."""
    store16(matrix, i, relu16(vector) if relu else vector)


# ---- forward: line (1) --------------------------------------------------------------------------
@blocked_kernel
def conv3d_forward_kernel(x_pad, w_packed, bias, stride_d, stride_h, stride_w, block_w, relu, y):
    """Line (1): y = conv(x_pad, weight) + bias, any kernel size and stride.

    x_pad (N, Dp, Hp, Wp, Cin), w_packed (kD, kH, Cout_padded/16, kW*Cin, 16) from `pack_weight`,
    bias (Cout_padded/16, 16), y (N, Do, Ho, Wo, Cout_padded); block_w = BLOCK_W (8 or 4); relu:
    store max(0, y) instead (a BatchNorm folded into the convolution for inference,
    nn3d/batchnorm_folding.py). Each prange iteration owns one block of 16 output channels of one
    output row, y[n, od, oh, :, 16cb:16cb+16], the blocks outermost: Numba gives each thread a
    contiguous range of iterations, so a thread runs all rows for one block's weights (27 * Cin * 16
    values, in L2) before the next block's. Rows outermost would stream all the weights from L3 for
    every row: 1.7 MiB per row at the U-Net's 8^3, 128 -> 128 layer, more than two cores can share.
    Differs from conv3d_forward_reference in loop order only: the (kx, ci) loops are one loop over
    the contiguous run j, and a tile of neighbouring voxels x BLOCK_C = 16 output channels of y stays
    in registers for the whole reduction over (kz, ky, j): 8 voxels (acc0..acc7) when block_w == 8,
    then 4 (a tuple `tile`, register_tile.fma_tile4) while at least 4 are left in the row, then
    single voxels (acc0). With block_w == 4 the 8-voxel loop is skipped, and its registers are
    never needed: each loop gets its own register allocation. The input of voxel ow0 + q is read at
    the unsigned flat offset x_q + j (x_q: where its run starts), so the inner loop has no
    negative-index checks or views.
    """
    n_batch, out_d, out_h, out_w, cout_padded = y.shape
    kernel_d, kernel_h, n_cblocks, run, _ = w_packed.shape
    cin = x_pad.shape[4]
    x_flat = x_pad.reshape(x_pad.size)
    w_matrix = w_packed.reshape(w_packed.size // BLOCK_C, BLOCK_C)      # rows (kz, ky, cb, j)
    y_rows = y.reshape(y.size // BLOCK_C, BLOCK_C)                      # rows (n, od, oh, ow, cb)
    cb_step = np.uint64(n_cblocks)             # y_rows rows between neighbouring voxels
    x_row_length = x_pad.shape[3] * cin
    x_plane_length = x_pad.shape[2] * x_row_length
    step = stride_w * cin                      # distance between neighbouring output voxels in a row
    step_u = np.uint64(step)
    run_u = np.uint64(run)
    end8 = out_w // 8 * 8 if block_w == 8 else 0          # voxels [0, end8) in tiles of 8
    end4 = end8 + (out_w - end8) // 4 * 4                 # [end8, end4) in tiles of 4, then singles
    n_rows = n_batch * out_d * out_h
    for item in prange(n_cblocks * n_rows):
        cb, row = item // n_rows, item % n_rows
        n = row // (out_d * out_h)
        od = row // out_h % out_d
        oh = row % out_h
        row_start = ((n * x_pad.shape[1] + od * stride_d) * x_pad.shape[2] + oh * stride_h) * x_row_length
        # AVX-512's 8-wide tile stays written out: it cannot be timed on AVX2 (docs/performance.md)
        for ow0 in range(0, end8, 8):
            acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = load16(bias, cb)
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    x_0 = np.uint64(row_start + kz * x_plane_length + ky * x_row_length + ow0 * step)
                    x_1 = x_0 + np.uint64(step)
                    x_2 = x_1 + np.uint64(step)
                    x_3 = x_2 + np.uint64(step)
                    x_4 = x_3 + np.uint64(step)
                    x_5 = x_4 + np.uint64(step)
                    x_6 = x_5 + np.uint64(step)
                    x_7 = x_6 + np.uint64(step)
                    w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                    for j in range(run_u):
                        w = load16(w_matrix, w_0 + j)
                        acc0 = fma16(acc0, x_flat[x_0 + j], w)
                        acc1 = fma16(acc1, x_flat[x_1 + j], w)
                        acc2 = fma16(acc2, x_flat[x_2 + j], w)
                        acc3 = fma16(acc3, x_flat[x_3 + j], w)
                        acc4 = fma16(acc4, x_flat[x_4 + j], w)
                        acc5 = fma16(acc5, x_flat[x_5 + j], w)
                        acc6 = fma16(acc6, x_flat[x_6 + j], w)
                        acc7 = fma16(acc7, x_flat[x_7 + j], w)
            y_0 = np.uint64((row * out_w + ow0) * n_cblocks + cb)
            store_rectified16(y_rows, y_0, acc0, relu)
            store_rectified16(y_rows, y_0 + cb_step, acc1, relu)
            store_rectified16(y_rows, y_0 + UINT[2] * cb_step, acc2, relu)
            store_rectified16(y_rows, y_0 + UINT[3] * cb_step, acc3, relu)
            store_rectified16(y_rows, y_0 + UINT[4] * cb_step, acc4, relu)
            store_rectified16(y_rows, y_0 + UINT[5] * cb_step, acc5, relu)
            store_rectified16(y_rows, y_0 + UINT[6] * cb_step, acc6, relu)
            store_rectified16(y_rows, y_0 + UINT[7] * cb_step, acc7, relu)
        for ow0 in range(end8, end4, 4):
            b = load16(bias, cb)
            tile = (b, b, b, b)                                   # voxels ow0 .. ow0 + 3
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    x_0 = np.uint64(row_start + kz * x_plane_length + ky * x_row_length + ow0 * step)
                    w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                    for j in range(run_u):
                        tile = fma_tile4(tile, x_flat, x_0 + j, step_u, load16(w_matrix, w_0 + j))
            y_0 = np.uint64((row * out_w + ow0) * n_cblocks + cb)
            store_rectified16(y_rows, y_0, tile[0], relu)
            store_rectified16(y_rows, y_0 + cb_step, tile[1], relu)
            store_rectified16(y_rows, y_0 + UINT[2] * cb_step, tile[2], relu)
            store_rectified16(y_rows, y_0 + UINT[3] * cb_step, tile[3], relu)
        for ow0 in range(end4, out_w):
            acc0 = load16(bias, cb)
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    x_0 = np.uint64(row_start + kz * x_plane_length + ky * x_row_length + ow0 * step)
                    w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                    for j in range(run_u):
                        acc0 = fma16(acc0, x_flat[x_0 + j], load16(w_matrix, w_0 + j))
            store_rectified16(y_rows, np.uint64((row * out_w + ow0) * n_cblocks + cb), acc0, relu)


def conv3d_forward(x_pad, weight, bias, stride, block_w=BLOCK_W, relu=False):
    """Line (1) for a padded channels-last input: (N, Dp, Hp, Wp, Cin) -> (N, Do, Ho, Wo, Cout).
    weight (Cout, Cin, kD, kH, kW); bias (Cout,) or None; stride 3-tuple; block_w: the register
    tile width (this CPU's BLOCK_W; tests pass 4 and 8 to check both paths on any machine); relu:
    max(0, y) as the output is stored (a folded BatchNorm's ReLU, nn3d/batchnorm_folding.py)."""
    cout = weight.shape[0]
    if is_pointwise(weight.shape[2:], stride, cout):
        y = arena.empty((*x_pad.shape[:4], cout), x_pad.dtype)                 # (N, D, H, W, Cout)
        bias = np.zeros(cout, x_pad.dtype) if bias is None else bias.astype(x_pad.dtype)
        pointwise_forward(np.ascontiguousarray(x_pad).reshape(-1, x_pad.shape[4]),
                          np.ascontiguousarray(weight.reshape(cout, -1)), bias, y.reshape(-1, cout))
        return np.maximum(y, 0, out=y) if relu else y
    w_packed = pack_weight(weight)
    cout_padded = w_packed.shape[2] * BLOCK_C
    bias_padded = np.zeros(cout_padded, dtype=x_pad.dtype)
    if bias is not None:
        bias_padded[:cout] = bias
    bias_padded = bias_padded.reshape(-1, BLOCK_C)                          # (Cout_padded/16, 16)
    out = window_output_size(x_pad.shape[1:4], weight.shape[2:], stride)
    y = arena.empty((x_pad.shape[0], *out, cout_padded), x_pad.dtype)     # (N, Do, Ho, Wo, Cout_padded)
    conv3d_forward_kernel(x_pad, w_packed, bias_padded, *(np.int64(s) for s in stride),
                          np.int64(block_w), relu, y)
    return y if y.shape[4] == cout else arena.copy(y[..., :cout])


def conv3d_forward_work_items(output_shape, kernel_size, stride):
    """The parallel work items (prange iterations) of `conv3d_forward` for an output
    (N, Do, Ho, Wo, Cout): the pointwise kernel's blocks of voxels, else one per (block of 16 output
    channels, output row (n, od, oh)) in `conv3d_forward_kernel`."""
    n_batch, out_d, out_h, out_w, cout = output_shape
    if is_pointwise(kernel_size, stride, cout):
        return pointwise_forward_work_items(n_batch * out_d * out_h * out_w)
    return -(-cout // BLOCK_C) * n_batch * out_d * out_h


# ---- grad-input: lines (2) and (3) ---------------------------------------------------------------
def spread_grad_output(grad_output, kernel_size, input_size, stride, padding):
    """S of line (3): grad_output (N, Do, Ho, Wo, Cout) spread out by the stride (zeros in between)
    and padded by k-1-p on the left, into a buffer of length D + k - 1 per axis,
    (N, D+kD-1, H+kH-1, W+kW-1, Cout). For stride 1 it is plain zero padding; for stride s, s^3 - 1
    of every s^3 values are zeros (the general path, not the U-Net's)."""
    offset = tuple(k - 1 - p for k, p in zip(kernel_size, padding))
    length = tuple(size + k - 1 for size, k in zip(input_size, kernel_size))
    if stride == (1, 1, 1) and min(offset) >= 0:                             # plain zero padding
        return pad_channels_last(grad_output, offset)
    return embed_strided(grad_output, stride, offset, length)


def conv3d_grad_input_of_spread(grad_output_spread, weight, block_w=BLOCK_W):
    """Line (3) from S (`spread_grad_output`): its stride-1 convolution with the flipped,
    in/out-swapped kernel (`flipped_transposed`), (N, D, H, W, Cin). The work equals the forward
    pass's. Called once per input band by a Conv3d with several inputs (one S, several weights).
    A 1x1x1 weight with Cout < 16 (the head) takes the pointwise kernel: S is then grad_output itself
    and (3) is S @ w, one product per voxel."""
    cout, cin = weight.shape[:2]
    if is_pointwise(weight.shape[2:], (1, 1, 1), cout):
        grad_input = arena.empty((*grad_output_spread.shape[:4], cin), grad_output_spread.dtype)
        weight_matrix = np.ascontiguousarray(weight.reshape(cout, cin))                     # (Cout, Cin)
        pointwise_grad_input(grad_output_spread.reshape(-1, cout), weight_matrix, grad_input.reshape(-1, cin))
        return grad_input
    return conv3d_forward(grad_output_spread, flipped_transposed(weight), None, (1, 1, 1), block_w)


def conv3d_grad_input(grad_output, weight, input_size, stride, padding, block_w=BLOCK_W):
    """Line (3), the gather: dL/dx (N, D, H, W, Cin) from grad_output (N, Do, Ho, Wo, Cout)."""
    grad_output_spread = spread_grad_output(grad_output, weight.shape[2:], input_size, stride, padding)
    return conv3d_grad_input_of_spread(grad_output_spread, weight, block_w)


def conv3d_grad_input_work_items(input_shape, kernel_size, cout):
    """The parallel work items of `conv3d_grad_input_of_spread` for an input (N, D, H, W, Cin) of a
    layer with Cout output channels: one per voxel in the pointwise kernel, else the forward
    kernel's on the flipped, in/out-swapped weight (stride 1, Cin output channels)."""
    if is_pointwise(kernel_size, (1, 1, 1), cout):
        return int(np.prod(input_shape[:4]))
    return conv3d_forward_work_items(input_shape, kernel_size, (1, 1, 1))
