"""Grad-weight of a 3x3x3, stride-1, padding-1 convolution by Winograd's F(2^3, 3^3): line (4) of
nn3d/conv3d.py computed as the gradient of the forward algorithm of this package (read
algorithm.py first: B^T, G, A^T, U, V, xi and the tiles are the same here).

1. The gradient of one tile. Per 2x2x2 output tile t the forward computes, along each axis,

       y_t = A^T [ U * V_t ]        U = G g G^T (the filter),   V_t = B^T d_t B (the input tile)

   so y_t[p] = sum_xi A^T[p, xi] U[xi] V_t[xi], with p over the tile's 8 voxels, xi over the 64
   transformed positions and A^T[p, xi] = A^T[p0, az] A^T[p1, ay] A^T[p2, ax]. Let dy_t = dL/dy_t be
   the output gradient's tile (2, 2, 2). The weights reach L only through the y_t, and linearly:

       dL/dU[xi] = sum_t sum_p dy_t[p] A^T[p, xi] V_t[xi] = sum_t dM_t[xi] V_t[xi],
       dM_t[xi]  = sum_p A^T[p, xi] dy_t[p]         (4, 4, 4): A dy_t A^T along each axis, = dL/dM_t

   One axis of A = (A^T)^T maps the two gradients (dy0, dy1) to the four values (dy0, dy0 + dy1,
   dy0 - dy1, dy1): additions only, like B^T. And U[xi] = sum_k G_KRON[xi, k] g[k] over the 27 taps k = (i, j, k)
   (filter_transform.py), so

       dL/dg[i, j, k] = sum_{az,ay,ax} G[az, i] G[ay, j] G[ax, k] dL/dU[az, ay, ax]   G^T along each axis

2. With channels U[xi] is (Cin, Cout), V_t[xi] has Cin values and dM_t[xi] Cout:

       dU[xi][ci, co] = sum_t V[xi][t, ci] dM[xi][t, co]     64 products (Cin x T) @ (T x Cout)
       dw[co, ci, i, j, k] = sum_xi G_KRON[xi, (i, j, k)] dU[xi][ci, co]      (Cout, Cin, 3, 3, 3)

   The first line is the work: 64 multiply-adds per tile and channel pair, where the direct sum (4)
   does 8 voxels x 27 taps = 216, the same 3.375x as the forward. The second is one (27, 64) @
   (64, Cin*Cout) product per call, 27/T of the first line's multiplications, in float64. (It runs
   in the parallel kernel that adds the chunks' partial dU, `sum_chunks_and_transform`, which reads
   every dU entry anyway: no BLAS call, no transposed copies, every core busy.)

3. Why the transposed F(2, 3), and no F(3, 2). Grad-weight is itself a correlation, of the input
   with the output gradient: along one axis, dg_i = sum_o d_{o+i} dy_o, three taps from a 2-wide
   tile of dy, for which one could derive a minimal algorithm F(3, 2) of its own. It is not needed:
   the forward computes y = A^T [(G g) * (B^T d)], linear in g, with one multiplication per
   transformed position; the gradient of a linear map is its transpose, and the transpose of this
   program (read backwards: A^T becomes A, G becomes G^T, the element-wise product stays) is
   dg = G^T [(A dy) * (B^T d)], with the same 4 multiplications per tile in 1-D, 64 in 3-D. That is
   an F(3, 2) algorithm (Winograd's transposition principle), read off the forward one, and it
   reuses the forward's input transform V unchanged. Edges need nothing new: the input's halo is
   the forward's zeros, and where an odd size leaves the last tile partial, the forward dropped the
   outputs beyond the volume, so their gradient is zero: dy_t is padded with zeros.

4. Where the float32 error comes from. The transforms add at most 8 values each (V, dM; exact
   coefficients 0, +-1); the long sum is the one over tiles, T = N*D*H*W/8 (32768 at 64^3), in three
   short levels: a register accumulator runs over the tiles of one block (<= 64), the blocks of a
   chunk add into the chunk's own partial dU, and the chunks' partials are added in float64, in
   chunk order (no float32 chain runs over all tiles, and the result does not depend on the thread
   count). G^T then runs in float64. The dU entries are larger than the dw they make (each V and dM
   sums up to 8 values, and G^T subtracts them), so their rounding errors count relative to |dU|,
   not |dw|; against that, no float32 sum is long. Measured (python -m benchmarks.winograd_accuracy,
   U-Net layers at 64^3, max error relative to the gradient's scale vs float64): 2.7e-7 .. 4.7e-7,
   the direct kernel (one float32 chain per chunk of output rows) 2.8e-7 .. 1.3e-6.

Layout of the fast kernel (`winograd_grad_weight_kernel`): x (N, D, H, W, Cin) channels-last without
a halo and grad_output (N, D, H, W, Cout), tiles numbered as in convolution.py. The tiles are cut into
chunks of consecutive tiles (their number fixed by the shapes: `grad_weight_partition`); each chunk
owns a partial dU (64, Cin_padded, Cout_padded). A work item is a chunk, or where there are fewer
than 32 chunks (a 16^3 volume has 8) a chunk and one group of its output-channel blocks, which owns
those columns of the chunk's dU: every dU entry is still summed over the same tiles in the same
order, whatever the grouping, and the items' cost is the input transform done once per group. Within
an item a worker goes block by block (`tiles_per_block` tiles): V (64, rows, Cin_padded) by tile_transforms.py's
`transform_input_block`, dM (64, Cout_padded/16, rows, 16) by `transform_grad_output_block`, then
`accumulate_block_products` adds V[xi]^T dM[xi] into the chunk's dU, a register tile of block_rows
input channels x 16 output channels at a time running over the block's tiles. V and dM (8x the
block's input and output gradient) stay in the worker's buffers: they never travel through main
memory. `sum_chunks_and_transform` then adds the chunks' partials and applies G^T, in float64, in
parallel over the input channels.
"""
import numba
import numpy as np
from numba import prange

