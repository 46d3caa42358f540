"""ConvTranspose3d: transposed 3-D convolution ("up-convolution"), forward and hand-derived backward.

Shapes. x (N, Cin, D, H, W); weight w (Cin, Cout, kD, kH, kW) (PyTorch's layout: in-channels first);
bias b (Cout,); stride (sd, sh, sw); padding (pd, ph, pw).
Output size per axis: Do = (D - 1)*sd - 2*pd + kD (Ho, Wo alike).
Index names: (id, ih, iw) an input voxel (of x), (od, oh, ow) an output voxel, (kz, ky, kx) a kernel
offset, ci / co an input / output channel. Letters x, y, w, b, dy are tensors.

Forward: every input voxel adds a weighted copy of the kernel into the output (a scatter):

 (1) y_full[n, co, id*sd + kz, ih*sh + ky, iw*sw + kx] += sum_ci x[n, ci, id, ih, iw] * w[ci, co, kz, ky, kx]
                                         # y_full: (N, Cout, (D-1)*sd + kD, (H-1)*sh + kH, (W-1)*sw + kW)
     y[n, co, od, oh, ow] = b[co] + y_full[n, co, od + pd, oh + ph, ow + pw]          # (N, Cout, Do, Ho, Wo)

Why "transposed". Let conv be Conv3d with weight w read as (Cout_conv = Cin, Cin_conv = Cout), the
same stride and padding: it maps v (N, Cout, Do, Ho, Wo) to u (N, Cin, D, H, W) by (1) of
nn3d/conv3d.py, u = A v, A a matrix. For any x (N, Cin, D, H, W) and dy (N, Cout, Do, Ho, Wo),
expanding both sides with that formula gives the same quadruple sum over (n, ci, co, voxel, offset):

 (A) <x, A dy> = sum x[n, ci, id, ih, iw] w[ci, co, kz, ky, kx] dy_full[n, co, id*sd + kz, ...] = <A^T x, dy>
     (dy_full: dy zero-padded back to y_full's size, see (3); <u, v> = sum of u * v over all entries)

so the map x -> (1) without b is A^T, the adjoint of that convolution, whose input gradient is also
A^T (Conv3d's (2)-(3)). The gradients of a linear map y = A^T x + b follow from (A): dL/dx = A dy.
With dy = dL/dy (N, Cout, Do, Ho, Wo):

 (2) forward:      y = A^T x + b   = Conv3d's grad-input (3) applied to x, plus b      # (N, Cout, Do, Ho, Wo)
 (3) grad_input:   dL/dx = A dy    = Conv3d's forward (1) applied to dy_full, no bias  # (N, Cin, D, H, W)
     where dy_full is dy zero-padded by (pd, ph, pw) back to y_full's size:
     dy_full[n, co, od + pd, oh + ph, ow + pw] = dy[n, co, od, oh, ow], 0 in the border
                                         # dy_full: (N, Cout, (D-1)*sd + kD, (H-1)*sh + kH, (W-1)*sw + kW)
 (4) grad_weight:  dL/dw[ci, co, kz, ky, kx] = sum_{n, id, ih, iw} x[n, ci, id, ih, iw]
                                               * dy_full[n, co, id*sd + kz, ih*sh + ky, iw*sw + kx]
                   = Conv3d's grad-weight (4) with the roles of its input (here dy_full) and its
                   grad_output (here x) exchanged                                        # (Cin, Cout, kD, kH, kW)
 (5) grad_bias:    dL/db[co] = sum_{n, od, oh, ow} dy[n, co, od, oh, ow], summed in float64  # (Cout,)

(3) and (4) also follow from (1) directly: y is linear in x and w, and differentiating the scatter
gives the gather dL/dx[n, ci, id, ih, iw] = sum_{co, kz, ky, kx} dy_full[n, co, id*sd+kz, ih*sh+ky,
iw*sw+kx] w[ci, co, kz, ky, kx], which is Conv3d's forward formula.

Reference: conv_transpose3d_forward_reference, conv_transpose3d_grad_input_reference and
conv_transpose3d_grad_weight_reference in nn3d/kernels/reference.py compute (1), (3) and (4) in
plain NumPy, any kernel / stride / padding.

Fast path (the U-Net's up-sampling, kernel == stride, padding 0): y_full is y and the output blocks
of different input voxels do not overlap, so (1) writes each input voxel's kD x kH x kW block as
x[n, :, id, ih, iw] (1, Cin) @ w_matrix (Cin, kD*kH*kW*Cout), w_matrix[ci, (kz, ky, kx, co)] =
w[ci, co, kz, ky, kx]; (3) reads each block back, dL/dx[n, :, id, ih, iw] = (its block of dy) @ w_matrix^T
(Conv3d's forward (1) with stride = kernel size). Register-tiled kernels that read and write the
blocks in place: nn3d/kernels/conv_transpose3d.py. (4) is Conv3d's grad-weight kernel itself
(nn3d/kernels/conv3d_grad_weight.py) with stride = kernel size, dy in the place of its input and x in
the place of its grad_output (`conv_transpose3d_blocks_grad_weight`): every Conv3d compiles that
kernel anyway, and with k = s each window of it is exactly one block, so it wastes no work (as
fast as a kernel of its own that swept the blocks, docs/performance.md).
"""
from typing import NamedTuple

