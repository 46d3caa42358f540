"""Grad-weight of the direct 3-D convolution, line (4) of nn3d/kernels/conv3d.py's header (read its
notation first: x_pad, grad_output, the run j = kx*Cin + ci):

    (4) grad_weight[co, ci, kz, ky, kx] = sum_{n, od, oh, ow} x_pad[n, od*sd+kz, oh*sh+ky, ow*sw+kx, ci]
                                          * grad_output[n, od, oh, ow, co]           # (Cout, Cin, kD, kH, kW)

Its plain NumPy version is conv3d_grad_weight_reference in nn3d/kernels/reference.py. The kernel
keeps a BLOCK_J x 16 tile of grad_weight in registers while it runs over voxels (a load of 16
grad_output values, BLOCK_J broadcasts of the input, BLOCK_J FMAs), as per-chunk partial sums that
nn3d/kernels/partial_sums.py adds up in a fixed order; `unpack_weight` brings the result to
PyTorch's layout.
"""
import numpy as np
from numba import prange

from ..core import arena
from .jit import blocked_kernel
from .partial_sums import WORK_ITEMS, sum_partials
from .pointwise import is_pointwise, pointwise_grad_weight, pointwise_grad_weight_chunks
from .register_tile import BLOCK_C, BLOCK_J, UINT, fma_tile4
from .simd import add_into16, fma16, load16
from .weight_packing import unpack_weight


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
    then 4 (a tuple `tile`, register_tile.fma_tile4) while at least 4 are left, then single
    positions. Inside the voxel loop every index is an unsigned offset into flat arrays (row offsets
    computed once per block), so there are no negative-index checks, divisions or views there;
    UINT[q] is q as an unsigned number.
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
    partial_flat = partial.reshape(partial.size)
    co_step = np.uint64(cout_padded)            # partial_flat offsets between neighbouring positions j
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
                    # AVX-512's 8-wide tile stays written out: it cannot be timed on AVX2 (docs/performance.md)
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
                                acc1 = fma16(acc1, x_flat[at + UINT[1]], g)
                                acc2 = fma16(acc2, x_flat[at + UINT[2]], g)
                                acc3 = fma16(acc3, x_flat[at + UINT[3]], g)
                                acc4 = fma16(acc4, x_flat[at + UINT[4]], g)
                                acc5 = fma16(acc5, x_flat[at + UINT[5]], g)
                                acc6 = fma16(acc6, x_flat[at + UINT[6]], g)
                                acc7 = fma16(acc7, x_flat[at + UINT[7]], g)
                        at = np.uint64((((chunk * kernel_d + kz) * kernel_h + ky) * run + j0) * cout_padded
                                       + cb * BLOCK_C)                  # partial[chunk, kz, ky, j0, 16cb]
                        add_into16(partial_flat, at, acc0)
                        add_into16(partial_flat, at + co_step, acc1)
                        add_into16(partial_flat, at + UINT[2] * co_step, acc2)
                        add_into16(partial_flat, at + UINT[3] * co_step, acc3)
                        add_into16(partial_flat, at + UINT[4] * co_step, acc4)
                        add_into16(partial_flat, at + UINT[5] * co_step, acc5)
                        add_into16(partial_flat, at + UINT[6] * co_step, acc6)
                        add_into16(partial_flat, at + UINT[7] * co_step, acc7)
                    for j0 in range(end8, end4, 4):
                        shift = np.uint64(kz * x_plane_length + ky * x_row_length + j0)
                        zero = load16(zero_tile, 0)
                        tile = (zero, zero, zero, zero)               # positions j0 .. j0 + 3
                        for r in range(np.uint64(block_rows)):
                            x_offset = x_offsets[r] + shift
                            g_offset = g_offsets[r]
                            for ow in range(width):
                                tile = fma_tile4(tile, x_flat, x_offset + ow * step, UINT[1],
                                                 load16(g_matrix, g_offset + ow * g_step))
                        at = np.uint64((((chunk * kernel_d + kz) * kernel_h + ky) * run + j0) * cout_padded
                                       + cb * BLOCK_C)
                        add_into16(partial_flat, at, tile[0])
                        add_into16(partial_flat, at + co_step, tile[1])
                        add_into16(partial_flat, at + UINT[2] * co_step, tile[2])
                        add_into16(partial_flat, at + UINT[3] * co_step, tile[3])
                    for j0 in range(end4, run):
                        shift = np.uint64(kz * x_plane_length + ky * x_row_length + j0)
                        acc0 = load16(zero_tile, 0)
                        for r in range(np.uint64(block_rows)):
                            x_offset = x_offsets[r] + shift
                            g_offset = g_offsets[r]
                            for ow in range(width):
                                acc0 = fma16(acc0, x_flat[x_offset + ow * step],
                                             load16(g_matrix, g_offset + ow * g_step))
                        add_into16(partial_flat, np.uint64((((chunk * kernel_d + kz) * kernel_h + ky) * run + j0)
                                                           * cout_padded + cb * BLOCK_C), acc0)


def grad_weight_chunks(n_rows, cout):
    """How many chunks of output rows grad-weight splits into: at least WORK_ITEMS (chunk, block of 16
    output channels) items, so that 32 cores have work on every layer of the U-Net, but no more (each
    chunk's partial grad_weight is zeroed and added up: 1.7 MiB for 128->128). It depends on the
    shapes only, never on the thread count, so the sums are the same on any machine."""
    n_cblocks = -(-cout // BLOCK_C)
    return max(1, min(n_rows, -(-WORK_ITEMS // n_cblocks)))


def conv3d_grad_weight_work_items(output_shape, kernel_size, stride):
    """The parallel work items of `conv3d_grad_weight` for an output gradient (N, Do, Ho, Wo, Cout):
    the pointwise kernel's chunks of voxels, else (chunk of output rows, block of 16 output
    channels) pairs of `conv3d_grad_weight_kernel`."""
    n_batch, out_d, out_h, out_w, cout = output_shape
    if is_pointwise(kernel_size, stride, cout):
        return pointwise_grad_weight_chunks(n_batch * out_d * out_h * out_w)
    return grad_weight_chunks(n_batch * out_d * out_h, cout) * -(-cout // BLOCK_C)


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
