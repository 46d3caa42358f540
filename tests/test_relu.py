"""ReLU: forward and gradient against PyTorch (including exact zeros and NaN), finite differences,
kernels against references, bad input."""
import numpy as np
import pytest
import torch

from nn3d import ReLU
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.kernels import reference, relu as kernels
from torch_reference import run_torch

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
    grad_output = rng.standard_normal(shape).astype(np.float32)
    layer = ReLU()
    y = layer.forward(x)
    grad_input = layer.backward(grad_output)
    y_ref, (grad_input_ref,), _ = run_torch(torch.nn.ReLU(), [x], grad_output)
    assert max_relative_error(y, y_ref) == 0
    assert max_relative_error(grad_input, grad_input_ref) == 0
    assert np.all(grad_input[x == 0] == 0), "PyTorch's convention: gradient 0 at x = 0"
    assert y.transpose(0, 2, 3, 4, 1).flags.c_contiguous and grad_input.transpose(0, 2, 3, 4, 1).flags.c_contiguous


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


def test_bad_input():
    layer = ReLU()
    with pytest.raises(ValueError, match="before ReLU.forward"):
        layer.backward(np.zeros((1, 1, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="must be 5-D"):
        layer.forward(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(TypeError, match="float16"):
        layer.forward(np.zeros((1, 1, 2, 2, 2), np.float16))
    with pytest.raises(TypeError, match="int32"):
        layer.forward(np.zeros((1, 1, 2, 2, 2), np.int32))
    layer.forward(np.zeros((1, 2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="grad_output has shape"):
        layer.backward(np.zeros((1, 3, 2, 2, 2), np.float32))
