"""MaxPool3d: output and gradient against PyTorch (Gaussian input and ReLU output full of exact ties),
overlapping windows, floor sizes, finite differences, kernels against references, bad input."""
import numpy as np
import pytest
import torch

from nn3d import MaxPool3d
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.kernels import maxpool3d as kernels, reference
from nn3d.layout import is_channels_last, to_channels_last
from torch_reference import assert_matches_torch

# (input shape, kernel_size, stride)
CASES = [((2, 3, 7, 9, 11), 2, None),             # odd sizes: floor drops the last plane/row/column
         ((1, 1, 4, 5, 6), 2, None),              # C = 1
         ((2, 16, 4, 4, 4), 2, 2),                # the U-Net's pooling
         ((1, 2, 7, 6, 9), 3, 2),                 # overlapping windows: stride < kernel
         ((2, 2, 5, 7, 6), (2, 3, 1), (1, 2, 1))]  # anisotropic, overlapping along d


def relu_output(shape, rng):
    """ReLU of Gaussian noise: about half the entries are exact zeros, so all-zero windows tie."""
    return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)


@pytest.mark.parametrize("source", ["gaussian", "relu"])
@pytest.mark.parametrize("shape, kernel_size, stride", CASES)
def test_matches_torch(shape, kernel_size, stride, source):
    # Max pooling selects values and adds the gradients routed to one voxel (at most a few, when
    # windows overlap): exact selection, float32 sums of <= 8 terms, so 1e-6 (in practice 0).
    rng = np.random.default_rng(0)
    x = relu_output(shape, rng) if source == "relu" else rng.standard_normal(shape).astype(np.float32)
    ours = assert_matches_torch(MaxPool3d(kernel_size, stride), torch.nn.MaxPool3d(kernel_size, stride), [x],
                                1e-6, output=0)
    assert is_channels_last(ours["output"]) and is_channels_last(ours["grad_input"])


def test_ties_go_to_the_first_maximum_in_scan_order():
    x = np.zeros((1, 1, 2, 2, 2), np.float32)
    x[0, 0, 1, 0, 1] = 5.0
    x[0, 0, 1, 1, 0] = 5.0                       # a second, later maximum: must get nothing
    layer = MaxPool3d(2)
    layer.forward(x)
    grad_input = layer.backward(np.full((1, 1, 1, 1, 1), 3.0, np.float32))
    expected = np.zeros_like(x)
    expected[0, 0, 1, 0, 1] = 3.0                # (kd, kh, kw) = (1, 0, 1) precedes (1, 1, 0)
    np.testing.assert_array_equal(grad_input, expected)
    layer.forward(np.zeros_like(x))
    grad_input = layer.backward(np.full((1, 1, 1, 1, 1), 3.0, np.float32))
    assert grad_input[0, 0, 0, 0, 0] == 3.0 and grad_input.sum() == 3.0, "all tied: the first voxel"


def test_finite_differences_float64():
    rng = np.random.default_rng(1)
    x = rng.permutation(480).astype(np.float64).reshape(2, 2, 4, 6, 5) / 10   # distinct: no ties
    for kernel_size, stride in ((2, None), (3, 2)):
        for name, analytic, numeric in check_layer(MaxPool3d(kernel_size, stride), [x.copy()]):
            assert max_relative_error(analytic, numeric) < 1e-8, name


def test_kernels_match_references():
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        x = to_channels_last(relu_output((2, 3, 5, 6, 7), rng).astype(dtype))     # (N, D, H, W, C)
        for (kernel_d, kernel_h, kernel_w), (stride_d, stride_h, stride_w) in (((2, 2, 2), (2, 2, 2)), ((3, 2, 2), (2, 1, 2))):
            out_shape = (2, (5 - kernel_d) // stride_d + 1, (6 - kernel_h) // stride_h + 1,
                         (7 - kernel_w) // stride_w + 1, 3)
            y, y_ref = np.empty(out_shape, dtype), np.empty(out_shape, dtype)
            argmax, argmax_ref = np.empty(out_shape, np.uint8), np.empty(out_shape, np.uint8)
            kernels.maxpool3d_forward(x, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w, y, argmax)
            reference.maxpool3d_forward_reference(x, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w, y_ref, argmax_ref)
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(argmax, argmax_ref)
            grad_output = rng.standard_normal(out_shape).astype(dtype)
            grad_input, grad_input_ref = np.zeros_like(x), np.zeros_like(x)
            kernels.maxpool3d_backward(grad_output, argmax, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w, grad_input)
            reference.maxpool3d_backward_reference(grad_output, argmax, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w, grad_input_ref)
            np.testing.assert_allclose(grad_input, grad_input_ref, rtol=1e-6, atol=1e-6)
            if (stride_d, stride_h, stride_w) == (kernel_d, kernel_h, kernel_w):   # windows tile x
                grad_input = np.full_like(x, np.nan)                       # every element must be written
                kernels.maxpool3d_backward_tiled(grad_output, argmax, kernel_d, kernel_h, kernel_w, grad_input)
                np.testing.assert_array_equal(grad_input, grad_input_ref)


def test_bad_input():
    """MaxPool3d's own checks; the ones every layer shares are in test_bad_input.py."""
    with pytest.raises(ValueError, match="smaller than the kernel"):
        MaxPool3d(2).forward(np.zeros((1, 1, 4, 1, 4), np.float32))
    with pytest.raises(ValueError, match="MaxPool3d: kernel_size and stride must be positive integers"):
        MaxPool3d(0)
    with pytest.raises(ValueError, match="MaxPool3d: stride must be an int or a tuple of 3 ints"):
        MaxPool3d(2, stride=(2, 2))
    with pytest.raises(ValueError, match="uint8 argmax"):
        MaxPool3d(7)
