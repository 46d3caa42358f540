"""Max-pooling kernels on channels-last memory (N, D, H, W, C); the layer (nn3d/maxpool3d.py) derives them.

    maxpool3d_forward(x, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w, y, argmax)
                                                                     (F) and (A) of the derivation
        (a Python function: it passes the window as a tuple of offsets to maxpool3d_forward_kernel)
    maxpool3d_backward(grad_output, argmax, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w,
                       grad_input)                                                       (B)
    maxpool3d_backward_tiled(grad_output, argmax, kernel_d, kernel_h, kernel_w, grad_input)
                                                   (B) when stride == kernel (the U-Net's pooling)

argmax[n, od, oh, ow, c] is the window position a = (kz * kernel_h + ky) * kernel_w + kx of the maximum
(uint8: windows of at most 256 voxels). Ties go to the FIRST maximum in the scan order kz, ky, kx
(lexicographic), as PyTorch: a later value replaces the running maximum only if strictly greater.
A NaN replaces it too, so NaN propagates, as in PyTorch.

Each kernel has a plain NumPy reference with the same loop names in nn3d/kernels/reference.py;
tests compare the pairs.
"""
import functools

import numpy as np
from numba import prange

from .jit import parallel_kernel


@functools.lru_cache(maxsize=64)
def window_offsets(x_shape, kernel_d, kernel_h, kernel_w):
    """The flat offsets of a window's voxels from its first voxel in a C-contiguous (N, D, H, W, C)
    array of shape x_shape, in scan order (position a = (kz * kernel_h + ky) * kernel_w + kx): a tuple
    of unsigned integers, so its length (the window's size) is a compile-time constant of the kernel.
    Kept per shape: a U-Net asks for the same few every step, and building one costs as much as
    pooling an 8^3 output."""
    _, _, in_h, in_w, channels = x_shape
    return tuple(np.uint64(((kz * in_h + ky) * in_w + kx) * channels)
                 for kz in range(kernel_d) for ky in range(kernel_h) for kx in range(kernel_w))


def maxpool3d_forward(x, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w, y, argmax):
    """x: (N, D, H, W, C) C-contiguous; y: (N, Do, Ho, Wo, C) same dtype; argmax: (N, Do, Ho, Wo, C)
    uint8; both C-contiguous."""
    maxpool3d_forward_kernel(x, window_offsets(x.shape, kernel_d, kernel_h, kernel_w),
                             stride_d, stride_h, stride_w, y, argmax)


@parallel_kernel
def maxpool3d_forward_kernel(x, window, stride_d, stride_h, stride_w, y, argmax):
    """(F) and (A) with the window given as `window_offsets`. Each prange iteration owns one output
    row y[n, od, oh] (and argmax's).

    The channel loop is innermost and the running maximum and its position stay in registers while
    the scan goes over the window: `window` is a tuple, so LLVM unrolls the scan and vectorises the
    channel loop (8 channels per AVX2 compare-and-blend), and each output is stored once. Every
    offset is unsigned (no negative-index fix-ups, which turned the vector loads into one-lane
    inserts).
    """
    n_batch, out_d, out_h, out_w, channels = y.shape
    in_d, in_h, in_w = x.shape[1], x.shape[2], x.shape[3]
    x_flat, y_flat, argmax_flat = x.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    channels_u = np.uint64(channels)
    for job in prange(n_batch * out_d * out_h):
        n = job // (out_d * out_h)
        od = job // out_h % out_d
        oh = job % out_h
        row = np.uint64(((n * in_d + od * stride_d) * in_h + oh * stride_h) * in_w)   # x[n, d0, h0, 0]
        for ow in range(np.uint64(out_w)):
            start = (row + ow * np.uint64(stride_w)) * channels_u                     # x[n, d0, h0, w0, 0]
            out = (np.uint64(job) * np.uint64(out_w) + ow) * channels_u               # y[n, od, oh, ow, 0]
            for c in range(channels_u):
                best = x_flat[start + c]                                              # position a = 0
                at = np.uint8(0)
                for a in range(1, len(window)):
                    value = x_flat[start + window[a] + c]
                    take = (value > best) | (value != value)      # strict: the first maximum wins
                    best = value if take else best
                    at = np.uint8(a) if take else at
                y_flat[out + c] = best
                argmax_flat[out + c] = at


@parallel_kernel
def maxpool3d_backward(grad_output, argmax, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w,
                       grad_input):
    """grad_input (N, D, H, W, C), zero on entry, receives grad_output (N, Do, Ho, Wo, C) at each argmax.

    Windows overlap along d when stride_d < kernel_d; output planes od and od + phases
    (phases = ceil(kernel_d / stride_d))
    never do. So the od planes are visited in `phases` rounds; within a round each prange iteration
    owns one (n, od) window slab and no two iterations write the same element.
    """
    n_batch, out_d, out_h, out_w, channels = grad_output.shape
    phases = (kernel_d + stride_d - 1) // stride_d
    for phase in range(min(phases, out_d)):
        planes = (out_d - phase + phases - 1) // phases     # od = phase, phase + phases, ... < out_d
        for job in prange(n_batch * planes):
            n = job // planes
            od = phase + (job % planes) * phases
            for oh in range(out_h):
                for ow in range(out_w):
                    for c in range(channels):
                        a = np.int64(argmax[n, od, oh, ow, c])
                        kz = a // (kernel_h * kernel_w)
                        ky = (a // kernel_w) % kernel_h
                        kx = a % kernel_w
                        grad_input[n, od * stride_d + kz, oh * stride_h + ky, ow * stride_w + kx, c] += (
                            grad_output[n, od, oh, ow, c])


@parallel_kernel
def maxpool3d_backward_tiled(grad_output, argmax, kernel_d, kernel_h, kernel_w, grad_input):
    """(B) when the windows tile the input (stride == kernel): each input voxel lies in at most one
    window, so (B)'s sum has at most one term and every element of grad_input (N, D, H, W, C) is
    written exactly once, the window's gradient at its argmax and 0 elsewhere (voxels past the last
    whole window, which floor division drops, get 0 too). No zero-filled buffer, no scatter.
    Each prange iteration owns one input row grad_input[n, id, ih]."""
    n_batch, in_d, in_h, in_w, channels = grad_input.shape
    out_d, out_h, out_w = grad_output.shape[1], grad_output.shape[2], grad_output.shape[3]
    for row in prange(n_batch * in_d * in_h):
        n = row // (in_d * in_h)
        id = row // in_h % in_d
        ih = row % in_h
        od, kz = id // kernel_d, id % kernel_d
        oh, ky = ih // kernel_h, ih % kernel_h
        if od < out_d and oh < out_h:
            for ow in range(out_w):
                for kx in range(kernel_w):
                    a = (kz * kernel_h + ky) * kernel_w + kx          # window position of this voxel
                    for c in range(channels):
                        routed = argmax[n, od, oh, ow, c] == a
                        grad_input[n, id, ih, ow * kernel_w + kx, c] = grad_output[n, od, oh, ow, c] if routed else 0
            for iw in range(out_w * kernel_w, in_w):
                for c in range(channels):
                    grad_input[n, id, ih, iw, c] = 0
        else:
            for iw in range(in_w):
                for c in range(channels):
                    grad_input[n, id, ih, iw, c] = 0
