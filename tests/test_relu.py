"""ReLU: forward and gradient against PyTorch (including exact zeros and NaN), finite differences,
kernels against references (bad input: test_bad_input.py)."""
import numpy as np
import pytest
import torch

from nn3d import ReLU
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.kernels import reference, relu as kernels
from nn3d.layout import is_channels_last
from torch_reference import assert_matches_torch

SHAPES = [(2, 3, 7, 9, 11), (1, 1, 4, 5, 6), (2, 16, 4, 4, 4)]


def input_with_zeros(shape, rng):
    """Gaussian float32 with a fifth of the entries exactly 0 (where the derivative convention matters)."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.2] = 0
    return x


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(shape):
    # ReLU selects or zeroes values: no arithmetic, so output and gradient must be bit-identical.
    rng = np.random.default_rng(0)
    x = input_with_zeros(shape, rng)
    ours = assert_matches_torch(ReLU(), torch.nn.ReLU(), [x], 0)
    assert np.all(ours["grad_input"][x == 0] == 0), "PyTorch's convention: gradient 0 at x = 0"
    assert is_channels_last(ours["output"]) and is_channels_last(ours["grad_input"])


def test_nan_propagates_like_torch():
    x = np.array([np.nan, -1.0, 2.0, 0.0], np.float32).reshape(1, 1, 1, 2, 2)
    y = ReLU().forward(x)
    np.testing.assert_array_equal(y, torch.relu(torch.from_numpy(x)).numpy())


def test_finite_differences_float64():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5            # keep away from the kink, where differences are meaningless
    for name, analytic, numeric in check_layer(ReLU(), [x]):
        assert max_relative_error(analytic, numeric) < 1e-8, name


def test_kernels_match_references():
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        x = input_with_zeros((1000,), rng).astype(dtype)
        grad_output = rng.standard_normal(1000).astype(dtype)
        y, y_ref = np.empty_like(x), np.empty_like(x)
        kernels.relu_forward(x, y)
        reference.relu_forward_reference(x, y_ref)
        np.testing.assert_array_equal(y, y_ref)
        grad_input, grad_input_ref = np.empty_like(x), np.empty_like(x)
        kernels.relu_backward(y, grad_output, grad_input)
        reference.relu_backward_reference(y, grad_output, grad_input_ref)
        np.testing.assert_array_equal(grad_input, grad_input_ref)
