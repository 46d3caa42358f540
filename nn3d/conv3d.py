"""Conv3d: 3-D convolution (PyTorch's cross-correlation), forward and hand-derived backward.

Shapes. x (N, Cin, D, H, W); weight w (Cout, Cin, kD, kH, kW); bias b (Cout,); stride (sd, sh, sw);
zero padding (pd, ph, pw). x_pad is x with the zeros in place: (N, Cin, D+2pd, H+2ph, W+2pw).
Output size per axis: Do = (D + 2pd - kD) // sd + 1 (and Ho, Wo alike).

Forward (index notation; an index like z*sd + kz runs over the padded input):

    y[n, co, z, y, x] = b[co] + sum_{ci, kz, ky, kx} w[co, ci, kz, ky, kx]
                                    * x_pad[n, ci, z*sd + kz, y*sh + ky, x*sw + kx]     # (N, Cout, Do, Ho, Wo)

Backward. G = dL/dy, (N, Cout, Do, Ho, Wo). y is linear in each of x_pad, w, b, so every gradient
is "the coefficient that multiplies the variable, times G, summed over every place it appears":

  grad_bias: b[co] is added to every output voxel of channel co.
    dL/db[co] = sum_{n, z, y, x} G[n, co, z, y, x]                                       # (Cout,)

  grad_weight: w[co, ci, kz, ky, kx] multiplies x_pad[n, ci, z*sd+kz, ...] in output y[n, co, z, y, x].
    dL/dw[co, ci, kz, ky, kx] = sum_{n, z, y, x} G[n, co, z, y, x]
                                * x_pad[n, ci, z*sd + kz, y*sh + ky, x*sw + kx]          # (Cout, Cin, kD, kH, kW)
    (the forward sum with the roles of w and G exchanged: a "convolution" of x_pad by G.)

  grad_input: x_pad[n, ci, i, j, k] is read by every output voxel (z, y, x) and offset (kz, ky, kx)
  with z*sd + kz = i, y*sh + ky = j, x*sw + kx = k:
    dL/dx_pad[n, ci, i, j, k] = sum_{co, kz, ky, kx; z*sd+kz=i, ...} G[n, co, z, y, x] w[co, ci, kz, ky, kx]
                                                                                          # (N, Cin, D+2pd, ...)
    dL/dx = dL/dx_pad with the padding cut off                                            # (N, Cin, D, H, W)
  As a gather (what the kernel computes): spread G by the stride into S, zeros in between,
  S[n, co, z*sd + kD-1-pd, ...] = G[n, co, z, ...], S of length D + kD - 1 per axis. With
  kz = kD-1-kz' (the flipped kernel) the condition z*sd + kz = i + pd becomes "S index = i + kz'":
    dL/dx[n, ci, i, j, k] = sum_{co, kz', ky', kx'} S[n, co, i+kz', j+ky', k+kx']
                             * w[co, ci, kD-1-kz', kH-1-ky', kW-1-kx']                   # (N, Cin, D, H, W)
  i.e. a stride-1 convolution of S with the flipped kernel whose in/out channels are swapped.
  For stride 1, S is G zero-padded by k-1-p: grad-input costs exactly what forward costs.

Memory: activations are channels-last (nn3d/layout.py); the kernels (nn3d/kernels/conv3d.py) work on
(N, D, H, W, C) arrays and the formulas above are the same with the channel index moved last.
"""
import numpy as np

from .checks import check_forward_ran, check_same_shape, check_volume
from .init import conv_weight_and_bias
from .kernels.conv3d import conv3d_forward, conv3d_grad_input, conv3d_grad_weight, output_size
from .kernels.padding import pad_channels_last
from .layout import from_channels_last, to_channels_last
from .module import Module, Parameter


def triple(value, name):
    """An int or a 3-tuple of ints -> a 3-tuple of ints (PyTorch's convention for kernel/stride/padding)."""
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"{name} must be an int or a tuple of 3 ints, got {value!r}")
    return tuple(int(v) for v in values)


class Conv3d(Module):
    """y = conv3d(x, weight) + bias, as torch.nn.Conv3d (zero padding, no dilation, no groups)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = triple(stride, "stride")
        self.padding = triple(padding, "padding")
        if min(self.in_channels, self.out_channels) < 1 or min(self.kernel_size) < 1 \
                or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv3d: channels, kernel_size and stride must be >= 1 and padding >= 0, "
                             f"got {self.extra_repr()}")
        weight, bias_values = conv_weight_and_bias((out_channels, in_channels, *self.kernel_size),
                                                   out_channels if bias else None)
        self.weight = Parameter(weight)                                   # (Cout, Cin, kD, kH, kW)
        self.bias = Parameter(bias_values) if bias else None              # (Cout,)
        self._cache = None

    def forward(self, x):
        check_volume(x, "Conv3d", channels=self.in_channels, dtype=self.weight.data.dtype)
        padded = [size + 2 * pad for size, pad in zip(x.shape[2:], self.padding)]
        if any(p < k for p, k in zip(padded, self.kernel_size)):
            raise ValueError(f"Conv3d: input spatial size {x.shape[2:]} with padding {self.padding} "
                             f"is smaller than the kernel {self.kernel_size}")
        x_pad = pad_channels_last(to_channels_last(x), self.padding)     # (N, D+2pd, H+2ph, W+2pw, Cin)
        bias = None if self.bias is None else self.bias.data
        y_cl = conv3d_forward(x_pad, self.weight.data, bias, self.stride)  # (N, Do, Ho, Wo, Cout)
        self._cache = (x_pad, x.shape)
        return from_channels_last(y_cl)                                   # (N, Cout, Do, Ho, Wo) view

    # forward:  y[n,co,z,y,x] = b[co] + sum_{ci,kz,ky,kx} w[co,ci,kz,ky,kx] x_pad[n,ci,z*sd+kz,y*sh+ky,x*sw+kx]
    # gives:    dL/db = sum_{n,z,y,x} G;   dL/dw[co,ci,kz,ky,kx] = sum_{n,z,y,x} G[n,co,z,y,x] x_pad[...];
    #           dL/dx = (spread, padded G) convolved with the flipped, in/out-swapped w (module docstring)
    def backward(self, grad_output):
        check_forward_ran(self._cache, "Conv3d")
        x_pad, input_shape = self._cache
        out_size = output_size(x_pad.shape[1:4], self.kernel_size, self.stride)
        check_same_shape(grad_output, (input_shape[0], self.out_channels, *out_size), "Conv3d")
        check_volume(grad_output, "Conv3d.backward", dtype=x_pad.dtype, name="grad_output")
        grad_output_cl = to_channels_last(grad_output)                    # (N, Do, Ho, Wo, Cout)
        grad_input_cl = conv3d_grad_input(grad_output_cl, self.weight.data, input_shape[2:],
                                          self.stride, self.padding)      # (N, D, H, W, Cin)
        self.weight.grad += conv3d_grad_weight(x_pad, grad_output_cl, self.kernel_size,
                                               self.stride)               # (Cout, Cin, kD, kH, kW)
        if self.bias is not None:
            grad_bias = grad_output_cl.reshape(-1, self.out_channels).sum(axis=0, dtype=np.float64)
            self.bias.grad += grad_bias.astype(self.bias.grad.dtype)      # (Cout,)
        return from_channels_last(grad_input_cl)                          # (N, Cin, D, H, W) view

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
