"""Grad-weight of a 3x3x3, stride-1, padding-1 convolution by the transposed F(4^3, 3^3): line (4) of
nn3d/conv3d.py as the gradient of algorithm4.py's forward algorithm, exactly as grad_weight.py
derives it for F(2^3, 3^3) (read that file first; the notation is algorithm.py's and algorithm4.py's).

1. The gradient. Per 4x4x4 output tile t the forward computes y_t = A4^T [U * V_t] along each axis,
   with U = G4 g G4^T and V_t = B4^T d_t B4. It is linear in U, so, as in grad_weight.py, section 1:

       dL/dU[xi] = sum_t dM_t[xi] V_t[xi],     dM_t = A4 dy_t A4^T along each axis   (6, 6, 6)
       dL/dg[i, j, k] = sum_{az,ay,ax} G4[az, i] G4[ay, j] G4[ax, k] dL/dU[az, ay, ax]

   One axis of A4 = (A4^T)^T takes the four gradients (dy0, .., dy3) of a tile's line to their
   values at the six points 0, 1, -1, 2, -2, infinity: (dy0, dy0 + dy1 + dy2 + dy3, dy0 - dy1 + dy2
   - dy3, dy0 + 2 dy1 + 4 dy2 + 8 dy3, dy0 - 2 dy1 + 4 dy2 - 8 dy3, dy3) (tile_transforms4.py's
   `grad_output_transform4_1d` factors it into 8 operations). It is dg = G4^T [(A4 dy) * (B4^T d)],
   a minimal F(3, 4) read off the forward by transposition (grad_weight.py, section 3), and it
   reuses the forward's input transform V unchanged.

2. With channels: dU[xi][ci, co] = sum_t V[xi][t, ci] dM[xi][t, co], 216 products (Cin x T) @
   (T x Cout), then dw = G4_KRON^T dU in float64 (G4_KRON = G4 along three axes, (216, 27)). Per
   4x4x4 tile and channel pair that is 216 multiply-adds, against F(2^3, 3^3)'s 8 x 64 = 512 for the
   same 64 output voxels and the direct sum's 64 x 27 = 1728. The transformed buffers V and dM shrink
   by the same 2.37x.

3. The float32 error. V and dM are sums of up to 64 values with weights up to 125 (B4^T's 4 and 5)
   and 512 (A4's 8 per axis), and G4^T's 1/6, 1/12 and 1/24 then cancel most of dU's size: the dU
   entries are far larger than the dw they make, and their float32 rounding (relative to |dU|)
   survives. The sum over tiles runs in the same three short levels as in grad_weight.py, section 4
   (a register accumulator over a block, blocks into the chunk's partial, chunks in float64), and
   G4^T in float64. Measured on U-Net layers (ReLU'd inputs, 16^3 to 64^3, max error relative to
   the gradient's scale against float64): 1.2e-5 .. 2.3e-5, where F(2^3, 3^3)'s grad-weight gives
   2.5e-7 .. 4.2e-7 and F(4^3, 3^3)'s forward 1.7e-5 .. 4.4e-5; a 100-epoch run trains to the same
   loss (docs/performance.md, "F(4^3, 3^3) grad-weight"). tests/test_winograd4_grad_weight.py
   bounds it.

The kernel (`winograd4_grad_weight_kernel`) has grad_weight.py's layout and partition
(`grad_weight_partition` with 216 positions): chunks of consecutive 4x4x4 tiles, each with its own
partial dU (216, Cin_padded, Cout_padded), work items (chunk, group of output-channel blocks),
blocks of tiles whose V (216, rows, Cin_padded) and dM (216, Cout_padded/16, rows, 16) stay in the
worker's buffers, products.py's `accumulate_block_products` over 216 positions; grad_weight.py's
`chunked_grad_weight` runs it and adds the chunks' partials with G4_KRON (`sum_chunks_and_transform`).
"""
import numpy as np
from numba import prange

from ..jit import blocked_kernel
from ..register_tile import BLOCK_C
from .algorithm4 import A4_T, B4_T, G4, TILE_VALUES_4
from .grad_weight import chunked_grad_weight, winograd_grad_weight_reference, winograd_grad_weight_work_items
from .products import PRODUCT_ROWS, accumulate_block_products
from .tile_transforms4 import transform_grad_output_block4, transform_input_block4

G4_KRON = np.kron(np.kron(G4, G4), G4)                                # (216, 27): G4 along three axes at once


def winograd4_grad_weight_reference(x, grad_output):
    """Sections 1-2 plainly, in float64 (grad_weight.py's reference with F(4, 3)'s matrices): x
    (N, D, H, W, Cin) channels-last, unpadded; grad_output (N, D, H, W, Cout) -> dL/dweight
    (Cout, Cin, 3, 3, 3) of the stride-1, padding-1 convolution."""
    return winograd_grad_weight_reference(x, grad_output, B4_T, G4, A4_T)


