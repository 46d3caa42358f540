"""The direct convolution's weight layouts: `pack_weight` puts the 16 output channels one reduction
step of nn3d/kernels/conv3d.py's forward kernel needs side by side, `unpack_weight` brings
grad-weight's layout back to PyTorch's, and `flipped_transposed` is the view of the weight that
grad-input convolves with.

    w_packed[kz, ky, cb, j, c] = weight[16*cb + c, ci, kz, ky, kx],   j = kx*Cin + ci

with the output channels padded with zeros up to a multiple of BLOCK_C = 16 (j is the contiguous
run of kW*Cin input values that the kernels read per (kz, ky): the header of conv3d.py).

Packing and unpacking run once per pass on every layer, as parallel kernels: at the 8^3 bottleneck
(128 -> 128 channels, 1.7 MiB of weights) a one-thread transpose would be a large share of a 1-3 ms
pass that no second core could share (docs/performance.md).
"""
import numpy as np
from numba import prange

from .jit import parallel_kernel
from .register_tile import BLOCK_C


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
