"""Transposed 3-D convolution kernels (channels-last). Plain NumPy versions of lines (1), (3), (4)
for any kernel / stride / padding: conv_transpose3d_*_reference in nn3d/kernels/reference.py.

Notation: the numbered lines of nn3d/conv_transpose3d.py, with the channel index moved last. Index
names: (id, ih, iw) an input voxel, (od, oh, ow) an output voxel, (kz, ky, kx) a kernel offset.

    x            (N, D, H, W, Cin)
    weight       (Cin, Cout, kD, kH, kW)   PyTorch's layout
    y_full       (N, (D-1)*sd + kD, (H-1)*sh + kH, (W-1)*sw + kW, Cout)   the output before cropping
    grad_output  (N, Do, Ho, Wo, Cout),    Do = (D-1)*sd - 2*pd + kD
    grad_full    (N, (D-1)*sd + kD, (H-1)*sh + kH, (W-1)*sw + kW, Cout)   grad_output zero-padded
                                                                         back to y_full's size

    (1) y_full[n, id*sd+kz, ih*sh+ky, iw*sw+kx, co] += sum_ci x[n, id, ih, iw, ci] * weight[ci, co, kz, ky, kx]
        y = y_full[:, pd:pd+Do, ph:ph+Ho, pw:pw+Wo, :] + bias                     # (N, Do, Ho, Wo, Cout)
    (3) grad_x[n, id, ih, iw, ci] = sum_{co, kz, ky, kx} grad_full[n, id*sd+kz, ih*sh+ky, iw*sw+kx, co]
                                                         * weight[ci, co, kz, ky, kx]   # (N, D, H, W, Cin)
    (4) grad_weight[ci, co, kz, ky, kx] = sum_{n, id, ih, iw} x[n, id, ih, iw, ci]
                                          * grad_full[n, id*sd+kz, ih*sh+ky, iw*sw+kx, co]  # (Cin, Cout, kD, kH, kW)

General kernel/stride/padding: the layer reuses the Conv3d kernels (transposed convolution is the
adjoint of convolution, identity (A) in the layer file). This file holds the fast path for
kernel == stride and no padding (the U-Net's 2x2x2 up-sampling): the blocks (kz, ky, kx) of
different input voxels do not overlap, so (1) is ONE matrix product per voxel,
[P, Cin] @ [Cin, kD*kH*kW*Cout], followed by a scatter of each row into its kD x kH x kW block of y;
(3) and (4) are matrix products of the gathered blocks.
    w_matrix[ci, (kz, ky, kx, co)] = weight[ci, co, kz, ky, kx]        (Cin, kD*kH*kW*Cout)
"""
import numpy as np
from numba import prange

from .conv3d import WORK_ITEMS
from .jit import parallel_kernel
from .. import arena
from ..threads import single_threaded_blas


def weight_matrix(weight):
    """(Cin, Cout, kD, kH, kW) -> w_matrix (Cin, kD*kH*kW*Cout), C-contiguous."""
    cin = weight.shape[0]
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 4, 1).reshape(cin, -1))


# ---- fast path: kernel == stride, padding 0 -----------------------------------------------------
@parallel_kernel
def conv_transpose3d_blocks_forward_kernel(x, w_matrix, bias, y):
    """Line (1) for kernel == stride, padding 0: y (N, D*kD, H*kH, W*kW, Cout) from
    x (N, D, H, W, Cin), w_matrix (Cin, kD*kH*kW*Cout), bias (Cout,).
    Each prange iteration owns one input row x[n, id, ih] and so the output slab y[n, id*kD:(id+1)*kD,
    ih*kH:(ih+1)*kH]: products = x_row @ w_matrix, (W, Cin) @ (Cin, kD*kH*kW*Cout), then a scatter.
    (np.dot calls a BLAS inside the prange: callers hold single_threaded_blas, see nn3d/threads.py.)"""
    n_batch, in_d, in_h, in_w, cin = x.shape
    cout = y.shape[4]
    kernel_d, kernel_h, kernel_w = y.shape[1] // in_d, y.shape[2] // in_h, y.shape[3] // in_w
    for row in prange(n_batch * in_d * in_h):
        n = row // (in_d * in_h)
        id = row // in_h % in_d
        ih = row % in_h
        products = np.dot(x[n, id, ih], w_matrix).reshape(in_w, kernel_d, kernel_h, kernel_w, cout)
        for kz in range(kernel_d):
            for ky in range(kernel_h):
                for iw in range(in_w):
                    for kx in range(kernel_w):
                        y[n, id * kernel_d + kz, ih * kernel_h + ky, iw * kernel_w + kx, :] = (
                            products[iw, kz, ky, kx, :] + bias)


@parallel_kernel
def gather_blocks_kernel(grad_output, kernel_d, kernel_h, kernel_w, blocks):
    """The inverse of the scatter above: blocks[n, id, ih, iw, kz, ky, kx, co] =
    grad_output[n, id*kD + kz, ih*kH + ky, iw*kW + kx, co]. blocks (N, D, H, W, kD, kH, kW, Cout)."""
    n_batch, in_d, in_h, in_w = blocks.shape[:4]
    for row in prange(n_batch * in_d * in_h):
        n = row // (in_d * in_h)
        id = row // in_h % in_d
        ih = row % in_h
        for iw in range(in_w):
            for kz in range(kernel_d):
                for ky in range(kernel_h):
                    for kx in range(kernel_w):
                        blocks[n, id, ih, iw, kz, ky, kx, :] = grad_output[
                            n, id * kernel_d + kz, ih * kernel_h + ky, iw * kernel_w + kx, :]


