"""The forward and grad-input of a 3x3x3, stride-1, padding-1 convolution by Winograd's F(4^3, 3^3)
(algorithm4.py): the block kernel, the blocking rule and the input and output bands (the filter
transform is filter_transform4.py).

The kernel (`winograd4_kernel`) has convolution.py's structure with 6x6x6 input tiles and 4x4x4
output tiles: channels-last x (N, D, H, W, Cin) read in place (tiles at the faces staged with their
zeros), output tiles numbered t = ((n * tiles_d + td) * tiles_h + th) * tiles_w + tw, blocks of
`tiles_per_block` consecutive tiles, one worker per block with its own V (216, rows, Cin) and
M (216, Cout/16, rows, 16) sized for L2, two inputs read and two outputs written in place, the bias
and a folded ReLU applied as the output is stored. The products are products.py's `multiply_block`
over 216 positions.

It runs the forward (training and inference) and grad-input (nn3d/kernels/conv_algorithm.py):
grad-input (`winograd4_grad_input`) is the same convolution of the output gradient with the flipped,
in/out-swapped filter, transformed anew. (F(2^3, 3^3) gets that transform from the forward's by
exchanging the points 0 and infinity; F(4^3, 3^3)'s points 2 and -2 have no inverse among its points,
so no such exchange exists.) Grad-weight by F(4^3, 3^3) is grad_weight4.py's transposed algorithm.
"""
import numba
import numpy as np
from numba import prange

from ..jit import blocked_kernel
from ..register_tile import BLOCK_C
from .algorithm4 import TILE_VALUES_4
from .convolution import kernel_inputs, kernel_outputs, output_bands
from .filter_transform4 import filter_transform4
from .products import PRODUCT_ROWS, multiply_block
from .tile_transforms4 import tile_count4, transform_input_block4, transform_output_block4


