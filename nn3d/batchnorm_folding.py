"""Inference: a Conv3d followed by an eval-mode BatchNorm3d (and its fused ReLU), as one convolution.

In eval mode BatchNorm3d uses its running statistics, so it is a fixed affine map per channel
(nn3d/batchnorm3d.py (F)):

    BN(v)[c] = v[c] * scale[c] + shift[c],   scale = gamma / sqrt(running_var + eps),
                                             shift = beta - running_mean * scale           (C,) each

Applied to a convolution's output v = conv(w, x) + b (nn3d/conv3d.py (1)), and because the
convolution is linear in its weights,

    BN(v)[co] = sum_{ci, k} (w[co, ci, k] scale[co]) x[ci, . + k]  +  (b[co] scale[co] + shift[co])

which is the convolution with weights w' = w * scale[co] and bias b' = b * scale + shift. With
BatchNorm3d(relu=True) the ReLU is applied as the convolution stores its output. The pair then costs
one convolution: the separate BatchNorm pass, which reads and writes the whole activation, is gone.
Only for inference: in training mode BatchNorm normalises with statistics of the very batch it is
given, which are not known before the convolution has run, and backward needs the unfolded pair.
The folded weights are recomputed at every call (a few thousand multiplications), so they never go
stale while the model trains between evaluations.
"""
import numpy as np

from .layout import from_channels_last, to_channels_last


def folded_weight_and_bias(conv, batchnorm):
    """(w', b') above for `conv` (a Conv3d) followed by `batchnorm` (an eval-mode BatchNorm3d):
    w' (Cout, Cin, kD, kH, kW) and b' (Cout,) in the weights' dtype, computed in float64."""
    scale = batchnorm.weight.data / np.sqrt(batchnorm.running_var.astype(np.float64) + batchnorm.eps)  # (Cout,)
    shift = batchnorm.bias.data - batchnorm.running_mean * scale                                      # (Cout,)
    bias = 0.0 if conv.bias is None else conv.bias.data.astype(np.float64)
    dtype = conv.weight.data.dtype
    weight = conv.weight.data * scale[:, None, None, None, None]                  # (Cout, Cin, kD, kH, kW)
    return weight.astype(dtype), (bias * scale + shift).astype(dtype)


def conv_batchnorm_eval(conv, batchnorm, *inputs):
    """batchnorm.forward(conv.forward(*inputs)) for an eval-mode `batchnorm`, computed as one
    convolution with folded weights (see above): the same function, float32 rounding apart. Like a
    forward under nn3d.no_grad(), it keeps no backward cache and drops the two layers' earlier ones.
    inputs: one (N, Cin, D, H, W) array, or several whose channel concatenation the convolution reads
    (as Conv3d.forward)."""
    if batchnorm.training:
        raise ValueError("conv_batchnorm_eval: the BatchNorm3d is in training mode; folding needs eval "
                         "mode (training normalises with the batch's own statistics)")
    if batchnorm.num_features != conv.out_channels:
        raise ValueError(f"conv_batchnorm_eval: BatchNorm3d({batchnorm.num_features}) cannot follow a "
                         f"Conv3d with {conv.out_channels} output channels")
    input_shape = conv.check_inputs(inputs)
    conv._cache = batchnorm._cache = None         # as their own forward passes under no_grad would
    weight, bias = folded_weight_and_bias(conv, batchnorm)
    y_cl, _ = conv.convolve(tuple(to_channels_last(x) for x in inputs), input_shape, weight, bias,
                            relu=batchnorm.relu, inference=True)
    return from_channels_last(y_cl)                                 # (N, Cout, Do, Ho, Wo) view
