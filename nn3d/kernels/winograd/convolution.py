"""Forward and grad-input of a 3x3x3, stride-1, padding-1 convolution by Winograd's F(2^3, 3^3)
(algorithm.py derives it): the block kernel, the blocking rule, and the plumbing of input and output
bands.

Layout of the fast kernel (`winograd_kernel`): channels-last x (N, D, H, W, Cin) without a halo
(tiles inside the volume are read from x directly, tiles at its faces are first copied with their
zeros into a small buffer, so no padded copy of x is made), output tiles of 2x2x2 voxels numbered
t = ((n * tiles_d + td) * tiles_h + th) * tiles_w + tw. Work comes in blocks of `tiles_per_block`
consecutive tiles; one worker thread owns a block and its output voxels (deterministic, no
reductions between threads) and keeps V (64, rows, Cin) and M (64, Cout/16, rows, 16) of that block
in buffers sized for L2: the transformed tiles, 8x the size of the output, never travel through main
memory. Per block: input transform, 64 register-blocked matrix products (rows of tiles x 16 output
channels in local variables, like the direct kernel's voxels), output transform with the bias,
written to y. The input may be two arrays (a decoder's up-sampled tensor and its skip connection),
read in place as if concatenated along the channels; the output may be two arrays likewise (the
gradients of those two inputs).
"""
import numba
import numpy as np
from numba import prange

from ...core import arena
from ..jit import blocked_kernel
from ..padding import pad_and_concatenate
from ..register_tile import BLOCK_C
from .algorithm import TILE_VALUES
from .filter_transform import flipped_transposed_transform
from .products import PRODUCT_ROWS, multiply_block
from .tile_transforms import tile_count, transform_input_block, transform_output_block