@blocked_kernel
def winograd4_kernel(x0, x1, u_packed, bias, relu, tiles_per_block, block_rows, n_workers, y0, y1):
    """y = conv(x, weight) + bias for 3x3x3, stride 1, padding 1, by F(4^3, 3^3), max(0, y) if relu;
    x is x0 and x1 side by side along the channels, y is y0 and y1 (as convolution.py's
    winograd_kernel). x0, x1 (N, D, H, W, C) unpadded; u_packed (216, Cout_padded/16, Cin, 16) from
    filter_transform4.py; bias (Cout_padded,); block_rows: the product tile (products.py; V and M
    have whole tiles of rows, a multiple of 8 for block_rows 8, else of 4). Workers
    take blocks worker, worker + n_workers, ... with their own buffers; which worker computes a tile
    does not change its value."""
    n_batch, size_d, size_h, size_w, cin0 = x0.shape
    cin = cin0 + x1.shape[4]
    n_cblocks = u_packed.shape[1]
    n_tiles = n_batch * ((size_d + 3) // 4) * ((size_h + 3) // 4) * ((size_w + 3) // 4)
    n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
    row_tile = 8 if block_rows == 8 else 4                 # V and M rows: whole register tiles
    rows = (tiles_per_block + row_tile - 1) // row_tile * row_tile
    cin_padded = (cin + BLOCK_C - 1) // BLOCK_C * BLOCK_C
    u_matrix = u_packed.reshape(u_packed.size // BLOCK_C, BLOCK_C)       # rows (xi, cb, ci)
    for worker in prange(n_workers):
        v = np.empty(TILE_VALUES_4 * rows * cin_padded, dtype=y0.dtype)              # V (216, rows, Cin_p)
        m = np.empty(TILE_VALUES_4 * n_cblocks * rows * BLOCK_C, dtype=y0.dtype)    # M (216, Cout_p/16, rows, 16)
        zeros = np.zeros((1, BLOCK_C), dtype=y0.dtype)                             # a zero register tile
        staged = np.empty(TILE_VALUES_4 * BLOCK_C, dtype=y0.dtype)                  # a tile at a face
        scratch_z = np.empty(TILE_VALUES_4 * BLOCK_C, dtype=y0.dtype)               # a tile after one pass
        scratch_zy = np.empty(TILE_VALUES_4 * BLOCK_C, dtype=y0.dtype)              # ... after two
        for block in range(worker, n_blocks, n_workers):
            first = np.int64(block) * tiles_per_block
            count = min(tiles_per_block, n_tiles - first)
            transform_input_block4(x0, x1, first, count, rows, v, staged, scratch_z, scratch_zy)
            multiply_block(v, u_matrix, rows, cin, n_cblocks, block_rows, m, zeros, TILE_VALUES_4)
            transform_output_block4(m, bias, relu, first, count, rows, y0, y1, scratch_z, scratch_zy)


def tiles_per_block4_for(n_tiles):
    """Tiles per block: 8 (512 output voxels, as F(2^3, 3^3)'s 64-tile blocks; 16 ran no faster at
    the U-Net's shapes, one thread, AVX2), 4 below 64 tiles so that a small volume (an 8^3
    bottleneck: 8 tiles) still has a block for each of two threads."""
    return 8 if n_tiles >= 64 else 4


def winograd4_work_items(shape, cin, cout):
    """The parallel work items of `winograd4_forward`: its blocks of tiles, for inputs
    (N, D, H, W, ...) = shape of Cin channels in all and Cout output channels."""
    n_tiles = tile_count4(shape)
    return -(-n_tiles // tiles_per_block4_for(n_tiles))


def winograd4_convolution(inputs, u, bias, output_channels, block_rows=PRODUCT_ROWS, tiles_per_block=None,
                          relu=False):
    """convolution.py's `winograd_convolution` by F(4^3, 3^3): the 3x3x3, stride-1, padding-1
    convolution of the channel concatenation of `inputs` (channels-last (N, D, H, W, C_j), unpadded;
    two are read in place when the first has a multiple of 16 channels) with u =
    filter_transform4(weight) (filter_transform4.py) and bias (Cout,) or None, cut into bands of
    `output_channels` channels (two written in place when the first has a multiple of 16); relu:
    max(0, y) as it is stored; block_rows: the product tile (the tests pass 4, 6 and 8);
    tiles_per_block: None for `tiles_per_block4_for`."""
    x0, x1 = kernel_inputs(inputs)
    cout_padded = u.shape[1] * BLOCK_C
    bias_padded = np.zeros(cout_padded, dtype=x0.dtype)
    if bias is not None:
        bias_padded[:sum(output_channels)] = bias
    if tiles_per_block is None:
        tiles_per_block = tiles_per_block4_for(tile_count4(x0.shape))
    y0, y1 = kernel_outputs(x0, output_channels, cout_padded)
    winograd4_kernel(x0, x1, u, bias_padded, relu, np.int64(tiles_per_block), np.int64(block_rows),
                     np.int64(numba.get_num_threads()), y0, y1)
    return output_bands(y0, y1, output_channels)


def winograd4_forward(inputs, u, bias, cout, block_rows=PRODUCT_ROWS, tiles_per_block=None, relu=False):
    """Line (1) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1, by F(4^3, 3^3): inputs, a
    tuple of channels-last unpadded arrays (N, D, H, W, C_j) (one, or a decoder's two, convolved as
    their channel concatenation) -> y (N, D, H, W, Cout). u = filter_transform4(weight) for a weight
    of Cout output channels; bias (Cout,) or None; relu: max(0, y) as it is stored."""
    return winograd4_convolution(inputs, u, bias, (cout,), block_rows, tiles_per_block, relu)[0]


def winograd4_grad_input(grad_output, weight, input_channels, block_rows=PRODUCT_ROWS):
    """Line (3) of nn3d/conv3d.py for a 3x3x3 kernel, stride 1, padding 1, by F(4^3, 3^3): the
    output gradient (N, D, H, W, Cout), padded by k - 1 - p = 1, convolved with the flipped kernel
    whose in/out channels are swapped, w'[ci, co, kz, ky, kx] = w[co, ci, 2 - kz, 2 - ky, 2 - kx]
    (its transform computed here from `weight` (Cout, Cin, 3, 3, 3)), cut into the inputs' bands of
    `input_channels` channels -> (dL/dx_0, dL/dx_1, ...), (N, D, H, W, C_j) each."""
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1, ::-1].transpose(1, 0, 2, 3, 4))
    return winograd4_convolution((grad_output,), filter_transform4(flipped), None, input_channels, block_rows)
