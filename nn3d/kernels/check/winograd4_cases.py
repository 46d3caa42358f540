"""Checks of Winograd F(4^3, 3^3) (winograd/convolution4.py, grad_weight4.py, filter_transform4.py):
the forward, grad-input and grad-weight at every product width, and the filter transform."""
import math

import numpy as np

from .. import reference, register_tile
from ..winograd import algorithm4 as winograd_algorithm4
from ..winograd import convolution4 as winograd_convolution4
from ..winograd import filter_transform4 as winograd_filter_transform4
from ..winograd import grad_weight4 as winograd_grad_weight4
from .registry import PRODUCT_WIDTHS, checks, conv_case, normal, widen
from .winograd_cases import FILTER_CASES, winograd_data

# sizes not multiples of 4 with an interior tile (10 and more), a Cout tail, C = 1, two inputs, ReLU
WINOGRAD4_CASES = (conv_case(2, (3,), 17, (5, 10, 7)), conv_case(2, (1,), 1, (3, 4, 1), relu=True),
                   conv_case(1, (16, 5), 6, (11, 6, 10)))


@checks("winograd4_forward", "winograd", "winograd/convolution4.py",
        "winograd/algorithm4.py: winograd4_forward_reference", WINOGRAD4_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd4_forward(case, dtype, width, rng):
    """L counts each output's 216 products of Cin * 27 ... terms: F(4^3, 3^3)'s transforms (entries up
    to 5 in B4^T, 8 in A4^T) make intermediate values far larger than the outputs, and its float32
    error some 60x F(2^3, 3^3)'s (algorithm4.py, section 4)."""
    inputs, weight, bias, _ = winograd_data(case, dtype, rng)
    ours = winograd_convolution4.winograd4_forward(inputs, winograd_filter_transform4.filter_transform4(weight), bias,
                                                   case.cout, width, relu=case.relu)
    expected = winograd_algorithm4.winograd4_forward_reference(np.concatenate(widen(*inputs), axis=4),
                                                               *widen(weight, bias))
    if case.relu:
        expected = np.maximum(expected, 0)
    return [(None, ours, expected, sum(case.cin) * 27 * 216)]


@checks("winograd4_grad_input", "winograd", "winograd/convolution4.py", "reference.py: conv3d_grad_input_reference",
        WINOGRAD4_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd4_grad_input(case, dtype, width, rng):
    """The output gradient convolved with the flipped, in/out-swapped filter by F(4^3, 3^3), cut into
    the inputs' bands; L as for the forward, with Cout terms per output."""
    _, weight, _, grad_output = winograd_data(case, dtype, rng)
    bands = winograd_convolution4.winograd4_grad_input(grad_output, weight, case.cin, width)
    expected = reference.conv3d_grad_input_reference(*widen(grad_output, weight), case.size, (1, 1, 1), (1, 1, 1))
    return [(None, np.concatenate(bands, axis=4), expected, case.cout * 27 * 216)]


@checks("winograd4_grad_weight", "winograd", "winograd/grad_weight4.py",
        "winograd/grad_weight4.py: winograd4_grad_weight_reference", WINOGRAD4_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd4_grad_weight(case, dtype, width, rng):
    """L counts each weight's N*D*H*W voxel terms times 216: as for the forward, the transforms make
    the summed values (dU) far larger than the gradient they give (grad_weight4.py, section 3)."""
    inputs, _, _, grad_output = winograd_data(case, dtype, rng)
    ours = winograd_grad_weight4.winograd4_grad_weight(inputs, grad_output, width)
    expected = winograd_grad_weight4.winograd4_grad_weight_reference(np.concatenate(widen(*inputs), axis=4),
                                                                     *widen(grad_output))
    return [(None, ours, expected, math.prod(grad_output.shape[:4]) * 216)]


@checks("filter_transform4", "winograd", "winograd/filter_transform4.py",
        "winograd/algorithm4.py: filter_transform4_reference", FILTER_CASES)
def check_filter_transform4(case, dtype, width, rng):
    weight = normal(rng, (case.cout, case.cin, 3, 3, 3), dtype)
    ours = winograd_filter_transform4.filter_transform4(weight)
    u = winograd_algorithm4.filter_transform4_reference(*widen(weight)).reshape(216, case.cout, case.cin)
    u = np.concatenate([u, np.zeros((216, register_tile.padded_channels(case.cout) - case.cout, case.cin))], axis=1)
    return [(None, ours, u.reshape(216, -1, register_tile.BLOCK_C, case.cin).transpose(0, 1, 3, 2), 1)]