from ...core import arena
from ..jit import blocked_kernel, parallel_kernel
from ..partial_sums import WORK_ITEMS
from ..register_tile import BLOCK_C, padded_channels
from .algorithm import A_T, B_T, G, G_KRON, TILE_VALUES
from .algorithm4 import TILE_VALUES_4
from .convolution import kernel_inputs
from .products import PRODUCT_ROWS, accumulate_block_products
from .tile_transforms import tile_count, transform_grad_output_block, transform_input_block
from .tile_transforms4 import tile_count4


def winograd_grad_weight_reference(x, grad_output, b_t=B_T, g=G, a_t=A_T):
    """Sections 1-2 plainly, in float64, for the 1-D transforms of any F(e, 3) (F(2, 3)'s by default,
    algorithm4.py's F(4, 3) for grad_weight4.py): x (N, D, H, W, Cin) channels-last, unpadded;
    grad_output (N, D, H, W, Cout) -> dL/dweight (Cout, Cin, 3, 3, 3) of the stride-1, padding-1
    convolution."""
    e, e2 = a_t.shape                                                      # e outputs, e + 2 inputs
    n_batch, *size, cin = x.shape
    cout = grad_output.shape[4]
    tiles_d, tiles_h, tiles_w = tiles = [-(-s // e) for s in size]
    x_pad = np.zeros((n_batch, *(e * t + 2 for t in tiles), cin))         # halo 1, rounded up to e
    x_pad[:, 1:size[0] + 1, 1:size[1] + 1, 1:size[2] + 1] = x
    d = np.lib.stride_tricks.sliding_window_view(x_pad, (e2, e2, e2), axis=(1, 2, 3))[:, ::e, ::e, ::e]
    # d: (N, tiles_d, tiles_h, tiles_w, Cin, e+2, e+2, e+2), input tiles overlapping by 2
    dy = np.zeros((n_batch, *(e * t for t in tiles), cout))      # output gradient, zeros past the edges
    dy[:, :size[0], :size[1], :size[2]] = grad_output
    dy = dy.reshape(n_batch, tiles_d, e, tiles_h, e, tiles_w, e, cout)  # (N, td, p, th, q, tw, r, Cout)
    v = np.einsum("ai,bj,ck,ntuvxijk->ntuvabcx", b_t, b_t, b_t, d, optimize=True)   # (..., e+2 x3, Cin)
    dm = np.einsum("pa,qb,rc,ntpuqvro->ntuvabco", a_t, a_t, a_t, dy, optimize=True)  # (..., e+2 x3, Cout)
    du = np.einsum("ntuvabcx,ntuvabco->abcxo", v, dm, optimize=True)                 # (e+2 x3, Cin, Cout)
    return np.einsum("ai,bj,ck,abcxo->oxijk", g, g, g, du, optimize=True)          # (Cout, Cin, 3, 3, 3)


# ---- the fast kernel ------------------------------------------------------------------------------
@blocked_kernel
def winograd_grad_weight_kernel(x0, x1, grad_output, tiles_per_chunk, tiles_per_block, n_groups, block_rows,
                                n_workers, partial):
    """partial[chunk] = dU (64, Cin_padded, Cout_padded) of the tiles of chunk `chunk` (section 2),
    flat: tiles [chunk * tiles_per_chunk, (chunk + 1) * tiles_per_chunk).

    x0, x1 (N, D, H, W, C) unpadded: the input x is the two side by side along the channels, read in
    place (`transform_input_block`; x1 may have no channels); grad_output (N, D, H, W, Cout); partial (n_chunks,
    64 * Cin_padded * Cout_padded), any values on entry; block_rows = PRODUCT_ROWS (input channels
    per register tile: 8 on AVX-512, 6 on AVX2, products.py). Work items: (chunk, group of output-channel blocks), n_groups groups per
    chunk. The prange runs over n_workers (the thread count) workers, each with its own V, dM and
    scratch buffers (allocated once per call), taking items worker, worker + n_workers, ...; an item
    sums its chunk block by block in one order whichever worker takes it: deterministic."""
    n_batch, size_d, size_h, size_w, cin0 = x0.shape
    cin = cin0 + x1.shape[4]
    n_tiles = n_batch * ((size_d + 1) // 2) * ((size_h + 1) // 2) * ((size_w + 1) // 2)
    n_chunks = partial.shape[0]
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    n_cblocks = (grad_output.shape[4] + BLOCK_C - 1) // BLOCK_C
    blocks_per_group = (n_cblocks + n_groups - 1) // n_groups
    rows = tiles_per_block + 1     # V, dM rows: one spare, so V[xi] and dM[xi] are not a power of two apart
    for worker in prange(n_workers):
        v = np.empty(TILE_VALUES * rows * cin_padded, dtype=partial.dtype)           # V (64, rows, Cin_p)
        dm = np.empty(TILE_VALUES * n_cblocks * rows * BLOCK_C, dtype=partial.dtype)  # dM (64, Cout_p/16, rows, 16)
        dm_matrix = dm.reshape(TILE_VALUES * n_cblocks * rows, BLOCK_C)                # rows (xi, cb, t)
        staged = np.empty(TILE_VALUES * BLOCK_C, dtype=partial.dtype)                # a tile at a face
        zeros = np.zeros((1, BLOCK_C), dtype=partial.dtype)                          # a zero register tile
        for item in range(worker, n_chunks * n_groups, n_workers):
            chunk = item // n_groups
            cb_first = item % n_groups * blocks_per_group                # this item's output channels
            cb_end = min(cb_first + blocks_per_group, n_cblocks)
            du = partial[chunk]
            chunk_first = np.int64(chunk) * tiles_per_chunk
            chunk_end = min(chunk_first + tiles_per_chunk, n_tiles)
            for first in range(chunk_first, chunk_end, tiles_per_block):
                count = min(tiles_per_block, chunk_end - first)
                transform_input_block(x0, x1, first, count, rows, v, staged)
                transform_grad_output_block(grad_output, first, count, rows, cb_first, cb_end, dm, staged)
                accumulate_block_products(v, dm_matrix, count, rows, cin_padded, n_cblocks, cb_first, cb_end,
                                          block_rows, du, first == chunk_first, zeros, TILE_VALUES)


@parallel_kernel
def sum_chunks_and_transform(partial, g_kron, grad_weight):
    """grad_weight[co, ci, k] = sum_xi g_kron[xi, k] dU[xi, ci, co], where dU = sum_chunk partial[chunk]
    (section 2's second line), in float64: the chunks added in chunk order (the same on any thread
    count), then the (27, positions) G_KRON^T product, skipping its zeros. One work item per input
    channel ci: it reads row ci of every chunk's dU[xi] and writes grad_weight[:, ci]. partial
    (n_chunks, positions, Cin_padded, Cout_padded), positions = 64 (F(2^3, 3^3)) or 216
    (F(4^3, 3^3), grad_weight4.py); g_kron (positions, 27) float64; grad_weight (Cout, Cin, 27)."""
    n_chunks, positions = partial.shape[0], partial.shape[1]
    cout, cin, taps = grad_weight.shape
    for ci in prange(cin):
        du = np.zeros((positions, cout))                    # dU[:, ci, :], float64
        for chunk in range(n_chunks):
            for xi in range(positions):
                for co in range(cout):
                    du[xi, co] += partial[chunk, xi, ci, co]
        dw = np.zeros((taps, cout))                          # grad_weight[:, ci, :]^T, float64
        for xi in range(positions):
            for k in range(taps):
                if g_kron[xi, k] != 0:
                    for co in range(cout):
                        dw[k, co] += g_kron[xi, k] * du[xi, co]
        for co in range(cout):
            for k in range(taps):
                grad_weight[co, ci, k] = dw[k, co]


PARTIAL_BUDGET = 1 << 22   # values of all chunks' partial dU together (16 MiB of float32)
MIN_CHUNK_VOXELS = 512     # a chunk's output voxels (64 tiles of 2^3, 8 of 4^3): its arithmetic must
                           # outweigh zeroing and summing its dU
MIN_BLOCK_TILES = {TILE_VALUES: 16, TILE_VALUES_4: 64}   # a block's fewest tiles, F(2^3, 3^3) and F(4^3, 3^3)
TILE_VOXELS = {TILE_VALUES: 8, TILE_VALUES_4: 64}       # output voxels per tile


def grad_weight_partition(n_tiles, cin_padded, cout_padded, positions=TILE_VALUES):
    """(tiles_per_block, tiles_per_chunk, n_chunks, n_groups) for n_tiles tiles of `positions`
    transformed values (64: F(2^3, 3^3)'s 2x2x2 output tiles; 216: F(4^3, 3^3)'s 4x4x4), from the
    shapes only (never the thread count: the sums are the same on any machine). Blocks: V and dM of
    a block, positions * tiles * (Cin + Cout) values, in about 1 MiB of float32 (half of this
    machine's L2): a power of two of at least MIN_BLOCK_TILES and at most 64 tiles (which divides
    the tile counts of power-of-two volumes into equal chunks). Chunks: WORK_ITEMS (32) when there
    are enough tiles, at least MIN_CHUNK_VOXELS output voxels each, and no more than PARTIAL_BUDGET
    values of partial dU (positions * Cin * Cout each) in all; whole blocks. Groups of output-channel
    blocks per chunk: as many as make WORK_ITEMS work items (chunk, group), at most one per block of
    16 output channels (a 16^3 volume by F(2^3, 3^3): 8 chunks x 4 groups at 64 channels)."""
    fitting = max(1, (1 << 18) // (positions * (cin_padded + cout_padded)))
    tiles_per_block = int(min(64, max(MIN_BLOCK_TILES[positions], 2 ** int(np.log2(fitting)))))
    partial_size = positions * cin_padded * cout_padded
    n_chunks = max(1, min(WORK_ITEMS, n_tiles * TILE_VOXELS[positions] // MIN_CHUNK_VOXELS,
                          PARTIAL_BUDGET // partial_size))
    tiles_per_chunk = -(-n_tiles // n_chunks)
    tiles_per_chunk = -(-tiles_per_chunk // tiles_per_block) * tiles_per_block
    n_chunks = -(-n_tiles // tiles_per_chunk)
    n_cblocks = cout_padded // BLOCK_C
    blocks_per_group = -(-n_cblocks // min(n_cblocks, -(-WORK_ITEMS // n_chunks)))
    return tiles_per_block, tiles_per_chunk, n_chunks, -(-n_cblocks // blocks_per_group)


def partition_of(shape, cin, cout, positions=TILE_VALUES):
    """`grad_weight_partition` for inputs (N, D, H, W, ...) = shape of Cin channels in all and Cout
    output channels, by F(2^3, 3^3) (positions 64) or F(4^3, 3^3) (216)."""
    count = tile_count if positions == TILE_VALUES else tile_count4
    return grad_weight_partition(count(shape), padded_channels(cin), padded_channels(cout), positions)


def winograd_grad_weight_work_items(shape, cin, cout, positions=TILE_VALUES):
    """The parallel work items of `winograd_grad_weight` (of grad_weight4.py's `winograd4_grad_weight`
    for positions 216) for inputs (N, D, H, W, ...) = shape of Cin channels in all and Cout output
    channels: the (chunk, group) pairs of the kernel."""
    _, _, n_chunks, n_groups = partition_of(shape, cin, cout, positions)
    return n_chunks * n_groups


def chunked_grad_weight(chunk_kernel, g_kron, inputs, grad_output, block_rows, caller):
    """Line (4) of nn3d/conv3d.py by a transposed Winograd algorithm whose transform has g_kron.shape[0]
    positions: `chunk_kernel` (this file's `winograd_grad_weight_kernel`, or grad_weight4.py's)
    writes each chunk's partial dU, `sum_chunks_and_transform` adds them and applies g_kron^T. Shared
    by `winograd_grad_weight` and grad_weight4.py's `winograd4_grad_weight` (arguments as theirs;
    `caller` names the function in the error message)."""
    if any(x.shape[:4] != grad_output.shape[:4] for x in inputs):
        raise ValueError(f"{caller}: grad_output {grad_output.shape} does not match the "
                         f"input {inputs[0].shape} outside the channel axis")
    positions = g_kron.shape[0]
    x0, x1 = kernel_inputs(inputs)
    grad_output = np.ascontiguousarray(grad_output, dtype=x0.dtype)
    cin, cout = x0.shape[4] + x1.shape[4], grad_output.shape[4]
    cin_padded, cout_padded = padded_channels(cin), padded_channels(cout)
    tiles_per_block, tiles_per_chunk, n_chunks, n_groups = partition_of(x0.shape, cin, cout, positions)
    partial = arena.empty((n_chunks, positions * cin_padded * cout_padded), x0.dtype)    # dU per chunk
    chunk_kernel(x0, x1, grad_output, np.int64(tiles_per_chunk), np.int64(tiles_per_block), np.int64(n_groups),
                 np.int64(block_rows), np.int64(numba.get_num_threads()), partial)
    grad_weight = np.empty((cout, cin, 27), x0.dtype)                                # (Cout, Cin, 27)
    sum_chunks_and_transform(partial.reshape(n_chunks, positions, cin_padded, cout_padded), g_kron, grad_weight)
    return grad_weight.reshape(cout, cin, 3, 3, 3)


def winograd_grad_weight(inputs, grad_output, block_rows=PRODUCT_ROWS):
    """Line (4) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1, by the transposed
    F(2^3, 3^3): inputs, a tuple of channels-last unpadded arrays (N, D, H, W, C_j) (one, or a
    decoder's two, whose channel concatenation is x; two whose first has a multiple of 16 channels
    are read in place, anything else through one concatenated copy), grad_output (N, D, H, W, Cout)
    -> dL/dweight (Cout, Cin, 3, 3, 3) in x's dtype. block_rows: input channels per register tile
    (this CPU's PRODUCT_ROWS; the tests pass 4, 6 and 8)."""
    return chunked_grad_weight(winograd_grad_weight_kernel, G_KRON, inputs, grad_output, block_rows,
                               "winograd_grad_weight")
