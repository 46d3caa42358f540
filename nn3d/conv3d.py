"""Conv3d: 3-D convolution (PyTorch's cross-correlation), forward and hand-derived backward.

Shapes. x (N, Cin, D, H, W); weight w (Cout, Cin, kD, kH, kW); bias b (Cout,); stride (sd, sh, sw);
zero padding (pd, ph, pw). x_pad is x with the zeros in place: (N, Cin, D+2pd, H+2ph, W+2pw).
Output size per axis: Do = (D + 2pd - kD) // sd + 1 (and Ho, Wo alike).
Index names: (od, oh, ow) an output voxel, (id, ih, iw) an input voxel (of x_pad unless said),
(kz, ky, kx) a kernel offset, ci / co an input / output channel. Letters x, y, w, b, dy, S are tensors.

Forward (an index like od*sd + kz runs over the padded input):

 (1) y[n, co, od, oh, ow] = b[co] + sum_{ci, kz, ky, kx} w[co, ci, kz, ky, kx]
                              * x_pad[n, ci, od*sd + kz, oh*sh + ky, ow*sw + kx]      # (N, Cout, Do, Ho, Wo)

Backward. dy = dL/dy, (N, Cout, Do, Ho, Wo). y is linear in each of x_pad, w, b, so every gradient
is "the coefficient that multiplies the variable, times dy, summed over every place it appears":

  grad_input: x_pad[n, ci, id, ih, iw] is read by every output voxel (od, oh, ow) and offset
  (kz, ky, kx) with od*sd + kz = id, oh*sh + ky = ih, ow*sw + kx = iw (the scatter form):
 (2) dL/dx_pad[n, ci, id, ih, iw] = sum_{co, kz, ky, kx; od*sd+kz=id, oh*sh+ky=ih, ow*sw+kx=iw}
                                    dy[n, co, od, oh, ow] * w[co, ci, kz, ky, kx]   # (N, Cin, D+2pd, H+2ph, W+2pw)
     dL/dx = dL/dx_pad with the padding cut off                                      # (N, Cin, D, H, W)
  The gather form, which conv3d_grad_input computes. Spread dy by the stride into S, zeros in between:
     S[n, co, od*sd + kD-1-pd, oh*sh + kH-1-ph, ow*sw + kW-1-pw] = dy[n, co, od, oh, ow], 0 elsewhere
                                                                  # S: (N, Cout, D+kD-1, H+kH-1, W+kW-1)
  In (2) substitute kz = kD-1-kz' (the flipped kernel) and write x's own index id - pd as id:
  od*sd + kz = id + pd  becomes  od*sd + kD-1-pd = id + kz',  i.e. "S's index = id + kz'", so
 (3) dL/dx[n, ci, id, ih, iw] = sum_{co, kz', ky', kx'} S[n, co, id+kz', ih+ky', iw+kx']
                                * w[co, ci, kD-1-kz', kH-1-ky', kW-1-kx']             # (N, Cin, D, H, W)
  a stride-1 convolution (1) of S with the flipped kernel whose in/out channels are swapped.
  Stride 1: S is dy zero-padded by k-1-p on each side, and (3) costs exactly what (1) costs.
  Stride 2, worked along one axis (D = 5, kD = 3, pd = 1, so Do = 3, S has length 7): dy's entries
  od = 0, 1, 2 land at S indices 2*od + 1 = 1, 3, 5; S = [0, dy0, 0, dy1, 0, dy2, 0]. Input voxel id = 2
  sums S[2..4] * (flipped w) = dy1 * w[kz = 1], the one output (od = 1, kz = 1) that read x[2] in (1);
  input voxel id = 3 sums S[3..5] = dy1 * w[kz = 2] + dy2 * w[kz = 0], the two outputs that read x[3].
  Every S value between two dy values is a zero the kernel multiplies anyway (s^3 - 1 of s^3 in 3-D).

  grad_weight: w[co, ci, kz, ky, kx] multiplies x_pad[n, ci, od*sd+kz, ...] in output y[n, co, od, oh, ow]:
 (4) dL/dw[co, ci, kz, ky, kx] = sum_{n, od, oh, ow} dy[n, co, od, oh, ow]
                                 * x_pad[n, ci, od*sd + kz, oh*sh + ky, ow*sw + kx]  # (Cout, Cin, kD, kH, kW)
     (the forward sum with the roles of w and dy exchanged: a "convolution" of x_pad by dy.)

  grad_bias: b[co] is added to every output voxel of channel co:
 (5) dL/db[co] = sum_{n, od, oh, ow} dy[n, co, od, oh, ow]                              # (Cout,)
     summed in float64 (2^18 terms at 64^3; float32 would keep only ~4 significant digits).
     A conv bias followed by a training-mode BatchNorm (as in the U-Net) gets a zero gradient in
     exact arithmetic: BatchNorm subtracts the channel mean, so adding b[co] to every voxel changes
     nothing, and the dy it passes back sums to zero over each channel ((B3) in
     nn3d/batchnorm3d.py); computed, it is rounding noise, tiny next to dy. PyTorch keeps such
     biases too, so the state_dicts match.

Input gradient on demand. `requires_input_grad = False` skips (2)-(3) and makes backward return
None (like a PyTorch input that does not require grad): the U-Net's first convolution reads the
data, whose gradient nothing needs, and (3) for a 1-channel input wastes 15 of its 16 register lanes.

What backward keeps. Direct (4) reads x_pad, but the cache holds x itself (channels-last; usually the
previous layer's output, which that layer keeps for its own backward anyway) and backward pads it
again: one parallel copy (~1% of a step) instead of a second, padded copy of every conv input alive
from forward to backward. x must not be modified in place between forward and backward. Under
`nn3d.no_grad()` nothing is kept. Backward drops the cache once (4) is done, before (3) allocates
dL/dx: in the U-Net the decoder's up-sampled input is freed just before its gradient is made.

Several inputs (the U-Net's skip connections). forward(x_0, x_1) convolves cat(x_0, x_1) along the
channels. The forward pass pads its input into a zero-haloed buffer anyway; with several inputs it
writes them side by side into that one buffer, so the concatenation costs nothing extra and is never
kept (the cache holds the inputs, which the layers before keep anyway). Input j owns the channels
[o_j, o_j + C_j) of x_pad and of w, and (3) computed for w[:, o_j:o_j + C_j] alone is dL/dx_j: the
gradient comes out already split, one contiguous array per input.

Reference: conv3d_forward_reference, conv3d_grad_input_reference and conv3d_grad_weight_reference in
nn3d/kernels/reference.py compute (1), (2) and (4) in plain NumPy; read them before the fast kernels.

Algorithm: 3x3x3, stride-1, padding-1 convolutions of 16 or more channels may compute (1), (3) and
(4) by Winograd's minimal filtering (nn3d/kernels/winograd/): F(4^3, 3^3) for (1) and (3) (216
multiplications per 4x4x4 output tile and channel pair instead of 1728, convolution4.py) and the
transpose of F(4^3, 3^3) or F(2^3, 3^3) for (4) (grad_weight4.py, grad_weight.py); `conv_algorithm`
(nn3d/kernels/conv_algorithm.py) decides per pass, shape and instruction set, and
NN3D_CONV=direct|winograd|winograd4 forces one. (5) is a channel
sum either way. Winograd reads its inputs unpadded and in place, a decoder's two side by side as if
concatenated (so backward makes no x_pad), and computes (3) for all of them in one pass whose
output comes out split into the inputs' bands. F(2^3, 3^3)'s (3) reuses the filter transform (U,
from the weights) its forward computed and kept (computed in backward after a direct forward);
F(4^3, 3^3)'s (3) transforms the flipped, in/out-swapped filter itself.

Memory: activations are channels-last (nn3d/layout.py); the kernels (nn3d/kernels/conv3d.py and
conv3d_grad_weight.py) work on (N, D, H, W, C) arrays, cite the line numbers above and use the same
formulas with the channel index moved last.
"""
from typing import NamedTuple

