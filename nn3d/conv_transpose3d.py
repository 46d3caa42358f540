"""ConvTranspose3d: transposed 3-D convolution ("up-convolution"), forward and hand-derived backward.

Shapes. x (N, Cin, D, H, W); weight w (Cin, Cout, kD, kH, kW) (PyTorch's layout: in-channels first);
bias b (Cout,); stride (sd, sh, sw); padding (pd, ph, pw).
Output size per axis: Do = (D - 1)*sd - 2*pd + kD (Ho, Wo alike); y_full is the output before the
padding is cut off, (N, Cout, (D-1)*sd + kD, ...).

Forward: every input voxel adds a weighted copy of the kernel into the output (a scatter):

    y_full[n, co, z*sd + kz, y*sh + ky, x*sw + kx] += sum_ci x[n, ci, z, y, x] * w[ci, co, kz, ky, kx]
    y[n, co, i, j, k] = b[co] + y_full[n, co, i + pd, j + ph, k + pw]                  # (N, Cout, Do, Ho, Wo)

Why "transposed": Conv3d with weight w read as (Cout_conv = Cin, Cin_conv = Cout), the same stride and
padding, maps a (N, Cout, Do, Ho, Wo) volume to (N, Cin, D, H, W); as a linear map it is a matrix A.
Its input gradient is A^T (nn3d/conv3d.py): exactly the scatter above. So, with conv3d(v, w) that
convolution and G = dL/dy (N, Cout, Do, Ho, Wo):

    forward:      y = A^T x + b     = Conv3d's grad-input applied to x, plus b           # (N, Cout, Do, Ho, Wo)
    grad_input:   dL/dx = A G       = Conv3d's forward applied to G (no bias)             # (N, Cin, D, H, W)
    grad_weight:  dL/dw[ci, co, kz, ky, kx] = sum_{n, z, y, x} x[n, ci, z, y, x]
                                              * G_full[n, co, z*sd + kz, y*sh + ky, x*sw + kx]
                  (G_full = G zero-padded by p to y_full's size) = Conv3d's grad-weight with the roles
                  of its input (here G_full) and its grad_output (here x) exchanged     # (Cin, Cout, kD, kH, kW)
    grad_bias:    dL/db[co] = sum_{n, i, j, k} G[n, co, i, j, k]                          # (Cout,)

The first three lines follow from the forward formula directly too: y is linear in x and w, and
differentiating the scatter gives the gather dL/dx[n, ci, z, y, x] = sum_{co, kz, ky, kx}
G_full[n, co, z*sd+kz, y*sh+ky, x*sw+kx] w[ci, co, kz, ky, kx], which is Conv3d's forward formula.

Fast path (the U-Net's up-sampling, kernel == stride, padding 0): the output blocks of different input
voxels do not overlap, so forward is one matrix product per voxel, x[n, :, z, y, x] (1, Cin) @
w_matrix (Cin, kD*kH*kW*Cout), written into its kD x kH x kW block of y; grad_input gathers each
block and multiplies by w_matrix^T; grad_weight is x^T @ (gathered blocks). See
nn3d/kernels/conv_transpose3d.py.
"""
import numpy as np

from .checks import check_forward_ran, check_same_shape, check_volume
from .conv3d import triple
from .init import conv_weight_and_bias
from .kernels.conv3d import conv3d_forward, conv3d_grad_input, conv3d_grad_weight
from .kernels.conv_transpose3d import (conv_transpose3d_blocks_forward,
                                       conv_transpose3d_blocks_grad_input,
                                       conv_transpose3d_blocks_grad_weight)
from .kernels.padding import pad_channels_last
from .layout import from_channels_last, to_channels_last
from .module import Module, Parameter


class ConvTranspose3d(Module):
    """y = conv_transpose3d(x, weight) + bias, as torch.nn.ConvTranspose3d (no output_padding,
    dilation or groups)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = triple(stride, "stride")
        self.padding = triple(padding, "padding")
        if min(self.in_channels, self.out_channels) < 1 or min(self.kernel_size) < 1 \
                or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"ConvTranspose3d: channels, kernel_size and stride must be >= 1 and "
                             f"padding >= 0, got {self.extra_repr()}")
        weight, bias_values = conv_weight_and_bias((in_channels, out_channels, *self.kernel_size),
                                                   out_channels if bias else None)
        self.weight = Parameter(weight)                                   # (Cin, Cout, kD, kH, kW)
        self.bias = Parameter(bias_values) if bias else None              # (Cout,)
        self._cache = None

    def output_size(self, input_size):
        return tuple((size - 1) * s - 2 * p + k
                     for size, k, s, p in zip(input_size, self.kernel_size, self.stride, self.padding))

    def _blocks(self):
        """True for the fast path: non-overlapping output blocks (kernel == stride, no padding)."""
        return self.kernel_size == self.stride and self.padding == (0, 0, 0)

    def forward(self, x):
        check_volume(x, "ConvTranspose3d", channels=self.in_channels, dtype=self.weight.data.dtype)
        out_size = self.output_size(x.shape[2:])
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
        self._cache = (x_cl, out_size)
        return from_channels_last(y_cl)                                   # (N, Cout, Do, Ho, Wo) view

    # forward:  y_full[n,co,z*sd+kz,y*sh+ky,x*sw+kx] += sum_ci x[n,ci,z,y,x] w[ci,co,kz,ky,kx];  y = crop(y_full) + b
    # gives:    dL/dx[n,ci,z,y,x] = sum_{co,kz,ky,kx} G_full[n,co,z*sd+kz,...] w[ci,co,kz,ky,kx]   (Conv3d forward of G)
    #           dL/dw[ci,co,kz,ky,kx] = sum_{n,z,y,x} x[n,ci,z,y,x] G_full[n,co,z*sd+kz,...]        (Conv3d grad-weight)
    #           dL/db[co] = sum G[n,co,...]
    def backward(self, grad_output):
        check_forward_ran(self._cache, "ConvTranspose3d")
        x_cl, out_size = self._cache
        check_same_shape(grad_output, (x_cl.shape[0], self.out_channels, *out_size), "ConvTranspose3d")
        check_volume(grad_output, "ConvTranspose3d.backward", dtype=x_cl.dtype, name="grad_output")
        grad_output_cl = to_channels_last(grad_output)                    # (N, Do, Ho, Wo, Cout)
        if self._blocks():
            grad_input_cl = conv_transpose3d_blocks_grad_input(grad_output_cl, self.weight.data,
                                                               x_cl.shape[:4])
            grad_weight = conv_transpose3d_blocks_grad_weight(x_cl, grad_output_cl, self.kernel_size,
                                                              self.out_channels)
        else:
            grad_full = pad_channels_last(grad_output_cl, self.padding)    # (N, (D-1)*sd+kD, ..., Cout)
            grad_input_cl = conv3d_forward(grad_full, self.weight.data, None, self.stride)
            grad_weight = conv3d_grad_weight(grad_full, x_cl, self.kernel_size, self.stride)
        self.weight.grad += grad_weight                                   # (Cin, Cout, kD, kH, kW)
        if self.bias is not None:
            grad_bias = grad_output_cl.reshape(-1, self.out_channels).sum(axis=0, dtype=np.float64)
            self.bias.grad += grad_bias.astype(self.bias.grad.dtype)      # (Cout,)
        return from_channels_last(grad_input_cl)                          # (N, Cin, D, H, W) view

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
