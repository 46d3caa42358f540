"""1x1x1 convolutions with fewer than 16 output channels (the U-Net's head: 16 -> 1), on flat
channels-last arrays: x (P, Cin), P = N*D*H*W voxels, weight as a (Cout, Cin) matrix.

With a 1x1x1 kernel, stride 1 and no padding, the lines of nn3d/conv3d.py become per-voxel products:

    (1) y[p, co] = b[co] + sum_ci x[p, ci] * w[co, ci]                      # (P, Cout)
    (3) grad_x[p, ci] = sum_co grad_output[p, co] * w[co, ci]               # (P, Cin)
    (4) grad_w[co, ci] = sum_p grad_output[p, co] * x[p, ci]                # (Cout, Cin)

The register-blocked kernels of conv3d.py compute 16 output channels at a time; for Cout = 1 they
would do 16 times the work and pad the output gradient to 16 channels (a full 16-channel volume).
These kernels loop over the Cout channels that exist. Each reads x about once; forward is slower than
a read of x (it sums each voxel's channels across vector lanes: docs/performance.md, "AVX2").
(4) sums 2^18 products at 64^3: it is summed per chunk of ROWS_PER_CHUNK voxels in float64, and the
chunks are added in a fixed order (the same bits on any thread count), as in channel_sum.py.
References: the conv3d references with a 1x1x1 kernel (nn3d/kernels/reference.py).
"""
import numpy as np
from numba import prange

from .channel_sum import ROWS_PER_CHUNK
from .jit import blocked_kernel, inlined_tile_helper, parallel_kernel
from .register_tile import BLOCK_C


def is_pointwise(kernel_size, stride, cout):
    """A 1x1x1, stride-1 convolution with fewer than 16 output channels (the U-Net's head): the
    kernels of pointwise.py, which do not pad Cout to 16."""
    return tuple(kernel_size) == (1, 1, 1) and tuple(stride) == (1, 1, 1) and cout < BLOCK_C


VOXELS_PER_ITEM = 256     # forward's work items: 1024 at 64^3


def pointwise_forward_work_items(n_voxels):
    """The parallel work items of `pointwise_forward` for P = n_voxels: blocks of VOXELS_PER_ITEM."""
    return -(-n_voxels // VOXELS_PER_ITEM)


@inlined_tile_helper
def dot16(x, p, weight, w):
    """sum_{q < 16} x[p + q] weight[w + q] on flat arrays, added as a balanced tree: a fixed order
    (the same bits on every run) whose additions do not wait for each other, where a left-to-right
    chain makes every voxel wait for 16 dependent additions."""
    t0 = x[p] * weight[w] + x[p + 8] * weight[w + 8]
    t1 = x[p + 1] * weight[w + 1] + x[p + 9] * weight[w + 9]
    t2 = x[p + 2] * weight[w + 2] + x[p + 10] * weight[w + 10]
    t3 = x[p + 3] * weight[w + 3] + x[p + 11] * weight[w + 11]
    t4 = x[p + 4] * weight[w + 4] + x[p + 12] * weight[w + 12]
    t5 = x[p + 5] * weight[w + 5] + x[p + 13] * weight[w + 13]
    t6 = x[p + 6] * weight[w + 6] + x[p + 14] * weight[w + 14]
    t7 = x[p + 7] * weight[w + 7] + x[p + 15] * weight[w + 15]
    return ((t0 + t4) + (t2 + t6)) + ((t1 + t5) + (t3 + t7))


@blocked_kernel
def pointwise_forward(x, weight, bias, y):
    """(1): x (P, Cin), weight (Cout, Cin), bias (Cout,), y (P, Cout), all C-contiguous. Each
    iteration owns the rows y[p] of VOXELS_PER_ITEM voxels.

    Per voxel the sum is bias[co], plus `dot16` of each block of 16 input channels, plus the
    channels left over one by one, in that order. The voxel loop is the innermost one: y[p, co]
    holds the running sum of the item's voxels (in L1) while one block of channels at a time is
    added, so the loop body is the same straight-line code for every voxel, with no per-voxel loops
    over blocks and channels (half the time of a voxel-by-voxel loop at Cin = 16, Cout = 1).
    Offsets are unsigned (no negative-index fix-ups)."""
    n_voxels = x.shape[0]
    cout, cin = np.uint64(weight.shape[0]), np.uint64(weight.shape[1])
    x_flat, w_flat, y_flat = x.reshape(-1), weight.reshape(-1), y.reshape(-1)
    whole_blocks = cin // np.uint64(16) * np.uint64(16)
    for item in prange((n_voxels + VOXELS_PER_ITEM - 1) // VOXELS_PER_ITEM):
        first = np.uint64(item) * np.uint64(VOXELS_PER_ITEM)
        last = min(first + np.uint64(VOXELS_PER_ITEM), np.uint64(n_voxels))
        for co in range(cout):
            for p in range(first, last):
                y_flat[p * cout + co] = bias[co]
            for c0 in range(np.uint64(0), whole_blocks, np.uint64(16)):
                for p in range(first, last):
                    y_flat[p * cout + co] += dot16(x_flat, p * cin + c0, w_flat, co * cin + c0)
            for ci in range(whole_blocks, cin):
                for p in range(first, last):
                    y_flat[p * cout + co] += x_flat[p * cin + ci] * w_flat[co * cin + ci]


@parallel_kernel
def pointwise_grad_input(grad_output, weight, grad_input):
    """(3): grad_output (P, Cout), weight (Cout, Cin), grad_input (P, Cin). Each iteration owns a row."""
    cout, cin = weight.shape
    for p in prange(grad_output.shape[0]):
        for ci in range(cin):
            total = grad_output[p, 0] * weight[0, ci]
            for co in range(1, cout):
                total += grad_output[p, co] * weight[co, ci]
            grad_input[p, ci] = total


@parallel_kernel
def pointwise_grad_weight_kernel(x, grad_output, partial):
    """(4) per chunk: partial[t, co, ci] = sum over chunk t's voxels of grad_output[p, co] x[p, ci],
    float64. Each iteration owns one chunk's partial[t]."""
    n_voxels, cin = x.shape
    cout = grad_output.shape[1]
    for t in prange(partial.shape[0]):
        for p in range(t * ROWS_PER_CHUNK, min((t + 1) * ROWS_PER_CHUNK, n_voxels)):
            for co in range(cout):
                g = np.float64(grad_output[p, co])
                for ci in range(cin):
                    partial[t, co, ci] += g * x[p, ci]


def pointwise_grad_weight_chunks(n_voxels):
    """The chunks of ROWS_PER_CHUNK voxels (4) is summed in: the grad-weight kernel's work items."""
    return -(-n_voxels // ROWS_PER_CHUNK)


def pointwise_grad_weight(x, grad_output):
    """(4): (Cout, Cin) in x's dtype from x (P, Cin) and grad_output (P, Cout)."""
    chunks = pointwise_grad_weight_chunks(x.shape[0])
    partial = np.zeros((chunks, grad_output.shape[1], x.shape[1]), np.float64)   # (chunks, Cout, Cin)
    pointwise_grad_weight_kernel(x, grad_output, partial)
    return partial.sum(axis=0).astype(x.dtype)                                   # fixed order