import numpy as np

from .checks import check_forward_ran, check_grad_output, check_volume, conv_arguments
from .grad_mode import is_grad_enabled
from .init import conv_weight_and_bias
from .kernels.channel_sum import channel_sums
from .kernels.conv3d import conv3d_forward, conv3d_grad_input_of_spread, spread_grad_output
from .kernels.conv3d_grad_weight import conv3d_grad_weight
from .kernels.conv_algorithm import conv_algorithm
from .kernels.padding import pad_and_concatenate
from .kernels.winograd.convolution import winograd_forward, winograd_grad_input
from .kernels.winograd.convolution4 import winograd4_forward, winograd4_grad_input
from .kernels.winograd.filter_transform import filter_transform
from .kernels.winograd.filter_transform4 import filter_transform4
from .kernels.winograd.grad_weight import winograd_grad_weight
from .kernels.winograd.grad_weight4 import winograd4_grad_weight
from .layout import from_channels_last, to_channels_last
from .module import Module, Parameter


class Conv3dCache(NamedTuple):
    """What forward keeps for backward (see "What backward keeps" above)."""
    inputs_cl: tuple          # the inputs, channels-last, unpadded: (N, D, H, W, C_j) each, sum C_j = Cin
    input_shape: tuple        # (N, Cin, D, H, W)
    output_shape: tuple       # (N, Cout, Do, Ho, Wo): what grad_output must be
    weight_transform: object  # Winograd's U packed (64, Cout_padded/16, Cin, 16), or None on the direct path


