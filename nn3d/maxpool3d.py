"""MaxPool3d: the maximum over each (kD, kH, kW) window, windows placed every (sd, sh, sw) voxels.

Index names as in Conv3d (nn3d/layout.py): (od, oh, ow) an output voxel, (id, ih, iw) an input
voxel, (kz, ky, kx) an offset inside the window, c a channel.

Forward, x (N, C, D, H, W), no padding, output size floor division as in PyTorch:
    Do = floor((D - kD) / sd) + 1, likewise Ho, Wo (voxels past the last full window are unused)
    y[n, c, od, oh, ow] = max over (kz, ky, kx) of x[n, c, od sd + kz, oh sh + ky, ow sw + kx]     (F)
                                                                              y (N, C, Do, Ho, Wo)
    argmax[n, c, od, oh, ow] = the FIRST (kz, ky, kx), in lexicographic scan order, where that max
                               is attained, stored as a = (kz kH + ky) kW + kx    (A)  (N, C, Do, Ho, Wo) uint8
Backward. Within a window, y is a copy of one input element (the argmax), so
    dy[n,c,od,oh,ow] / dx[n,c,id,ih,iw] = 1 if (id, ih, iw) = (od sd + kz*, oh sh + ky*, ow sw + kx*), else 0
and summing over all outputs (overlapping windows, sd < kD, can route several gradients to one voxel):
    dL/dx[n,c,id,ih,iw] = sum over (od, oh, ow) whose argmax is (id, ih, iw) of dL/dy[n,c,od,oh,ow]  (B)
                                                                              dL/dx (N, C, D, H, W)
(B) is a scatter: each output gradient is added at one input position, computed from the stored a
as kz* = a // (kH kW), ky* = (a // kW) % kH, kx* = a % kW.
Ties: at equal maxima the max is not differentiable; like PyTorch we send the whole gradient to the
first maximum in scan order, not split it (any split summing to 1 would be a valid subgradient;
the first-max rule keeps backward a pure routing and matches PyTorch). After a ReLU, windows of
exact zeros are common, so this choice matters for matching PyTorch (the tests check it on ReLU output).
Voxels that are in no window, or never the maximum, get gradient 0.

Reference: maxpool3d_forward_reference and maxpool3d_backward_reference in nn3d/kernels/reference.py.

Memory: forward saves only argmax (1 byte per output element) and the input shape.
"""
from typing import NamedTuple

import numpy as np

from .core import arena
from .checks import check_forward_ran, check_grad_output, check_volume, pool_arguments
from .grad_mode import is_grad_enabled
from .kernels.maxpool3d import maxpool3d_backward, maxpool3d_backward_tiled, maxpool3d_forward
from .layout import from_channels_last, to_channels_last
from .module import Module
from .core.shapes import window_output_size


class MaxPoolCache(NamedTuple):
    """What forward keeps for backward."""
    argmax: np.ndarray        # (N, Do, Ho, Wo, C) uint8, window position a of each maximum (A)
    input_shape: tuple        # (N, C, D, H, W)
    dtype: np.dtype           # of x: the dtype grad_output must have


class MaxPool3d(Module):
    """MaxPool3d(kernel_size, stride=None): as torch.nn.MaxPool3d with padding 0, dilation 1,
    ceil_mode False. stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = pool_arguments("MaxPool3d", kernel_size, stride)
        if np.prod(self.kernel_size) > 256:
            raise ValueError(f"MaxPool3d: windows of more than 256 voxels do not fit the uint8 argmax, "
                             f"got kernel_size {self.kernel_size}")
        self._cache = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def forward(self, x):
        check_volume(x, "MaxPool3d")
        n_batch, channels = x.shape[:2]
        if any(size < k for size, k in zip(x.shape[2:], self.kernel_size)):
            raise ValueError(f"MaxPool3d: input spatial size {x.shape[2:]} is smaller than the kernel "
                             f"{self.kernel_size}")
        out_d, out_h, out_w = window_output_size(x.shape[2:], self.kernel_size, self.stride)
        x_cl = to_channels_last(x)                                   # (N, D, H, W, C)
        y_cl = arena.empty((n_batch, out_d, out_h, out_w, channels), x.dtype)     # (N, Do, Ho, Wo, C)
        argmax = arena.empty((n_batch, out_d, out_h, out_w, channels), np.uint8) # (N, Do, Ho, Wo, C)
        maxpool3d_forward(x_cl, *self.kernel_size, *self.stride, y_cl, argmax)   # (F), (A)
        self._cache = MaxPoolCache(argmax, x.shape, x.dtype) if is_grad_enabled() else None
        return from_channels_last(y_cl)                              # (N, C, Do, Ho, Wo) view

    # forward:  y[n,c,od,oh,ow] = x[n,c, od sd + kz*, oh sh + ky*, ow sw + kx*]  (kz*, ky*, kx*) = argmax
    # backward: dL/dx at each argmax position += dL/dy                            (B)
    def backward(self, grad_output):
        check_forward_ran(self._cache, "MaxPool3d")
        argmax, input_shape, dtype = self._cache
        n_batch, channels, d, h, w = input_shape
        check_grad_output(grad_output, from_channels_last(argmax).shape, dtype, "MaxPool3d")
        self._cache = None                                           # consumed
        grad_output_cl = to_channels_last(grad_output)               # (N, Do, Ho, Wo, C)
        if self.stride == self.kernel_size:                          # windows tile x: one write each
            grad_input = arena.empty((n_batch, d, h, w, channels), dtype)                     # (N, D, H, W, C)
            maxpool3d_backward_tiled(grad_output_cl, argmax, *self.kernel_size, grad_input)   # (B)
        else:                                                        # overlapping: add into zeros
            grad_input = arena.zeros((n_batch, d, h, w, channels), dtype)                     # (N, D, H, W, C)
            maxpool3d_backward(grad_output_cl, argmax, *self.kernel_size, *self.stride, grad_input)   # (B)
        return from_channels_last(grad_input)                        # (N, C, D, H, W) view
