"""Checks of Winograd F(2^3, 3^3) (winograd/): forward, grad-input and grad-weight at every product
width, and the two filter transforms."""
import math

import numpy as np

from .. import reference, register_tile
from ..winograd import algorithm as winograd_algorithm
from ..winograd import convolution as winograd_convolution
from ..winograd import filter_transform as winograd_filter_transform
from ..winograd import grad_weight as winograd_grad_weight
from .registry import PRODUCT_WIDTHS, case, checks, conv_case, normal, widen

# odd sizes (partial tiles on the far faces), a Cout tail; C = 1 with W = 1; a decoder's two inputs
WINOGRAD_CASES = (conv_case(2, (3,), 17, (5, 6, 7)), conv_case(2, (1,), 1, (3, 4, 1)),
                  conv_case(2, (16, 5), 6, (3, 6, 5)))
WINOGRAD_FORWARD_CASES = WINOGRAD_CASES[:1] + (conv_case(2, (1,), 1, (3, 4, 1), relu=True),) + WINOGRAD_CASES[2:]


def winograd_data(case, dtype, rng):
    """inputs (a tuple of (N, D, H, W, C_j)), weight (Cout, sum C_j, 3, 3, 3), bias, grad_output."""
    inputs = tuple(normal(rng, (case.batch, *case.size, c), dtype) for c in case.cin)
    weight = normal(rng, (case.cout, sum(case.cin), 3, 3, 3), dtype)
    return (inputs, weight, normal(rng, case.cout, dtype),
            normal(rng, (case.batch, *case.size, case.cout), dtype))


@checks("winograd_forward", "winograd", "winograd/convolution.py",
        "winograd/algorithm.py: winograd_forward_reference", WINOGRAD_FORWARD_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd_forward(case, dtype, width, rng):
    inputs, weight, bias, _ = winograd_data(case, dtype, rng)
    u = winograd_filter_transform.filter_transform(weight)
    ours = winograd_convolution.winograd_forward(inputs, u, bias, case.cout, width, relu=case.relu)
    expected = winograd_algorithm.winograd_forward_reference(np.concatenate(widen(*inputs), axis=4),
                                                             *widen(weight, bias))
    if case.relu:
        expected = np.maximum(expected, 0)
    return [(None, ours, expected, sum(case.cin) * 27)]


@checks("winograd_grad_input", "winograd", "winograd/convolution.py", "reference.py: conv3d_grad_input_reference",
        WINOGRAD_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd_grad_input(case, dtype, width, rng):
    _, weight, _, grad_output = winograd_data(case, dtype, rng)
    u = winograd_filter_transform.filter_transform(weight)
    bands = winograd_convolution.winograd_grad_input(grad_output, u, case.cin, width)
    expected = reference.conv3d_grad_input_reference(*widen(grad_output, weight), case.size, (1, 1, 1), (1, 1, 1))
    return [(None, np.concatenate(bands, axis=4), expected, case.cout * 27)]


@checks("winograd_grad_weight", "winograd", "winograd/grad_weight.py",
        "winograd/grad_weight.py: winograd_grad_weight_reference", WINOGRAD_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd_grad_weight(case, dtype, width, rng):
    inputs, _, _, grad_output = winograd_data(case, dtype, rng)
    ours = winograd_grad_weight.winograd_grad_weight(inputs, grad_output, width)
    expected = winograd_grad_weight.winograd_grad_weight_reference(np.concatenate(widen(*inputs), axis=4),
                                                                   *widen(grad_output))
    return [(None, ours, expected, math.prod(grad_output.shape[:4]))]


FILTER_CASES = (case("17->3 weight", cout=17, cin=3), case("5->18 weight", cout=5, cin=18))   # tails either way


def packed(u):
    """U (4, 4, 4, Cout, Cin) -> the kernels' layout (64, Cout_padded/16, Cin, 16), zeros past Cout."""
    cout, cin = u.shape[3:]
    block = register_tile.BLOCK_C
    u = np.concatenate([u.reshape(64, cout, cin), np.zeros((64, register_tile.padded_channels(cout) - cout, cin))],
                       axis=1)
    return u.reshape(64, -1, block, cin).transpose(0, 1, 3, 2)


def unpacked(u_packed, cout):
    """The kernels' (64, Cout_padded/16, Cin, 16) -> U (4, 4, 4, Cout, Cin)."""
    cin = u_packed.shape[2]
    return u_packed.transpose(0, 1, 3, 2).reshape(64, -1, cin)[:, :cout].reshape(4, 4, 4, cout, cin)


@checks("filter_transform", "winograd", "winograd/filter_transform.py",
        "winograd/algorithm.py: filter_transform_reference", FILTER_CASES)
def check_filter_transform(case, dtype, width, rng):
    weight = normal(rng, (case.cout, case.cin, 3, 3, 3), dtype)
    ours = winograd_filter_transform.filter_transform(weight)
    return [(None, ours, packed(winograd_algorithm.filter_transform_reference(*widen(weight))), 1)]   # one rounding


@checks("flipped_transposed_transform", "winograd", "winograd/filter_transform.py",
        "winograd/algorithm.py: flipped_transposed_transform_reference", FILTER_CASES)
def check_flipped_transposed_transform(case, dtype, width, rng):
    u_packed = winograd_filter_transform.filter_transform(normal(rng, (case.cout, case.cin, 3, 3, 3), dtype))
    ours = winograd_filter_transform.flipped_transposed_transform(u_packed, case.cout)
    expected = packed(winograd_algorithm.flipped_transposed_transform_reference(*widen(unpacked(u_packed,
                                                                                                case.cout))))
    return [(None, ours, expected, 0)]                                                        # a gather