class Conv3d(Module):
    """y = conv3d(x, weight) + bias, as torch.nn.Conv3d (zero padding, no dilation, no groups).

    forward(x) takes one input; forward(x_0, x_1, ...) convolves their concatenation along the
    channels, torch.cat([x_0, x_1, ...], dim=1), without forming it (see "Several inputs" above),
    and backward then returns one gradient per input, in a tuple."""

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

    def check_inputs(self, inputs):
        """One clear error for inputs this layer cannot take; returns the (N, Cin, D, H, W) shape of
        their concatenation."""
        if len(inputs) < 1:
            raise ValueError("Conv3d: forward needs at least one input array")
        for index, x in enumerate(inputs):
            name = "input" if len(inputs) == 1 else f"input {index}"
            check_volume(x, "Conv3d", channels=self.in_channels if len(inputs) == 1 else None,
                         dtype=self.weight.data.dtype, name=name)
        first = inputs[0]
        for index, x in enumerate(inputs[1:], start=1):
            if (x.shape[0],) + x.shape[2:] != (first.shape[0],) + first.shape[2:]:
                raise ValueError(f"Conv3d: input {index} has shape {x.shape}, which differs from input 0's "
                                 f"{first.shape} outside the channel axis")
        channels = sum(x.shape[1] for x in inputs)
        if channels != self.in_channels:
            raise ValueError(f"Conv3d: the inputs have {channels} channels together, expected "
                             f"{self.in_channels}")
        padded = [size + 2 * pad for size, pad in zip(first.shape[2:], self.padding)]
        if any(p < k for p, k in zip(padded, self.kernel_size)):
            raise ValueError(f"Conv3d: input spatial size {first.shape[2:]} with padding {self.padding} "
                             f"is smaller than the kernel {self.kernel_size}")
        return (first.shape[0], channels, *first.shape[2:])

    def forward(self, *inputs):
        input_shape = self.check_inputs(inputs)
        inputs_cl = tuple(to_channels_last(x) for x in inputs)            # (N, D, H, W, C_j) each
        bias = None if self.bias is None else self.bias.data
        y_cl, weight_transform = self.convolve(inputs_cl, input_shape, self.weight.data, bias,   # (1)
                                               inference=not is_grad_enabled())
        y = from_channels_last(y_cl)                                      # (N, Cout, Do, Ho, Wo) view
        self._cache = (Conv3dCache(inputs_cl, input_shape, y.shape, weight_transform)   # no x_pad
                       if is_grad_enabled() else None)
        return y

    def convolve(self, inputs_cl, input_shape, weight, bias, relu=False, inference=False):
        """Line (1) on channels-last inputs (N, D, H, W, C_j) whose concatenation has input_shape
        (N, Cin, D, H, W), with `weight` and `bias` (the layer's own, or a folded BatchNorm's:
        nn3d/batchnorm_folding.py), max(0, y) if relu, by the algorithm `conv_algorithm` picks for
        the pass 'inference' (no backward follows) or 'forward'.
        -> (y (N, Do, Ho, Wo, Cout) channels-last, F(2^3, 3^3)'s packed U for backward, or None)."""
        algorithm = self._algorithm(input_shape, "inference" if inference else "forward")
        if algorithm == "winograd4":                                      # F(4^3, 3^3), inputs in place
            return (winograd4_forward(inputs_cl, filter_transform4(weight), bias, self.out_channels, relu=relu),
                    None)                                                 # grad-input transforms its own
        if algorithm == "winograd":                                       # reads the inputs in place
            weight_transform = filter_transform(weight)                   # U (64, Cout_padded/16, Cin, 16)
            return (winograd_forward(inputs_cl, weight_transform, bias, self.out_channels, relu=relu),
                    weight_transform)
        x_pad = pad_and_concatenate(inputs_cl, self.padding)              # (N, D+2pd, H+2ph, W+2pw, Cin)
        return conv3d_forward(x_pad, weight, bias, self.stride, relu=relu), None

    # forward (1): y[n,co,od,oh,ow] = b[co] + sum_{ci,kz,ky,kx} w[co,ci,kz,ky,kx] x_pad[n,ci,od*sd+kz,oh*sh+ky,ow*sw+kx]
    # gives:   (3) dL/dx = (spread, padded dy = S) convolved with the flipped, in/out-swapped w
    #          (4) dL/dw[co,ci,kz,ky,kx] = sum_{n,od,oh,ow} dy[n,co,od,oh,ow] x_pad[n,ci,od*sd+kz,oh*sh+ky,ow*sw+kx]
    #          (5) dL/db[co] = sum_{n,od,oh,ow} dy[n,co,od,oh,ow]  (float64 sum)
    def backward(self, grad_output):
        check_forward_ran(self._cache, "Conv3d")
        inputs_cl, input_shape, output_shape, weight_transform = self._cache
        check_grad_output(grad_output, output_shape, inputs_cl[0].dtype, "Conv3d")
        self._cache = None                                                # consumed: x goes after (4)
        grad_output_cl = to_channels_last(grad_output)                    # (N, Do, Ho, Wo, Cout)
        grad_weight_algorithm = self._algorithm(input_shape, "grad_weight")
        if grad_weight_algorithm == "winograd4":                          # the inputs in place
            self.weight.grad += winograd4_grad_weight(inputs_cl, grad_output_cl)  # (4) (Cout, Cin, 3, 3, 3)
        elif grad_weight_algorithm == "winograd":                         # the inputs in place
            self.weight.grad += winograd_grad_weight(inputs_cl, grad_output_cl)   # (4) (Cout, Cin, 3, 3, 3)
        else:
            x_pad = pad_and_concatenate(inputs_cl, self.padding)          # (N, D+2pd, H+2ph, W+2pw, Cin)
            self.weight.grad += conv3d_grad_weight(x_pad, grad_output_cl, self.kernel_size,
                                                   self.stride)           # (4) (Cout, Cin, kD, kH, kW)
            del x_pad
        bands = np.cumsum([0] + [x_cl.shape[4] for x_cl in inputs_cl])    # channel offsets o_j of the inputs
        del inputs_cl                                                     # freed before (3) allocates
        if self.bias is not None:
            grad_bias = channel_sums(grad_output_cl.reshape(-1, self.out_channels))   # (5) (Cout,) float64
            self.bias.grad += grad_bias.astype(self.bias.grad.dtype)
        if not self.requires_input_grad:
            return None
        bands = list(zip(bands[:-1], bands[1:]))                          # input j: channels [start, stop)
        grad_input_algorithm = self._algorithm(input_shape, "grad_input")
        if grad_input_algorithm == "winograd4":                           # all inputs at once
            grads = tuple(from_channels_last(grad_cl) for grad_cl in      # (N, C_j, D, H, W) views
                          winograd4_grad_input(grad_output_cl, self.weight.data,
                                               tuple(stop - start for start, stop in bands)))   # (3)
        elif grad_input_algorithm == "winograd":                          # all inputs at once
            if weight_transform is None:                                  # forward ran direct
                weight_transform = filter_transform(self.weight.data)
            grads = tuple(from_channels_last(grad_cl) for grad_cl in      # (N, C_j, D, H, W) views
                          winograd_grad_input(grad_output_cl, weight_transform,
                                              tuple(stop - start for start, stop in bands)))   # (3)
        else:
            grad_output_spread = spread_grad_output(grad_output_cl, self.kernel_size, input_shape[2:],
                                                    self.stride, self.padding)   # S of (3) (N, D+kD-1, ..., Cout)
            del grad_output, grad_output_cl                               # freed before (3) allocates
            grads = tuple(from_channels_last(                             # (N, C_j, D, H, W) views
                conv3d_grad_input_of_spread(grad_output_spread, self.weight.data[:, start:stop]))   # (3), input j
                for start, stop in bands)
        return grads[0] if len(grads) == 1 else grads

    def _algorithm(self, input_shape, pass_name="forward"):
        """'direct', 'winograd' or 'winograd4' for the pass (1) 'forward', (3) 'grad_input' or (4)
        'grad_weight' (or 'inference') on an input of input_shape (N, Cin, D, H, W):
        nn3d/kernels/conv_algorithm.py."""
        return conv_algorithm(self.kernel_size, self.stride, self.padding, self.in_channels,
                              self.out_channels, input_shape, pass_name)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