@blocked_kernel
def winograd_kernel(x0, x1, u_packed, bias, relu, tiles_per_block, block_rows, n_workers, y0, y1):
    """y = conv(x, weight) + bias for 3x3x3, stride 1, padding 1, by F(2^3, 3^3) (algorithm.py, sections 2-3),
    or max(0, y) if relu (a folded BatchNorm's ReLU, nn3d/batchnorm_folding.py),
    where x is x0 and x1 side by side along the channels and y is y0 and y1 (see
    `transform_input_block` and `transform_output_block`: the concatenation of a decoder's inputs,
    or the split of its input gradient, costs nothing).

    x0, x1 (N, D, H, W, C) unpadded; u_packed (64, Cout_padded/16, Cin, 16) from
    `filter_transform`; bias (Cout_padded,); y0, y1 (N, D, H, W, C); block_rows = PRODUCT_ROWS
    (tiles per register tile: 8 on AVX-512, 6 on AVX2, products.py). A block is `tiles_per_block` consecutive tiles; one worker owns
    a block's tiles and their output voxels, and computes what winograd_forward_reference computes,
    in the input's dtype, reordered: `transform_input_block`, `multiply_block`, `transform_output_block`
    through the block's own V and M (sized for L2). The prange runs over n_workers (the thread
    count) workers, each with its own buffers, taking blocks worker, worker + n_workers, ...: the
    buffers are allocated once per call, not once per block (fresh pages for every block cost more
    than the arithmetic). Which worker computes a tile does not change its value: deterministic.
    """
    n_batch, size_d, size_h, size_w, cin0 = x0.shape
    cin = cin0 + x1.shape[4]
    n_cblocks = u_packed.shape[1]
    n_tiles = n_batch * ((size_d + 1) // 2) * ((size_h + 1) // 2) * ((size_w + 1) // 2)
    n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
    rows = (tiles_per_block + 7) // 8 * 8                  # V and M rows: whole register tiles
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    u_matrix = u_packed.reshape(u_packed.size // BLOCK_C, BLOCK_C)       # rows (xi, cb, ci)
    for worker in prange(n_workers):
        v = np.empty(TILE_VALUES * rows * cin_padded, dtype=y0.dtype)            # V (64, rows, Cin_padded)
        m = np.empty(TILE_VALUES * n_cblocks * rows * BLOCK_C, dtype=y0.dtype)  # M (64, Cout_p/16, rows, 16)
        zeros = np.zeros((1, BLOCK_C), dtype=y0.dtype)                         # a zero register tile
        staged = np.empty(TILE_VALUES * BLOCK_C, dtype=y0.dtype)                # a tile at a face
        for block in range(worker, n_blocks, n_workers):
            first = np.int64(block) * tiles_per_block
            count = min(tiles_per_block, n_tiles - first)
            transform_input_block(x0, x1, first, count, rows, v, staged)
            multiply_block(v, u_matrix, rows, cin, n_cblocks, block_rows, m, zeros, TILE_VALUES)
            transform_output_block(m, bias, relu, first, count, rows, y0, y1)


def tiles_per_block_for(cin, cout_padded):
    """Tiles per block: V and M of a block, 64 * tiles * (Cin + Cout) values, in about 128 KiB of
    float32, in whole register tiles (8..64). At the U-Net's shapes smaller blocks are faster, down
    to 8 tiles (buffers that stay in L1/L2 while the three phases pass over them; many blocks to
    share between threads at 8^3), and larger ones up to 2x slower (docs/performance.md)."""
    cin_padded = -(-cin // BLOCK_C) * BLOCK_C
    return int(min(64, max(8, 512 // (cin_padded + cout_padded) // 8 * 8)))


def winograd_convolution_work_items(shape, cin, cout):
    """The parallel work items of `winograd_convolution` with the default blocking: the blocks of
    tiles `winograd_kernel` deals to its workers, for inputs (N, D, H, W, ...) = shape of Cin
    channels in all and Cout output channels."""
    return -(-tile_count(shape) // tiles_per_block_for(cin, -(-cout // BLOCK_C) * BLOCK_C))


def no_channels(like):
    """An (N, D, H, W, 0) array: the absent second input or output of `winograd_kernel`."""
    return np.empty((*like.shape[:4], 0), like.dtype)


def kernel_inputs(inputs):
    """The (x0, x1) pair the kernels read side by side from a tuple of channels-last inputs
    (N, D, H, W, C_j): two whose first has a multiple of 16 channels as they are (no block of 16
    channels spans both), one with an empty x1, anything else concatenated into one copy."""
    inputs = tuple(np.ascontiguousarray(x) for x in inputs)
    if len(inputs) > 2 or (len(inputs) == 2 and inputs[0].shape[4] % BLOCK_C):
        inputs = (pad_and_concatenate(inputs, (0, 0, 0)),)              # channels side by side
    return inputs[0], inputs[1] if len(inputs) == 2 else no_channels(inputs[0])


def winograd_convolution(inputs, u, bias, output_channels, block_rows=PRODUCT_ROWS, tiles_per_block=None,
                         relu=False):
    """The 3x3x3, stride-1, padding-1 convolution of the channel concatenation of `inputs` (a tuple
    of channels-last arrays (N, D, H, W, C_j), unpadded) by F(2^3, 3^3), with the packed transformed
    filter u (64, Cout_padded/16, Cin, 16) (`filter_transform`, in the inputs' dtype) and bias
    (Cout,) or None. Returns the output's channels cut into bands of sizes `output_channels` (summing
    to Cout): a tuple of C-contiguous (N, D, H, W, C) arrays. Two inputs whose first has a multiple
    of 16 channels are read in place, and two output bands whose first is a multiple of 16 are
    written in place; anything else goes through one concatenated (or split) copy. block_rows: the
    register tile (this CPU's PRODUCT_ROWS; the tests pass 4, 6 and 8); tiles_per_block: None for
    `tiles_per_block_for`; relu: max(0, output)."""
    x0, x1 = kernel_inputs(inputs)
    cout = sum(output_channels)
    cout_padded = u.shape[1] * BLOCK_C
    bias_padded = np.zeros(cout_padded, dtype=x0.dtype)
    if bias is not None:
        bias_padded[:cout] = bias
    if tiles_per_block is None:
        tiles_per_block = tiles_per_block_for(x0.shape[4] + x1.shape[4], cout_padded)
    y0, y1 = kernel_outputs(x0, output_channels, cout_padded)
    winograd_kernel(x0, x1, u, bias_padded, relu, np.int64(tiles_per_block), np.int64(block_rows),
                    np.int64(numba.get_num_threads()), y0, y1)
    return output_bands(y0, y1, output_channels)


def kernel_outputs(x0, output_channels, cout_padded):
    """The (y0, y1) pair a kernel writes side by side, for outputs of the voxels of x0 cut into bands
    of `output_channels` channels (Cout_padded in all): two bands whose first has a multiple of 16
    channels as two arrays (written in place), anything else one array of Cout_padded channels and
    an empty y1."""
    if len(output_channels) == 2 and output_channels[0] % BLOCK_C == 0:
        return (arena.empty((*x0.shape[:4], output_channels[0]), x0.dtype),
                arena.empty((*x0.shape[:4], cout_padded - output_channels[0]), x0.dtype))
    return arena.empty((*x0.shape[:4], cout_padded), x0.dtype), no_channels(x0)


def output_bands(y0, y1, output_channels):
    """The bands of `output_channels` channels of a kernel's (y0, y1) (`kernel_outputs`), each a
    C-contiguous (N, D, H, W, C) array: y0 and y1 themselves where they are exactly the bands, else
    copies of their slices."""
    if y1.shape[4]:
        outputs = (y0, y1)
    else:
        bands = np.cumsum((0, *output_channels))
        outputs = tuple(y0[..., start:stop] for start, stop in zip(bands[:-1], bands[1:]))
    return tuple(y if y.shape[4] == channels and y.flags.c_contiguous      # else: a band, or padding
                 else arena.copy(y[..., :channels]) for y, channels in zip(outputs, output_channels))


def winograd_forward(inputs, u, bias, cout, block_rows=PRODUCT_ROWS, tiles_per_block=None, relu=False):
    """Line (1) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1: inputs, a tuple of
    channels-last unpadded arrays (N, D, H, W, C_j) (one, or a decoder's two, convolved as their
    channel concatenation) -> y (N, D, H, W, Cout). u = filter_transform(weight) for a weight of
    Cout output channels; bias (Cout,) or None; relu: max(0, y) as it is stored."""
    return winograd_convolution(inputs, u, bias, (cout,), block_rows, tiles_per_block, relu)[0]


def winograd_grad_input(grad_output, u, input_channels, block_rows=PRODUCT_ROWS):
    """Line (3) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1: the output gradient
    (N, D, H, W, Cout), padded by k - 1 - p = 1, convolved with the flipped, in/out-swapped kernel
    (whose transform comes from the forward's u = filter_transform(weight), no new transform): the
    same F(2^3, 3^3) convolution, its output cut into the inputs' bands of `input_channels` channels
    -> (dL/dx_0, dL/dx_1, ...), (N, D, H, W, C_j) each. One pass for all inputs: the output-gradient
    transform and the products are shared."""
    return winograd_convolution((grad_output,), flipped_transposed_transform(u, grad_output.shape[4]), None,
                                input_channels, block_rows)