import numpy as np

from .checks import check_forward_ran, check_grad_output, check_volume, conv_arguments
from .grad_mode import is_grad_enabled
from .init import conv_weight_and_bias
from .kernels.channel_sum import channel_sums
from .kernels.conv3d import conv3d_forward, conv3d_grad_input
from .kernels.conv3d_grad_weight import conv3d_grad_weight
from .kernels.conv_transpose3d import (conv_transpose3d_blocks_forward, conv_transpose3d_blocks_grad_input,
                                       conv_transpose3d_blocks_grad_weight)
from .kernels.padding import pad_channels_last
from .layout import from_channels_last, to_channels_last
from .module import Module, Parameter
from .core.shapes import transposed_output_size


class ConvTranspose3dCache(NamedTuple):
    """What forward keeps for backward."""
    x_cl: np.ndarray          # (N, D, H, W, Cin) the input, channels-last
    out_size: tuple           # (Do, Ho, Wo)


class ConvTranspose3d(Module):
    """y = conv_transpose3d(x, weight) + bias, as torch.nn.ConvTranspose3d (no output_padding,
    dilation or groups)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        (self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding) = \
            conv_arguments("ConvTranspose3d", in_channels, out_channels, kernel_size, stride, padding)
        weight, bias_values = conv_weight_and_bias((in_channels, out_channels, *self.kernel_size),
                                                   out_channels if bias else None)
        self.weight = Parameter(weight)                                   # (Cin, Cout, kD, kH, kW)
        self.bias = Parameter(bias_values) if bias else None              # (Cout,)
        self._cache = None

    def _blocks(self):
        """True for the fast path: non-overlapping output blocks (kernel == stride, no padding)."""
        return self.kernel_size == self.stride and self.padding == (0, 0, 0)

    def forward(self, x):
        check_volume(x, "ConvTranspose3d", channels=self.in_channels, dtype=self.weight.data.dtype)
        out_size = transposed_output_size(x.shape[2:], self.kernel_size, self.stride, self.padding)
        if min(out_size) < 1:
            raise ValueError(f"ConvTranspose3d: input spatial size {x.shape[2:]} gives an empty output "
                             f"{out_size} with padding {self.padding}")
        x_cl = to_channels_last(x)                                        # (N, D, H, W, Cin)
        bias = None if self.bias is None else self.bias.data
        if self._blocks():
            y_cl = conv_transpose3d_blocks_forward(x_cl, self.weight.data, bias)
        else:                                    # y = A^T x + b: Conv3d's grad-input of x
            y_cl = conv3d_grad_input(x_cl, self.weight.data, out_size, self.stride, self.padding)
            if bias is not None:
                y_cl += bias
        self._cache = ConvTranspose3dCache(x_cl, out_size) if is_grad_enabled() else None
        return from_channels_last(y_cl)                                   # (N, Cout, Do, Ho, Wo) view

    # forward (1): y_full[n,co,id*sd+kz,ih*sh+ky,iw*sw+kx] += sum_ci x[n,ci,id,ih,iw] w[ci,co,kz,ky,kx]; y = crop(y_full) + b
    # gives: (3) dL/dx[n,ci,id,ih,iw] = sum_{co,kz,ky,kx} dy_full[n,co,id*sd+kz,...] w[ci,co,kz,ky,kx]  (Conv3d forward of dy_full)
    #        (4) dL/dw[ci,co,kz,ky,kx] = sum_{n,id,ih,iw} x[n,ci,id,ih,iw] dy_full[n,co,id*sd+kz,...]  (Conv3d grad-weight)
    #        (5) dL/db[co] = sum_{n,od,oh,ow} dy[n,co,od,oh,ow]  (float64 sum)
    def backward(self, grad_output):
        check_forward_ran(self._cache, "ConvTranspose3d")
        x_cl, out_size = self._cache
        check_grad_output(grad_output, (x_cl.shape[0], self.out_channels, *out_size), x_cl.dtype,
                          "ConvTranspose3d")
        self._cache = None                                                # consumed
        grad_output_cl = to_channels_last(grad_output)                    # (N, Do, Ho, Wo, Cout)
        if self._blocks():
            grad_input_cl = conv_transpose3d_blocks_grad_input(grad_output_cl, self.weight.data,
                                                               x_cl.shape[:4])
            grad_weight = conv_transpose3d_blocks_grad_weight(x_cl, grad_output_cl, self.kernel_size)
        else:
            grad_full = pad_channels_last(grad_output_cl, self.padding)    # (N, (D-1)*sd+kD, ..., Cout)
            grad_input_cl = conv3d_forward(grad_full, self.weight.data, None, self.stride)
            grad_weight = conv3d_grad_weight(grad_full, x_cl, self.kernel_size, self.stride)
        self.weight.grad += grad_weight                                   # (Cin, Cout, kD, kH, kW)
        if self.bias is not None:
            grad_bias = channel_sums(grad_output_cl.reshape(-1, self.out_channels))   # (5) (Cout,) float64
            self.bias.grad += grad_bias.astype(self.bias.grad.dtype)
        return from_channels_last(grad_input_cl)                          # (N, Cin, D, H, W) view

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