# ---- the fast kernel ------------------------------------------------------------------------------
@blocked_kernel
def winograd4_grad_weight_kernel(x0, x1, grad_output, tiles_per_chunk, tiles_per_block, n_groups, block_rows,
                                 n_workers, partial):
    """partial[chunk] = dU (216, Cin_padded, Cout_padded) of the 4x4x4 tiles of chunk `chunk`
    (section 2), flat: tiles [chunk * tiles_per_chunk, (chunk + 1) * tiles_per_chunk). Arguments as
    grad_weight.py's `winograd_grad_weight_kernel`: x0, x1 (N, D, H, W, C) unpadded, side by side
    along the channels, read in place; grad_output (N, D, H, W, Cout); partial (n_chunks,
    216 * Cin_padded * Cout_padded), any values on entry; work items (chunk, group of output-channel
    blocks) taken by n_workers workers with their own buffers, each summed in one order whichever
    worker takes it: deterministic."""
    n_batch, size_d, size_h, size_w, cin0 = x0.shape
    cin = cin0 + x1.shape[4]
    n_tiles = n_batch * ((size_d + 3) // 4) * ((size_h + 3) // 4) * ((size_w + 3) // 4)
    n_chunks = partial.shape[0]
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    n_cblocks = (grad_output.shape[4] + BLOCK_C - 1) // BLOCK_C
    blocks_per_group = (n_cblocks + n_groups - 1) // n_groups
    rows = tiles_per_block + 1     # V, dM rows: one spare, so V[xi] and dM[xi] are not a power of two apart
    for worker in prange(n_workers):
        v = np.empty(TILE_VALUES_4 * rows * cin_padded, dtype=partial.dtype)           # V (216, rows, Cin_p)
        dm = np.empty(TILE_VALUES_4 * n_cblocks * rows * BLOCK_C, dtype=partial.dtype)  # dM (216, Cout_p/16, rows, 16)
        dm_matrix = dm.reshape(TILE_VALUES_4 * n_cblocks * rows, BLOCK_C)                # rows (xi, cb, t)
        staged = np.empty(TILE_VALUES_4 * BLOCK_C, dtype=partial.dtype)                # a tile at a face
        scratch_z = np.empty(TILE_VALUES_4 * BLOCK_C, dtype=partial.dtype)             # a tile after one pass
        scratch_zy = np.empty(TILE_VALUES_4 * BLOCK_C, dtype=partial.dtype)            # ... after two
        zeros = np.zeros((1, BLOCK_C), dtype=partial.dtype)                            # a zero register tile
        for item in range(worker, n_chunks * n_groups, n_workers):
            chunk = item // n_groups
            cb_first = item % n_groups * blocks_per_group                # this item's output channels
            cb_end = min(cb_first + blocks_per_group, n_cblocks)
            du = partial[chunk]
            chunk_first = np.int64(chunk) * tiles_per_chunk
            chunk_end = min(chunk_first + tiles_per_chunk, n_tiles)
            for first in range(chunk_first, chunk_end, tiles_per_block):
                count = min(tiles_per_block, chunk_end - first)
                transform_input_block4(x0, x1, first, count, rows, v, staged, scratch_z, scratch_zy)
                transform_grad_output_block4(grad_output, first, count, rows, cb_first, cb_end, dm, staged,
                                             scratch_z, scratch_zy)
                accumulate_block_products(v, dm_matrix, count, rows, cin_padded, n_cblocks, cb_first, cb_end,
                                          block_rows, du, first == chunk_first, zeros, TILE_VALUES_4)


def winograd4_grad_weight_work_items(shape, cin, cout):
    """The parallel work items of `winograd4_grad_weight` for inputs (N, D, H, W, ...) = shape of Cin
    channels in all and Cout output channels: (chunk, group) pairs of `winograd4_grad_weight_kernel`."""
    return winograd_grad_weight_work_items(shape, cin, cout, TILE_VALUES_4)


def winograd4_grad_weight(inputs, grad_output, block_rows=PRODUCT_ROWS):
    """Line (4) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1, by the transposed
    F(4^3, 3^3): inputs, a tuple of channels-last unpadded arrays (N, D, H, W, C_j) (one, or a
    decoder's two, whose channel concatenation is x), grad_output (N, D, H, W, Cout) -> dL/dweight
    (Cout, Cin, 3, 3, 3) in x's dtype. block_rows: input channels per register tile (this CPU's
    PRODUCT_ROWS; the tests pass 4, 6 and 8)."""
    return chunked_grad_weight(winograd4_grad_weight_kernel, G4_KRON, inputs, grad_output, block_rows,
                               "winograd4_grad_weight")
