"""Conv3d: 3-D convolution (PyTorch's cross-correlation), forward and hand-derived backward.

Shapes. x (N, Cin, D, H, W); weight w (Cout, Cin, kD, kH, kW); bias b (Cout,); stride (sd, sh, sw);
zero padding (pd, ph, pw). x_pad is x with the zeros in place: (N, Cin, D+2pd, H+2ph, W+2pw).
Output size per axis: Do = (D + 2pd - kD) // sd + 1 (and Ho, Wo alike).
Index names: (od, oh, ow) an output voxel, (id, ih, iw) an input voxel (of x_pad unless said),
(kz, ky, kx) a kernel offset, ci / co an input / output channel. Letters x, y, w, b, G, S are tensors.

Forward (an index like od*sd + kz runs over the padded input):

 (1) y[n, co, od, oh, ow] = b[co] + sum_{ci, kz, ky, kx} w[co, ci, kz, ky, kx]
                              * x_pad[n, ci, od*sd + kz, oh*sh + ky, ow*sw + kx]      # (N, Cout, Do, Ho, Wo)

Backward. G = dL/dy, (N, Cout, Do, Ho, Wo). y is linear in each of x_pad, w, b, so every gradient
is "the coefficient that multiplies the variable, times G, summed over every place it appears":

  grad_input: x_pad[n, ci, id, ih, iw] is read by every output voxel (od, oh, ow) and offset
  (kz, ky, kx) with od*sd + kz = id, oh*sh + ky = ih, ow*sw + kx = iw (the scatter form):
 (2) dL/dx_pad[n, ci, id, ih, iw] = sum_{co, kz, ky, kx; od*sd+kz=id, oh*sh+ky=ih, ow*sw+kx=iw}
                                    G[n, co, od, oh, ow] * w[co, ci, kz, ky, kx]    # (N, Cin, D+2pd, H+2ph, W+2pw)
     dL/dx = dL/dx_pad with the padding cut off                                      # (N, Cin, D, H, W)
  The gather form, which conv3d_grad_input computes. Spread G by the stride into S, zeros in between:
     S[n, co, od*sd + kD-1-pd, oh*sh + kH-1-ph, ow*sw + kW-1-pw] = G[n, co, od, oh, ow], 0 elsewhere
                                                                  # S: (N, Cout, D+kD-1, H+kH-1, W+kW-1)
  In (2) substitute kz = kD-1-kz' (the flipped kernel) and write x's own index id - pd as id:
  od*sd + kz = id + pd  becomes  od*sd + kD-1-pd = id + kz',  i.e. "S's index = id + kz'", so
 (3) dL/dx[n, ci, id, ih, iw] = sum_{co, kz', ky', kx'} S[n, co, id+kz', ih+ky', iw+kx']
                                * w[co, ci, kD-1-kz', kH-1-ky', kW-1-kx']             # (N, Cin, D, H, W)
  a stride-1 convolution (1) of S with the flipped kernel whose in/out channels are swapped.
  Stride 1: S is G zero-padded by k-1-p on each side, and (3) costs exactly what (1) costs.
  Stride 2, worked along one axis (D = 5, kD = 3, pd = 1, so Do = 3, S has length 7): G's entries
  od = 0, 1, 2 land at S indices 2*od + 1 = 1, 3, 5; S = [0, G0, 0, G1, 0, G2, 0]. Input voxel id = 2
  sums S[2..4] * (flipped w) = G1 * w[kz = 1], the one output (od = 1, kz = 1) that read x[2] in (1);
  input voxel id = 3 sums S[3..5] = G1 * w[kz = 2] + G2 * w[kz = 0], the two outputs that read x[3].
  Every S value between two G values is a zero the kernel multiplies anyway (s^3 - 1 of s^3 in 3-D).

  grad_weight: w[co, ci, kz, ky, kx] multiplies x_pad[n, ci, od*sd+kz, ...] in output y[n, co, od, oh, ow]:
 (4) dL/dw[co, ci, kz, ky, kx] = sum_{n, od, oh, ow} G[n, co, od, oh, ow]
                                 * x_pad[n, ci, od*sd + kz, oh*sh + ky, ow*sw + kx]  # (Cout, Cin, kD, kH, kW)
     (the forward sum with the roles of w and G exchanged: a "convolution" of x_pad by G.)

  grad_bias: b[co] is added to every output voxel of channel co:
 (5) dL/db[co] = sum_{n, od, oh, ow} G[n, co, od, oh, ow]                               # (Cout,)
     summed in float64 (2^18 terms at 64^3; float32 would keep only ~4 significant digits).
     A conv bias followed by a training-mode BatchNorm (as in the U-Net) gets a zero gradient in
     exact arithmetic: BatchNorm subtracts the channel mean, so adding b[co] to every voxel changes
     nothing, and the G it passes back sums to zero over each channel ((B3) in
     nn3d/batchnorm3d.py); computed, it is rounding noise, tiny next to G. PyTorch keeps such biases too, so the state_dicts match.

Input gradient on demand. `requires_input_grad = False` skips (2)-(3) and makes backward return
None (like a PyTorch input that does not require grad): the U-Net's first convolution reads the
data, whose gradient nothing needs, and (3) for a 1-channel input wastes 15 of its 16 register lanes.

What backward keeps. (4) reads x_pad, but the cache holds x itself (channels-last; usually the
previous layer's output, which that layer keeps for its own backward anyway) and backward pads it
again: one parallel copy (~1% of a step) instead of a second, padded copy of every conv input alive
from forward to backward. x must not be modified in place between forward and backward. Under
`nn3d.no_grad()` nothing is kept.

Reference: conv3d_forward_reference, conv3d_grad_input_reference and conv3d_grad_weight_reference in
nn3d/kernels/reference.py compute (1), (2) and (4) in plain NumPy; read them before the fast kernels.

Algorithm: 3x3x3, stride-1, padding-1 convolutions of 16 or more channels compute (1) and (3) by
Winograd's F(2^3, 3^3) (nn3d/kernels/winograd.py: 64 multiplications per 2x2x2 output tile and
channel pair instead of 216); `conv_algorithm` (nn3d/kernels/conv_algorithm.py) decides, and
NN3D_CONV=direct|winograd forces one. (4) and (5) always run direct.

Memory: activations are channels-last (nn3d/layout.py); the kernels (nn3d/kernels/conv3d.py) work on
(N, D, H, W, C) arrays, cite the line numbers above and use the same formulas with the channel index
moved last.
"""
from typing import NamedTuple

