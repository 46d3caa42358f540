"""Checks of BatchNorm + ReLU (batchnorm3d.py) and ReLU (relu.py), on flat (P, C) arrays."""
import math

import numpy as np

from .. import batchnorm3d, reference, relu
from .registry import case, checks, normal, size_label, widen

def flat_case(batch, size, channels, relu=None):
    label = f"N{batch} {size_label(size)} C{channels}" + ("" if relu is None else " relu" if relu else " no relu")
    return case(label, rows=batch * math.prod(size), channels=channels, relu=relu)


BATCHNORM_CASES = (flat_case(2, (3, 5, 7), 1, relu=False), flat_case(2, (5, 4, 3), 17, relu=True))


def batchnorm_data(case, dtype, rng):
    """x (P, C) around 1; scale, shift, mean, mean_dy, x_hat_coefficient (C,); grad_output (P, C)."""
    x = (1 + rng.standard_normal((case.rows, case.channels))).astype(dtype)
    vectors = [normal(rng, case.channels, dtype) for _ in range(5)]
    return x, vectors, normal(rng, (case.rows, case.channels), dtype)


@checks("batchnorm_affine", "batchnorm3d", "batchnorm3d.py", "reference.py: batchnorm_affine_reference",
        BATCHNORM_CASES)
def check_batchnorm_affine(case, dtype, width, rng):
    x, (scale, shift, _, _, _), _ = batchnorm_data(case, dtype, rng)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    batchnorm3d.batchnorm_affine(x, scale, shift, case.relu, ours)
    reference.batchnorm_affine_reference(*widen(x, scale, shift), case.relu, expected)
    return [(None, ours, expected, 2)]                             # a product and a sum


@checks("batchnorm_backward_input", "batchnorm3d", "batchnorm3d.py",
        "reference.py: batchnorm_backward_input_reference", BATCHNORM_CASES)
def check_batchnorm_backward_input(case, dtype, width, rng):
    x, (scale, shift, mean, mean_dy, coefficient), grad_output = batchnorm_data(case, dtype, rng)
    output = np.empty_like(x)                                      # the forward's y: ReLU's mask
    reference.batchnorm_affine_reference(x, scale, shift, case.relu, output)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    batchnorm3d.batchnorm_backward_input(x, grad_output, output, case.relu, mean, scale, mean_dy, coefficient, ours)
    reference.batchnorm_backward_input_reference(*widen(x, grad_output, output), case.relu,
                                                 *widen(mean, scale, mean_dy, coefficient), expected)
    return [(None, ours, expected, 4)]                             # two differences, a product, a scale


RELU_CASES = (flat_case(2, (3, 5, 7), 3),)


def relu_data(case, dtype, rng):
    """x flat, a fifth of it exact zeros (where the convention matters), and a gradient."""
    x = rng.standard_normal(case.rows * case.channels)
    x[rng.random(x.size) < 0.2] = 0
    return x.astype(dtype), normal(rng, x.size, dtype)


@checks("relu_forward", "relu", "relu.py", "reference.py: relu_forward_reference", RELU_CASES)
def check_relu_forward(case, dtype, width, rng):
    x, _ = relu_data(case, dtype, rng)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    relu.relu_forward(x, ours)
    reference.relu_forward_reference(*widen(x), expected)
    return [(None, ours, expected, 0)]


@checks("relu_backward", "relu", "relu.py", "reference.py: relu_backward_reference", RELU_CASES)
def check_relu_backward(case, dtype, width, rng):
    x, grad_output = relu_data(case, dtype, rng)
    y = np.maximum(x, 0)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    relu.relu_backward(y, grad_output, ours)
    reference.relu_backward_reference(*widen(y, grad_output), expected)
    return [(None, ours, expected, 0)]
