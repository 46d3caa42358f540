"""3-D convolution kernels on channels-last arrays. Their plain NumPy versions, with the same index
names, are conv3d_*_reference in nn3d/kernels/reference.py: read those first.

Notation: the numbered lines of nn3d/conv3d.py, with the channel index moved last. Index names:
(od, oh, ow) an output voxel, (id, ih, iw) an input voxel, (kz, ky, kx) a kernel offset, ci / co an
input / output channel; x_pad, y, weight, grad_output, S are tensors.

    x_pad        (N, Dp, Hp, Wp, Cin)    input with its zero halo already in memory
    weight       (Cout, Cin, kD, kH, kW) PyTorch's layout
    grad_output  (N, Do, Ho, Wo, Cout)   G = dL/dy

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
repacked to match (`pack_weight`): w_packed[kz, ky, cb, j, c] = weight[16*cb + c, ci, kz, ky, kx],
with the output channels padded with zeros up to a multiple of BLOCK_C = 16.

Register blocking (docs/performance.md): the forward kernel keeps a tile of outputs
(BLOCK_W neighbouring voxels along W x BLOCK_C = 16 output channels) in registers while it runs over
the whole reduction (kz, ky, j); per reduction step it loads 16 weights (one AVX-512 vector, two
AVX2 vectors in float32), broadcasts one input value per voxel and does one FMA per voxel and
vector. The grad-weight kernel keeps a BLOCK_J x 16 tile of grad_weight in registers while it runs
over voxels (a load of 16 grad_output values, BLOCK_J broadcasts of the input, BLOCK_J FMAs).

Tile width per CPU. Numba compiles for the CPU it runs on (and keys its cache by CPU), so the tile
is chosen at import from the features Numba compiles for (`tile_width`): on AVX-512 (32 vector
registers of 16 floats) BLOCK_W = BLOCK_J = 8, i.e. 8 accumulators + the weights; on AVX2 (16
registers of 8 floats, e.g. the Zen 2 machines of docs/performance.md) 8 x 16 outputs would need all 16
registers for accumulators alone and spill, so BLOCK_W = BLOCK_J = 4 (8 accumulator registers).
The kernels take the width as an argument and contain both the 8-wide and the 4-wide loops (4 also
finishes rows after the 8-wide tiles), so the tests run both widths against the references on any
machine, and one compiled kernel serves both.
Grad-input (3) has no kernel of its own: it is the forward kernel applied to S (the spread, padded
output gradient) with the flipped, in/out-swapped weights (`conv3d_grad_input`).
"""
import numpy as np
from numba import prange

from .jit import blocked_kernel, parallel_kernel, tile_helper
from ..core import arena
from .padding import embed_strided, pad_channels_last
from .partial_sums import sum_partials
from .pointwise import pointwise_forward, pointwise_grad_input, pointwise_grad_weight
from ..core.shapes import window_output_size

BLOCK_C = 16   # output channels per register tile: one AVX-512 (two AVX2) registers of float32


def tile_width(cpu_features):
    """Voxels (forward) or (kx, ci) positions (grad-weight) per register tile for a CPU whose LLVM
    feature string is `cpu_features`: 8 with AVX-512 (32 vector registers: 8 accumulators of 16
    floats + the weights fit), 4 without (AVX2's 16 registers of 8 floats: 4 x 16 outputs take 8,
    8 x 16 would take all 16 and spill)."""
    return 8 if "+avx512f" in cpu_features.split(",") else 4


def compiling_for():
    """The LLVM feature string Numba compiles for: NUMBA_CPU_FEATURES if set, else the host's."""
    from llvmlite import binding
    from numba.core import config

    return config.CPU_FEATURES or binding.get_host_cpu_features().flatten()


BLOCK_W = BLOCK_J = tile_width(compiling_for())   # chosen once per process, passed to the kernels
LANE = tuple(np.uint64(q) for q in range(8))      # unsigned constants: offset + LANE[q] stays unsigned


