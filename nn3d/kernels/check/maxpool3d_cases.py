"""Checks of max-pool (maxpool3d.py): the forward's maximum and argmax, both backward kernels."""
import math

import numpy as np

from ...core.shapes import window_output_size
from .. import maxpool3d, reference
from .registry import case, checks, normal, short, size_label, triple, widen

def pool_case(batch, size, channels, kernel, stride):
    kernel, stride = triple(kernel), triple(stride)
    label = f"N{batch} {size_label(size)} C{channels} k{short(kernel)} s{short(stride)}"
    return case(label, batch=batch, size=tuple(size), channels=channels, kernel=kernel, stride=stride)


POOL_CASES = (pool_case(2, (5, 6, 7), 3, 2, 2),                         # floor drops the last voxels
              pool_case(2, (7, 6, 9), 1, (3, 2, 2), (2, 1, 2)))         # C = 1, windows overlap along d
TILED_POOL_CASES = (POOL_CASES[0], pool_case(2, (5, 7, 6), 1, (2, 3, 1), (2, 3, 1)))   # stride == kernel


def pool_forward(case, dtype, rng):
    """x: ReLU of noise (half exact zeros: all-zero windows tie) (N, D, H, W, C), and the reference's
    y (float64) and argmax."""
    x = np.maximum(rng.standard_normal((case.batch, *case.size, case.channels)), 0).astype(dtype)
    out = window_output_size(case.size, case.kernel, case.stride)
    y, argmax = np.empty((case.batch, *out, case.channels)), np.empty((case.batch, *out, case.channels), np.uint8)
    reference.maxpool3d_forward_reference(*widen(x), *case.kernel, *case.stride, y, argmax)
    return x, y, argmax


@checks("maxpool3d_forward", "maxpool3d", "maxpool3d.py", "reference.py: maxpool3d_forward_reference", POOL_CASES,
        outputs=("y", "argmax"))
def check_maxpool3d_forward(case, dtype, width, rng):
    x, expected, expected_argmax = pool_forward(case, dtype, rng)
    ours, argmax = np.empty(expected.shape, dtype), np.empty_like(expected_argmax)
    maxpool3d.maxpool3d_forward(x, *case.kernel, *case.stride, ours, argmax)
    return [("y", ours, expected, 0), ("argmax", argmax, expected_argmax, 0)]


def overlaps(case):
    """The most windows one input voxel lies in; (B) sums that many gradients there."""
    return math.prod(-(-k // s) for k, s in zip(case.kernel, case.stride))


@checks("maxpool3d_backward", "maxpool3d", "maxpool3d.py", "reference.py: maxpool3d_backward_reference", POOL_CASES)
def check_maxpool3d_backward(case, dtype, width, rng):
    x, y, argmax = pool_forward(case, dtype, rng)
    grad_output = normal(rng, y.shape, dtype)
    ours, expected = np.zeros_like(x), np.zeros(x.shape)
    maxpool3d.maxpool3d_backward(grad_output, argmax, *case.kernel, *case.stride, ours)
    reference.maxpool3d_backward_reference(*widen(grad_output), argmax, *case.kernel, *case.stride, expected)
    return [(None, ours, expected, overlaps(case) - 1)]           # one addition per extra window


@checks("maxpool3d_backward_tiled", "maxpool3d", "maxpool3d.py", "reference.py: maxpool3d_backward_reference",
        TILED_POOL_CASES)
def check_maxpool3d_backward_tiled(case, dtype, width, rng):
    x, y, argmax = pool_forward(case, dtype, rng)
    grad_output = normal(rng, y.shape, dtype)
    ours, expected = np.full_like(x, np.nan), np.zeros(x.shape)   # NaN: every element must be written
    maxpool3d.maxpool3d_backward_tiled(grad_output, argmax, *case.kernel, ours)
    reference.maxpool3d_backward_reference(*widen(grad_output), argmax, *case.kernel, *case.stride, expected)
    return [(None, ours, expected, 0)]