import numpy as np

from .checks import check_forward_ran, check_grad_output, check_volume, conv_arguments
from .grad_mode import is_grad_enabled
from .init import conv_weight_and_bias
from .kernels.channel_sum import channel_sums
from .kernels.conv3d import conv3d_forward, conv3d_grad_input, conv3d_grad_weight
from .kernels.conv_algorithm import conv_algorithm
from .kernels.padding import pad_channels_last
from .kernels.winograd import winograd_forward, winograd_grad_input
from .layout import from_channels_last, to_channels_last
from .module import Module, Parameter


class Conv3dCache(NamedTuple):
    """What forward keeps for backward (see "What backward keeps" above)."""
    x_cl: np.ndarray          # (N, D, H, W, Cin) the input, channels-last, unpadded
    input_shape: tuple        # (N, Cin, D, H, W)
    output_shape: tuple       # (N, Cout, Do, Ho, Wo): what grad_output must be


class Conv3d(Module):
    """y = conv3d(x, weight) + bias, as torch.nn.Conv3d (zero padding, no dilation, no groups)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        (self.in_channels, self.out_channels, self.kernel_size, self.stride,
         self.padding) = conv_arguments("Conv3d", in_channels, out_channels, kernel_size, stride, padding)
        weight, bias_values = conv_weight_and_bias((out_channels, in_channels, *self.kernel_size),
                                                   out_channels if bias else None)
        self.weight = Parameter(weight)                                   # (Cout, Cin, kD, kH, kW)
        self.bias = Parameter(bias_values) if bias else None              # (Cout,)
        self.requires_input_grad = True      # False: backward skips dL/dx (2)-(3) and returns None
        self._cache = None

    def forward(self, x):
        check_volume(x, "Conv3d", channels=self.in_channels, dtype=self.weight.data.dtype)
        padded = [size + 2 * pad for size, pad in zip(x.shape[2:], self.padding)]
        if any(p < k for p, k in zip(padded, self.kernel_size)):
            raise ValueError(f"Conv3d: input spatial size {x.shape[2:]} with padding {self.padding} "
                             f"is smaller than the kernel {self.kernel_size}")
        x_cl = to_channels_last(x)                                        # (N, D, H, W, Cin)
        bias = None if self.bias is None else self.bias.data
        if self._algorithm() == "winograd":
            y_cl = winograd_forward(x_cl, self.weight.data, bias)         # (1) (N, D, H, W, Cout)
        else:
            x_pad = pad_channels_last(x_cl, self.padding)                 # (N, D+2pd, H+2ph, W+2pw, Cin)
            y_cl = conv3d_forward(x_pad, self.weight.data, bias, self.stride)   # (1) (N, Do, Ho, Wo, Cout)
        y = from_channels_last(y_cl)                                      # (N, Cout, Do, Ho, Wo) view
        self._cache = Conv3dCache(x_cl, x.shape, y.shape) if is_grad_enabled() else None   # no x_pad: see above
        return y

    # forward (1): y[n,co,od,oh,ow] = b[co] + sum_{ci,kz,ky,kx} w[co,ci,kz,ky,kx] x_pad[n,ci,od*sd+kz,oh*sh+ky,ow*sw+kx]
    # gives:   (3) dL/dx = (spread, padded G = S) convolved with the flipped, in/out-swapped w
    #          (4) dL/dw[co,ci,kz,ky,kx] = sum_{n,od,oh,ow} G[n,co,od,oh,ow] x_pad[n,ci,od*sd+kz,oh*sh+ky,ow*sw+kx]
    #          (5) dL/db[co] = sum_{n,od,oh,ow} G[n,co,od,oh,ow]   (float64 sum)
    def backward(self, grad_output):
        check_forward_ran(self._cache, "Conv3d")
        x_cl, input_shape, output_shape = self._cache
        check_grad_output(grad_output, output_shape, x_cl.dtype, "Conv3d")
        grad_output_cl = to_channels_last(grad_output)                    # (N, Do, Ho, Wo, Cout)
        x_pad = pad_channels_last(x_cl, self.padding)                     # (N, D+2pd, H+2ph, W+2pw, Cin)
        self.weight.grad += conv3d_grad_weight(x_pad, grad_output_cl, self.kernel_size,
                                               self.stride)               # (4) (Cout, Cin, kD, kH, kW)
        del x_pad                                                         # freed before (3) allocates
        if self.bias is not None:
            grad_bias = channel_sums(grad_output_cl.reshape(-1, self.out_channels))   # (5) (Cout,) float64
            self.bias.grad += grad_bias.astype(self.bias.grad.dtype)
        if not self.requires_input_grad:
            return None
        if self._algorithm() == "winograd":
            grad_input_cl = winograd_grad_input(grad_output_cl, self.weight.data)   # (3) (N, D, H, W, Cin)
        else:
            grad_input_cl = conv3d_grad_input(grad_output_cl, self.weight.data, input_shape[2:],
                                              self.stride, self.padding)  # (3) (N, D, H, W, Cin)
        return from_channels_last(grad_input_cl)                          # (N, Cin, D, H, W) view

    def _algorithm(self):
        """'direct' or 'winograd' for (1) and (3): nn3d/kernels/conv_algorithm.py."""
        return conv_algorithm(self.kernel_size, self.stride, self.padding, self.in_channels,
                              self.out_channels)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