# ---- weight layouts -----------------------------------------------------------------------------
# Packing and unpacking run once per pass on every layer, as parallel kernels: at the 8^3
# bottleneck (128 -> 128 channels, 1.7 MiB of weights) NumPy's one-thread transposes took 0.3 ms
# (pack) and 0.7 ms (unpack) of 1-3 ms passes, time that no second core could share.
@parallel_kernel
def pack_weight_kernel(weight, w_packed):
    """w_packed[kz, ky, cb, kx*Cin + ci, c] = weight[16*cb + c, ci, kz, ky, kx], zeros for the padding
    channels. One work item per (cb, ci, kz): its 16 output channels' kH x kW taps, each tap's 16
    channels one contiguous write (Cout_padded/16 * Cin * kD items)."""
    cout, cin, kernel_d, kernel_h, kernel_w = weight.shape
    n_cblocks = w_packed.shape[2]
    for item in prange(n_cblocks * cin * kernel_d):
        cb, ci, kz = item // (cin * kernel_d), item // kernel_d % cin, item % kernel_d
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                for c in range(BLOCK_C):
                    co = cb * BLOCK_C + c
                    w_packed[kz, ky, cb, kx * cin + ci, c] = weight[co, ci, kz, ky, kx] if co < cout else 0


def pack_weight(weight):
    """(Cout, Cin, kD, kH, kW) -> w_packed (kD, kH, Cout_padded // 16, kW*Cin, 16):
    w_packed[kz, ky, cb, j, c] = weight[cb*16 + c, ci, kz, ky, kx] with j = kx*Cin + ci, zeros for
    the padding channels. The 16 weights one reduction step of the forward kernel needs are adjacent.
    `weight` may be any strided view (e.g. flipped_transposed's)."""
    cout, cin, kd, kh, kw = weight.shape
    w_packed = np.empty((kd, kh, -(-cout // BLOCK_C), kw * cin, BLOCK_C), weight.dtype)
    pack_weight_kernel(weight, w_packed)
    return w_packed


@parallel_kernel
def unpack_weight_kernel(packed, weight):
    """weight[co, ci, kz, ky, kx] = packed[kz, ky, kx*Cin + ci, co]: `pack_weight_kernel`'s work
    items and loops, the copy reversed (16 contiguous reads per tap)."""
    cout, cin, kernel_d, kernel_h, kernel_w = weight.shape
    n_cblocks = -(-cout // BLOCK_C)
    for item in prange(n_cblocks * cin * kernel_d):
        cb, ci, kz = item // (cin * kernel_d), item // kernel_d % cin, item % kernel_d
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                for c in range(min(BLOCK_C, cout - cb * BLOCK_C)):
                    weight[cb * BLOCK_C + c, ci, kz, ky, kx] = packed[kz, ky, kx * cin + ci, cb * BLOCK_C + c]


def unpack_weight(packed, cout, cin):
    """(kD, kH, kW*Cin, Cout_padded), grad-weight's layout -> (Cout, Cin, kD, kH, kW)."""
    kd, kh, kwcin, _ = packed.shape
    weight = np.empty((cout, cin, kd, kh, kwcin // cin), packed.dtype)
    unpack_weight_kernel(packed, weight)
    return weight


def flipped_transposed(weight):
    """A view: weight'[ci, co, kz, ky, kx] = weight[co, ci, kD-1-kz, kH-1-ky, kW-1-kx]: the kernel whose
    stride-1 convolution with the padded output gradient is the input gradient (derivation in
    nn3d/conv3d.py)."""
    return weight.transpose(1, 0, 2, 3, 4)[:, :, ::-1, ::-1, ::-1]           # a view


# ---- register tiles -----------------------------------------------------------------------------
# Numba keeps scalars and tuples in registers, never arrays. A BLOCK_C-wide slice of output channels
# is therefore carried as a tuple of 16 numbers; the SLP vectoriser turns the 16 scalar operations of
# `fma16` into one AVX-512 vector FMA (float32; two on AVX2). The helpers are inlined into the
# kernels by LLVM (check with NUMBA_DUMP_ASSEMBLY=1: the inner loop is one vector load and eight
# `vfmadd231ps (mem){1to16}, zmm, zmm`).
@tile_helper
def load16(matrix, i):
    """matrix[i, 0:16] as a tuple (a register tile). With `i` unsigned (or a loop counter LLVM
    knows is >= 0) there are no negative-index checks and the 16 loads become one vector load."""
    return (matrix[i, 0], matrix[i, 1], matrix[i, 2], matrix[i, 3], matrix[i, 4], matrix[i, 5],
            matrix[i, 6], matrix[i, 7], matrix[i, 8], matrix[i, 9], matrix[i, 10], matrix[i, 11],
            matrix[i, 12], matrix[i, 13], matrix[i, 14], matrix[i, 15])


@tile_helper
def fma16(acc, value, w):
    """acc + value * w, element-wise on 16-tuples."""
    return (acc[0] + value * w[0], acc[1] + value * w[1], acc[2] + value * w[2], acc[3] + value * w[3],
            acc[4] + value * w[4], acc[5] + value * w[5], acc[6] + value * w[6], acc[7] + value * w[7],
            acc[8] + value * w[8], acc[9] + value * w[9], acc[10] + value * w[10], acc[11] + value * w[11],
            acc[12] + value * w[12], acc[13] + value * w[13], acc[14] + value * w[14],
            acc[15] + value * w[15])


@tile_helper
def rectified(value, relu):
    """max(0, value) if relu, else value; a NaN stays NaN (as ReLU and nn3d/kernels/batchnorm3d.py)."""
    return 0 if relu and value <= 0 else value


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
    values, in L2) before the next block's. With rows outermost every row streamed all the weights
    from L3: 1.7 MiB per row at the U-Net's 8^3, 128 -> 128 layer, which two cores could not share.
    Differs from conv3d_forward_reference in loop order only: the (kx, ci) loops are one loop over
    the contiguous run j, and a tile of neighbouring voxels x BLOCK_C = 16 output channels of y stays
    in registers for the whole reduction over (kz, ky, j): 8 voxels (acc0..acc7) when block_w == 8,
    then 4 (acc0..acc3) while at least 4 are left in the row, then single voxels (acc0). With
    block_w == 4 the 8-voxel loop is skipped, and its registers are never needed: each loop gets
    its own register allocation. The input of voxel ow0 + q is read at the unsigned flat offset
    x_q + j (x_q: where its run starts), so the inner loop has no negative-index checks or views.
    """
    n_batch, out_d, out_h, out_w, cout_padded = y.shape
    kernel_d, kernel_h, n_cblocks, run, _ = w_packed.shape
    cin = x_pad.shape[4]
    x_flat = x_pad.reshape(x_pad.size)
    w_matrix = w_packed.reshape(w_packed.size // BLOCK_C, BLOCK_C)      # rows (kz, ky, cb, j)
    y_tiles = y.reshape(n_batch, out_d, out_h, out_w, n_cblocks, BLOCK_C)
    x_row_length = x_pad.shape[3] * cin
    x_plane_length = x_pad.shape[2] * x_row_length
    step = stride_w * cin                      # distance between neighbouring output voxels in a row
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
            for c in range(BLOCK_C):
                y_tiles[n, od, oh, ow0, cb, c] = rectified(acc0[c], relu)
                y_tiles[n, od, oh, ow0 + 1, cb, c] = rectified(acc1[c], relu)
                y_tiles[n, od, oh, ow0 + 2, cb, c] = rectified(acc2[c], relu)
                y_tiles[n, od, oh, ow0 + 3, cb, c] = rectified(acc3[c], relu)
                y_tiles[n, od, oh, ow0 + 4, cb, c] = rectified(acc4[c], relu)
                y_tiles[n, od, oh, ow0 + 5, cb, c] = rectified(acc5[c], relu)
                y_tiles[n, od, oh, ow0 + 6, cb, c] = rectified(acc6[c], relu)
                y_tiles[n, od, oh, ow0 + 7, cb, c] = rectified(acc7[c], relu)
        for ow0 in range(end8, end4, 4):
            acc0 = acc1 = acc2 = acc3 = load16(bias, cb)
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    x_0 = np.uint64(row_start + kz * x_plane_length + ky * x_row_length + ow0 * step)
                    x_1 = x_0 + np.uint64(step)
                    x_2 = x_1 + np.uint64(step)
                    x_3 = x_2 + np.uint64(step)
                    w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                    for j in range(run_u):
                        w = load16(w_matrix, w_0 + j)
                        acc0 = fma16(acc0, x_flat[x_0 + j], w)
                        acc1 = fma16(acc1, x_flat[x_1 + j], w)
                        acc2 = fma16(acc2, x_flat[x_2 + j], w)
                        acc3 = fma16(acc3, x_flat[x_3 + j], w)
            for c in range(BLOCK_C):
                y_tiles[n, od, oh, ow0, cb, c] = rectified(acc0[c], relu)
                y_tiles[n, od, oh, ow0 + 1, cb, c] = rectified(acc1[c], relu)
                y_tiles[n, od, oh, ow0 + 2, cb, c] = rectified(acc2[c], relu)
                y_tiles[n, od, oh, ow0 + 3, cb, c] = rectified(acc3[c], relu)
        for ow0 in range(end4, out_w):
            acc0 = load16(bias, cb)
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    x_0 = np.uint64(row_start + kz * x_plane_length + ky * x_row_length + ow0 * step)
                    w_0 = np.uint64(((kz * kernel_h + ky) * n_cblocks + cb) * run)
                    for j in range(run_u):
                        acc0 = fma16(acc0, x_flat[x_0 + j], load16(w_matrix, w_0 + j))
            for c in range(BLOCK_C):
                y_tiles[n, od, oh, ow0, cb, c] = rectified(acc0[c], relu)


def is_pointwise(kernel_size, stride, cout):
    """A 1x1x1, stride-1 convolution with fewer than 16 output channels (the U-Net's head): the
    kernels of pointwise.py, which do not pad Cout to 16."""
    return tuple(kernel_size) == (1, 1, 1) and tuple(stride) == (1, 1, 1) and cout < BLOCK_C


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


# ---- grad-weight: line (4) ----------------------------------------------------------------------
@blocked_kernel
def conv3d_grad_weight_kernel(x_pad, grad_output, stride_d, stride_h, stride_w,
                              rows_per_chunk, rows_per_block, block_j, partial):
    """Line (4), as per-chunk partial sums: partial[chunk, kz, ky, j, co] sums over the output rows
    (n, od, oh) of chunk `chunk` (rows_per_chunk consecutive rows); the caller adds the chunks up in
    order (nn3d/kernels/partial_sums.py: deterministic, independent of the thread count).

    x_pad (N, Dp, Hp, Wp, Cin); grad_output (N, Do, Ho, Wo, Cout_padded), its channels padded to a
    multiple of 16; partial (n_chunks, kD, kH, kW*Cin, Cout_padded), uninitialised: each work item
    zeroes its own slice first; block_j = BLOCK_J.
    Work items: one prange iteration per (chunk, block cb of 16 output channels); it owns
    partial[chunk, :, :, :, 16cb:16cb+16], so n_chunks * Cout_padded/16 items run independently
    (`grad_weight_chunks` makes that at least WORK_ITEMS).
    Differs from conv3d_grad_weight_reference in loop order only: a tile of positions j x 16 output
    channels of grad_weight stays in registers while the kernel runs over the voxels of
    rows_per_block rows (data that stays in cache): 8 positions (acc0..acc7) when block_j == 8,
    then 4 (acc0..acc3) while at least 4 are left, then single positions. Inside the voxel loop
    every index is an unsigned offset into flat arrays (row offsets computed once per block), so
    there are no negative-index checks, divisions or views there; LANE[q] is q as an unsigned number.
    """
    n_batch, out_d, out_h, out_w, cout_padded = grad_output.shape
    n_chunks, kernel_d, kernel_h, run, _ = partial.shape
    n_cblocks = cout_padded // BLOCK_C
    cin = x_pad.shape[4]
    x_flat = x_pad.reshape(x_pad.size)
    g_matrix = grad_output.reshape(grad_output.size // BLOCK_C, BLOCK_C)   # rows (n, od, oh, ow, cb)
    x_row_length = x_pad.shape[3] * cin
    x_plane_length = x_pad.shape[2] * x_row_length
    step = np.uint64(stride_w * cin)
    g_step = np.uint64(n_cblocks)               # g_matrix rows between neighbouring voxels
    width = np.uint64(out_w)
    n_rows = n_batch * out_d * out_h
    end8 = run // 8 * 8 if block_j == 8 else 0          # positions [0, end8) in tiles of 8
    end4 = end8 + (run - end8) // 4 * 4                 # [end8, end4) in tiles of 4, then singles
    zero_tile = np.zeros((1, BLOCK_C), dtype=partial.dtype)
    for item in prange(n_chunks * n_cblocks):
        chunk = item // n_cblocks
        cb = item % n_cblocks
        first_row = np.int64(chunk) * rows_per_chunk
        last_row = min(first_row + rows_per_chunk, n_rows)
        partial[chunk, :, :, :, cb * BLOCK_C:(cb + 1) * BLOCK_C] = 0
        x_offsets = np.empty(rows_per_block, dtype=np.uint64)   # x_flat offset of x_pad[n, od*sd, oh*sh, 0, 0]
        g_offsets = np.empty(rows_per_block, dtype=np.uint64)   # g_matrix row of grad_output[n, od, oh, 0, 16cb]
        for block_start in range(first_row, last_row, rows_per_block):
            block_rows = min(rows_per_block, last_row - block_start)
            for r in range(block_rows):
                row = block_start + r
                n = row // (out_d * out_h)
                od = row // out_h % out_d
                oh = row % out_h
                x_offsets[r] = ((n * x_pad.shape[1] + od * stride_d) * x_pad.shape[2]
                                + oh * stride_h) * x_row_length
                g_offsets[r] = row * out_w * n_cblocks + cb
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    for j0 in range(0, end8, 8):
                        shift = np.uint64(kz * x_plane_length + ky * x_row_length + j0)
                        acc0 = acc1 = acc2 = acc3 = acc4 = acc5 = acc6 = acc7 = load16(zero_tile, 0)
                        for r in range(np.uint64(block_rows)):
                            x_offset = x_offsets[r] + shift
                            g_offset = g_offsets[r]
                            for ow in range(width):
                                g = load16(g_matrix, g_offset + ow * g_step)
                                at = x_offset + ow * step
                                acc0 = fma16(acc0, x_flat[at], g)
                                acc1 = fma16(acc1, x_flat[at + LANE[1]], g)
                                acc2 = fma16(acc2, x_flat[at + LANE[2]], g)
                                acc3 = fma16(acc3, x_flat[at + LANE[3]], g)
                                acc4 = fma16(acc4, x_flat[at + LANE[4]], g)
                                acc5 = fma16(acc5, x_flat[at + LANE[5]], g)
                                acc6 = fma16(acc6, x_flat[at + LANE[6]], g)
                                acc7 = fma16(acc7, x_flat[at + LANE[7]], g)
                        for c in range(BLOCK_C):
                            co = cb * BLOCK_C + c
                            partial[chunk, kz, ky, j0, co] += acc0[c]
                            partial[chunk, kz, ky, j0 + 1, co] += acc1[c]
                            partial[chunk, kz, ky, j0 + 2, co] += acc2[c]
                            partial[chunk, kz, ky, j0 + 3, co] += acc3[c]
                            partial[chunk, kz, ky, j0 + 4, co] += acc4[c]
                            partial[chunk, kz, ky, j0 + 5, co] += acc5[c]
                            partial[chunk, kz, ky, j0 + 6, co] += acc6[c]
                            partial[chunk, kz, ky, j0 + 7, co] += acc7[c]
                    for j0 in range(end8, end4, 4):
                        shift = np.uint64(kz * x_plane_length + ky * x_row_length + j0)
                        acc0 = acc1 = acc2 = acc3 = load16(zero_tile, 0)
                        for r in range(np.uint64(block_rows)):
                            x_offset = x_offsets[r] + shift
                            g_offset = g_offsets[r]
                            for ow in range(width):
                                g = load16(g_matrix, g_offset + ow * g_step)
                                at = x_offset + ow * step
                                acc0 = fma16(acc0, x_flat[at], g)
                                acc1 = fma16(acc1, x_flat[at + LANE[1]], g)
                                acc2 = fma16(acc2, x_flat[at + LANE[2]], g)
                                acc3 = fma16(acc3, x_flat[at + LANE[3]], g)
                        for c in range(BLOCK_C):
                            co = cb * BLOCK_C + c
                            partial[chunk, kz, ky, j0, co] += acc0[c]
                            partial[chunk, kz, ky, j0 + 1, co] += acc1[c]
                            partial[chunk, kz, ky, j0 + 2, co] += acc2[c]
                            partial[chunk, kz, ky, j0 + 3, co] += acc3[c]
                    for j0 in range(end4, run):
                        shift = np.uint64(kz * x_plane_length + ky * x_row_length + j0)
                        acc0 = load16(zero_tile, 0)
                        for r in range(np.uint64(block_rows)):
                            x_offset = x_offsets[r] + shift
                            g_offset = g_offsets[r]
                            for ow in range(width):
                                acc0 = fma16(acc0, x_flat[x_offset + ow * step],
                                             load16(g_matrix, g_offset + ow * g_step))
                        for c in range(BLOCK_C):
                            partial[chunk, kz, ky, j0, cb * BLOCK_C + c] += acc0[c]


WORK_ITEMS = 32   # parallel work items every grad-weight call has at least (when it has that many rows)


def grad_weight_chunks(n_rows, cout):
    """How many chunks of output rows grad-weight splits into: at least WORK_ITEMS (chunk, block of 16
    output channels) items, so that 32 cores have work on every layer of the U-Net, but no more (each
    chunk's partial grad_weight is zeroed and added up: 1.7 MiB for 128->128). It depends on the
    shapes only, never on the thread count, so the sums are the same on any machine."""
    n_cblocks = -(-cout // BLOCK_C)
    return max(1, min(n_rows, -(-WORK_ITEMS // n_cblocks)))


def conv3d_grad_weight(x_pad, grad_output, kernel_size, stride, block_j=BLOCK_J):
    """Line (4): dL/dweight (Cout, Cin, kD, kH, kW) from x_pad (N, Dp, Hp, Wp, Cin) and
    grad_output (N, Do, Ho, Wo, Cout); block_j: the register tile (this CPU's BLOCK_J by default)."""
    n_batch, out_d, out_h, out_w, cout = grad_output.shape
    cin = x_pad.shape[4]
    kernel_d, kernel_h, kernel_w = kernel_size
    if is_pointwise(kernel_size, stride, cout):
        return pointwise_grad_weight(np.ascontiguousarray(x_pad).reshape(-1, cin),
                                     grad_output.reshape(-1, cout)).reshape(cout, cin, 1, 1, 1)
    cout_padded = -(-cout // BLOCK_C) * BLOCK_C
    if cout_padded != cout:                      # channels padded with zeros to whole blocks of 16
        padded = arena.zeros((*grad_output.shape[:4], cout_padded), grad_output.dtype)
        padded[..., :cout] = grad_output
        grad_output = padded                                               # (N, Do, Ho, Wo, Cout_padded)
    n_rows = n_batch * out_d * out_h
    n_chunks = grad_weight_chunks(n_rows, cout)
    rows_per_chunk = -(-n_rows // n_chunks)
    # blocks of rows whose input (~ kD rows of Wp*Cin each per output row; the kH rows overlap
    # with the next output row's) and output-gradient rows stay in L2 (256K values, 1 MiB float32),
    # split evenly: a short last block would pay the per-tile overhead for few voxels
    row_values = kernel_d * x_pad.shape[3] * cin + out_w * cout_padded
    n_blocks = -(-rows_per_chunk // max(1, 262144 // row_values))
    rows_per_block = -(-rows_per_chunk // n_blocks)
    partial = arena.empty((n_chunks, kernel_d, kernel_h, kernel_w * cin, cout_padded), x_pad.dtype)
    conv3d_grad_weight_kernel(x_pad, np.ascontiguousarray(grad_output), *(np.int64(s) for s in stride),
                              np.int64(rows_per_chunk), np.int64(rows_per_block), np.int64(block_j),
                              partial)
    w_packed = sum_partials(partial)            # fixed order: the result does not depend on threads
    return unpack_weight(w_packed, cout, cin)