@parallel_kernel
def conv_transpose3d_blocks_grad_input_kernel(blocks, w_matrix_t, grad_input):
    """Line (3) for kernel == stride, padding 0: grad_input (N, D, H, W, Cin) row by row,
    grad_input[n, id, ih] = blocks[n, id, ih] @ w_matrix^T, (W, kD*kH*kW*Cout) @ (kD*kH*kW*Cout, Cin).
    blocks from gather_blocks_kernel, reshaped to (N, D, H, W, kD*kH*kW*Cout); w_matrix_t contiguous."""
    n_batch, in_d, in_h = grad_input.shape[:3]
    for row in prange(n_batch * in_d * in_h):
        n = row // (in_d * in_h)
        id = row // in_h % in_d
        ih = row % in_h
        grad_input[n, id, ih] = np.dot(blocks[n, id, ih], w_matrix_t)


@parallel_kernel
def conv_transpose3d_blocks_grad_weight_kernel(x_flat, blocks_flat, rows_per_chunk, partial):
    """Line (4) for kernel == stride, padding 0, as per-chunk partial sums:
    partial[chunk] = x_chunk^T @ blocks_chunk, (Cin, P_chunk) @ (P_chunk, kD*kH*kW*Cout), where a
    chunk is rows_per_chunk consecutive voxels of x_flat (P, Cin) and blocks_flat (P, kD*kH*kW*Cout).
    The caller adds the chunks in order (deterministic)."""
    n_voxels = x_flat.shape[0]
    for chunk in prange(partial.shape[0]):
        first = np.int64(chunk) * rows_per_chunk
        last = min(first + rows_per_chunk, n_voxels)
        partial[chunk] = np.dot(np.ascontiguousarray(x_flat[first:last].T), blocks_flat[first:last])


def gather_blocks(grad_output, kernel_size, input_shape):
    """grad_output (N, D*kD, H*kH, W*kW, Cout) -> (N, D, H, W, kD*kH*kW*Cout): each input voxel's block."""
    n_batch, d, h, w = input_shape
    kernel_d, kernel_h, kernel_w = kernel_size
    cout = grad_output.shape[4]
    blocks = arena.empty((n_batch, d, h, w, kernel_d, kernel_h, kernel_w, cout), grad_output.dtype)
    gather_blocks_kernel(grad_output, np.int64(kernel_d), np.int64(kernel_h), np.int64(kernel_w), blocks)
    return blocks.reshape(n_batch, d, h, w, -1)


def conv_transpose3d_blocks_forward(x, weight, bias):
    """Line (1), kernel == stride, padding 0: x (N, D, H, W, Cin) -> y (N, D*kD, H*kH, W*kW, Cout)."""
    n_batch, d, h, w, _ = x.shape
    cout, (kernel_d, kernel_h, kernel_w) = weight.shape[1], weight.shape[2:]
    y = arena.empty((n_batch, d * kernel_d, h * kernel_h, w * kernel_w, cout), x.dtype)
    bias = np.zeros(cout, x.dtype) if bias is None else bias.astype(x.dtype, copy=False)
    with single_threaded_blas():                  # np.dot inside prange: one thread pool at a time
        conv_transpose3d_blocks_forward_kernel(x, weight_matrix(weight), bias, y)
    return y


def conv_transpose3d_blocks_grad_input(grad_output, weight, input_shape):
    """Line (3), kernel == stride, padding 0: grad_output (N, D*kD, ..., Cout) -> (N, D, H, W, Cin)."""
    blocks = gather_blocks(grad_output, weight.shape[2:], input_shape)
    grad_input = arena.empty((*input_shape, weight.shape[0]), grad_output.dtype)
    with single_threaded_blas():
        conv_transpose3d_blocks_grad_input_kernel(blocks, np.ascontiguousarray(weight_matrix(weight).T),
                                                  grad_input)
    return grad_input


def conv_transpose3d_blocks_grad_weight(x, grad_output, kernel_size, cout):
    """Line (4), kernel == stride, padding 0: (Cin, Cout, kD, kH, kW) from x (N, D, H, W, Cin) and
    grad_output (N, D*kD, H*kH, W*kW, Cout)."""
    cin = x.shape[4]
    blocks_flat = gather_blocks(grad_output, kernel_size, x.shape[:4]).reshape(-1, np.prod(kernel_size) * cout)
    x_flat = x.reshape(-1, cin)                                         # (P, Cin)
    n_chunks = min(x_flat.shape[0], WORK_ITEMS)       # fixed by the shape: deterministic
    rows_per_chunk = -(-x_flat.shape[0] // n_chunks)
    partial = np.empty((n_chunks, cin, blocks_flat.shape[1]), x.dtype)
    with single_threaded_blas():
        conv_transpose3d_blocks_grad_weight_kernel(x_flat, blocks_flat, np.int64(rows_per_chunk), partial)
    w_matrix_grad = partial[0].copy()
    for chunk in range(1, n_chunks):          # fixed order: the result does not depend on threads
        w_matrix_grad += partial[chunk]
    return np.ascontiguousarray(
        w_matrix_grad.reshape(cin, *kernel_size, cout).transpose(0, 4, 1, 2, 3))
