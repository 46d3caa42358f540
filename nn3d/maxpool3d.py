"""MaxPool3d: the maximum over each (KD, KH, KW) window, windows placed every (SD, SH, SW) voxels.

Forward, x (N, C, D, H, W), no padding, output size floor division as in PyTorch:
    OD = floor((D - KD) / SD) + 1, likewise OH, OW (voxels past the last full window are unused)
    y[n, c, od, oh, ow] = max over (kd, kh, kw) of x[n, c, od SD + kd, oh SH + kh, ow SW + kw]     (F)
                                                                              y (N, C, OD, OH, OW)
    argmax[n, c, od, oh, ow] = the FIRST (kd, kh, kw), in lexicographic scan order, where that max
                               is attained, stored as a = (kd KH + kh) KW + kw    (A)  (N, C, OD, OH, OW) uint8
Backward. Within a window, y is a copy of one input element (the argmax), so
    dy[n,c,od,oh,ow] / dx[n,c,i,j,l] = 1 if (i, j, l) = (od SD + kd*, oh SH + kh*, ow SW + kw*), else 0
and summing over all outputs (overlapping windows, SD < KD, can route several gradients to one voxel):
    dL/dx[n,c,i,j,l] = sum over (od, oh, ow) whose argmax is (i, j, l) of dL/dy[n,c,od,oh,ow]      (B)
                                                                              dL/dx (N, C, D, H, W)
(B) is a scatter: each output gradient is added at one input position, computed from the stored a
as kd* = a // (KH KW), kh* = (a // KW) % KH, kw* = a % KW.
Ties: at equal maxima the max is not differentiable; like PyTorch we send the whole gradient to the
first maximum in scan order, not split it (any split summing to 1 would be a valid subgradient;
the first-max rule keeps backward a pure routing and matches PyTorch). After a ReLU, windows of exact zeros are common, so this
choice matters for matching PyTorch (the tests check it on ReLU output).
Voxels that are in no window, or never the maximum, get gradient 0.

Memory: forward saves only argmax (1 byte per output element) and the input shape.
"""
import numpy as np

from .checks import check_forward_ran, check_same_shape, check_volume
from .grad_mode import is_grad_enabled
from .kernels.maxpool3d import maxpool3d_backward, maxpool3d_forward
from .layout import from_channels_last, to_channels_last
from .module import Module


def _triple(value, name):
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values):
        raise ValueError(f"MaxPool3d: {name} must be a positive integer or 3 of them, got {value!r}")
    return tuple(int(v) for v in values)


class MaxPool3d(Module):
    """MaxPool3d(kernel_size, stride=None): as torch.nn.MaxPool3d with padding 0, dilation 1,
    ceil_mode False. stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _triple(stride, "stride")
        if np.prod(self.kernel_size) > 256:
            raise ValueError(f"MaxPool3d: windows of more than 256 voxels do not fit the uint8 argmax, "
                             f"got kernel_size {self.kernel_size}")
        self._cache = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def forward(self, x):
        check_volume(x, "MaxPool3d")
        n, c, d, h, w = x.shape
        (KD, KH, KW), (SD, SH, SW) = self.kernel_size, self.stride
        if d < KD or h < KH or w < KW:
            raise ValueError(f"MaxPool3d: input spatial size {(d, h, w)} is smaller than the kernel "
                             f"{self.kernel_size}")
        OD, OH, OW = (d - KD) // SD + 1, (h - KH) // SH + 1, (w - KW) // SW + 1
        x_cl = to_channels_last(x)                                   # (N, D, H, W, C)
        y_cl = np.empty((n, OD, OH, OW, c), x.dtype)                 # (N, OD, OH, OW, C)
        argmax = np.empty((n, OD, OH, OW, c), np.uint8)              # (N, OD, OH, OW, C)
        maxpool3d_forward(x_cl, KD, KH, KW, SD, SH, SW, y_cl, argmax)   # (F), (A)
        self._cache = (argmax, x.shape, x.dtype) if is_grad_enabled() else None
        return from_channels_last(y_cl)                              # (N, C, OD, OH, OW) view

    # forward:  y[n,c,od,oh,ow] = x[n,c, od SD + kd*, oh SH + kh*, ow SW + kw*]  (kd*, kh*, kw*) = argmax
    # backward: dL/dx at each argmax position += dL/dy                            (B)
    def backward(self, grad_output):
        check_forward_ran(self._cache, "MaxPool3d")
        argmax, shape, dtype = self._cache
        n, c, d, h, w = shape
        check_same_shape(grad_output, from_channels_last(argmax).shape, "MaxPool3d")
        grad_cl = to_channels_last(grad_output.astype(dtype, copy=False))   # (N, OD, OH, OW, C)
        grad_input = np.zeros((n, d, h, w, c), dtype)                # (N, D, H, W, C)
        maxpool3d_backward(grad_cl, argmax, *self.kernel_size, *self.stride, grad_input)   # (B)
        return from_channels_last(grad_input)                        # (N, C, D, H, W) view
