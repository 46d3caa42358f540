"""Checks of the direct convolution (conv3d.py, conv3d_grad_weight.py) and of the pointwise head
(pointwise.py), both through the conv3d functions the layers call: forward, grad-input, grad-weight."""
import math

import numpy as np

from ...core.shapes import window_output_size
from .. import conv3d, conv3d_grad_weight, pointwise, reference
from ..padding import pad_channels_last
from .registry import checks, conv_case, conv_data, normal, padded, widen

DIRECT_CASES = (conv_case(2, 3, 17, (5, 6, 11)),                                   # W, j and Cout tails
                conv_case(2, 1, 5, (7, 6, 9), (3, 2, 3), (2, 1, 2), (1, 0, 2), relu=True))   # C = 1, strided


def not_pointwise(case):
    if pointwise.is_pointwise(case.kernel, case.stride, case.cout):
        raise ValueError("this case takes the pointwise kernel, not the direct one")


@checks("conv3d_forward", "conv3d", "conv3d.py", "reference.py: conv3d_forward_reference", DIRECT_CASES, tiled=True)
def check_conv3d_forward(case, dtype, width, rng):
    not_pointwise(case)
    x, weight, bias = conv_data(case, dtype, rng)
    ours = conv3d.conv3d_forward(pad_channels_last(x, case.padding), weight, bias, case.stride, width, case.relu)
    expected = reference.conv3d_forward_reference(padded(*widen(x), case.padding), *widen(weight, bias), case.stride)
    if case.relu:
        expected = np.maximum(expected, 0)
    return [(None, ours, expected, case.cin * math.prod(case.kernel))]


def conv_grad_output(case, dtype, rng):
    out = window_output_size([s + 2 * p for s, p in zip(case.size, case.padding)], case.kernel, case.stride)
    return normal(rng, (case.batch, *out, case.cout), dtype)


@checks("conv3d_grad_input", "conv3d", "conv3d.py", "reference.py: conv3d_grad_input_reference", DIRECT_CASES,
        tiled=True)
def check_conv3d_grad_input(case, dtype, width, rng):
    not_pointwise(case)
    _, weight, _ = conv_data(case, dtype, rng)
    grad_output = conv_grad_output(case, dtype, rng)
    ours = conv3d.conv3d_grad_input(grad_output, weight, case.size, case.stride, case.padding, width)
    expected = reference.conv3d_grad_input_reference(*widen(grad_output, weight), case.size, case.stride,
                                                     case.padding)
    return [(None, ours, expected, case.cout * math.prod(case.kernel))]


@checks("conv3d_grad_weight", "conv3d", "conv3d_grad_weight.py", "reference.py: conv3d_grad_weight_reference",
        DIRECT_CASES, tiled=True)
def check_conv3d_grad_weight(case, dtype, width, rng):
    not_pointwise(case)
    x, _, _ = conv_data(case, dtype, rng)
    grad_output = conv_grad_output(case, dtype, rng)
    ours = conv3d_grad_weight.conv3d_grad_weight(pad_channels_last(x, case.padding), grad_output, case.kernel,
                                                 case.stride, width)
    expected = reference.conv3d_grad_weight_reference(padded(*widen(x), case.padding), *widen(grad_output),
                                                      case.kernel, case.stride)
    return [(None, ours, expected, math.prod(grad_output.shape[:4]))]


# ---- the pointwise head (pointwise.py), through the conv3d functions that dispatch to it -------------
POINTWISE_CASES = (conv_case(2, 19, 3, (3, 4, 5), 1, 1, 0),       # a 16-channel block + 3 left over
                   conv_case(2, 16, 1, (5, 6, 7), 1, 1, 0))       # the U-Net's head: 16 -> 1


def pointwise_data(case, dtype, rng):
    if not pointwise.is_pointwise(case.kernel, case.stride, case.cout):
        raise ValueError("this case does not take the pointwise kernel")
    x, weight, bias = conv_data(case, dtype, rng)
    return x, weight, bias, normal(rng, (case.batch, *case.size, case.cout), dtype)


@checks("pointwise_forward", "pointwise", "pointwise.py", "reference.py: conv3d_forward_reference (1x1x1)",
        POINTWISE_CASES)
def check_pointwise_forward(case, dtype, width, rng):
    x, weight, bias, _ = pointwise_data(case, dtype, rng)
    ours = conv3d.conv3d_forward(x, weight, bias, case.stride)
    return [(None, ours, reference.conv3d_forward_reference(*widen(x, weight, bias), case.stride), case.cin)]


@checks("pointwise_grad_input", "pointwise", "pointwise.py", "reference.py: conv3d_grad_input_reference (1x1x1)",
        POINTWISE_CASES)
def check_pointwise_grad_input(case, dtype, width, rng):
    _, weight, _, grad_output = pointwise_data(case, dtype, rng)
    ours = conv3d.conv3d_grad_input(grad_output, weight, case.size, case.stride, case.padding)
    expected = reference.conv3d_grad_input_reference(*widen(grad_output, weight), case.size, case.stride,
                                                     case.padding)
    return [(None, ours, expected, case.cout)]


@checks("pointwise_grad_weight", "pointwise", "pointwise.py", "reference.py: conv3d_grad_weight_reference (1x1x1)",
        POINTWISE_CASES)
def check_pointwise_grad_weight(case, dtype, width, rng):
    x, _, _, grad_output = pointwise_data(case, dtype, rng)
    ours = conv3d_grad_weight.conv3d_grad_weight(x, grad_output, case.kernel, case.stride)
    expected = reference.conv3d_grad_weight_reference(*widen(x, grad_output), case.kernel, case.stride)
    return [(None, ours, expected, 1)]                         # summed in float64, rounded once
