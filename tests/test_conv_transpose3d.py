"""ConvTranspose3d against PyTorch, the fast (kernel == stride) path against the plain references,
and every gradient against central finite differences in float64."""
import numpy as np
import pytest
import torch

import nn3d
from nn3d import ConvTranspose3d
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.kernels import conv_transpose3d as kernels, reference
from nn3d.layout import from_channels_last, is_channels_last
from torch_reference import assert_matches_torch, load_into_torch

# float32 tolerance: each output or input gradient sums at most Cin*k^3 (or Cout*k^3) products and
# grad-weight sums over at most 2*7*9*11 voxels; rounding ~ eps * sqrt(length) ~ 6e-8 * 40 = 2.4e-6
# of the tensor's scale. 2e-5 allows for PyTorch's different summation order.
FLOAT32_TOLERANCE = 2e-5

# (batch, in_channels, out_channels, input size, kernel_size, stride, padding, channels-last input)
SHAPES = [
    (2, 4, 3, (3, 4, 5), 2, 2, 0, False),             # the U-Net's up-sampling (fast path), batch 2
    (1, 16, 8, (4, 4, 4), 2, 2, 0, True),             # fast path, U-Net-like channels
    (1, 1, 2, (4, 5, 3), 3, 2, 1, True),              # C = 1, general k=3 s=2 p=1
    (2, 5, 1, (7, 9, 11), 3, 1, 0, False),            # odd non-cubic, stride 1, Cout = 1
    (1, 3, 4, (3, 4, 5), (3, 2, 1), (2, 2, 1), (1, 0, 0), True),   # non-cubic kernel and stride
]


@pytest.mark.parametrize("batch, cin, cout, size, kernel, stride, padding, channels_last", SHAPES)
def test_conv_transpose3d_matches_torch(batch, cin, cout, size, kernel, stride, padding, channels_last):
    x = np.random.default_rng(0).standard_normal((batch, cin, *size)).astype(np.float32)
    if channels_last:
        x = from_channels_last(np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)))
    ours = assert_matches_torch(ConvTranspose3d(cin, cout, kernel, stride=stride, padding=padding),
                                torch.nn.ConvTranspose3d(cin, cout, kernel, stride=stride, padding=padding),
                                [x], FLOAT32_TOLERANCE)
    assert is_channels_last(ours["output"])


def test_blocks_kernels_match_references():
    """The kernel == stride fast path against the plain scatter/gather references (float64)."""
    rng = np.random.default_rng(2)
    kernel = (2, 3, 2)
    x = rng.standard_normal((2, 3, 2, 5, 4))                                 # (N, D, H, W, Cin)
    weight = rng.standard_normal((4, 6, *kernel))                            # (Cin, Cout, kD, kH, kW)
    bias = rng.standard_normal(6)
    y = kernels.conv_transpose3d_blocks_forward(x, weight, bias)
    np.testing.assert_allclose(
        y, reference.conv_transpose3d_forward_reference(x, weight, bias, kernel, (0, 0, 0)), rtol=0, atol=1e-12)
    grad_output = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        kernels.conv_transpose3d_blocks_grad_input(grad_output, weight, x.shape[:4]),
        reference.conv_transpose3d_grad_input_reference(grad_output, weight, kernel, (0, 0, 0)),
        rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        kernels.conv_transpose3d_blocks_grad_weight(x, grad_output, kernel, 6),
        reference.conv_transpose3d_grad_weight_reference(x, grad_output, kernel, kernel, (0, 0, 0)),
        rtol=0, atol=1e-11)


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1)])
def test_conv_transpose3d_finite_differences(kernel, stride, padding):
    rng = np.random.default_rng(3)
    layer = ConvTranspose3d(2, 3, kernel, stride=stride, padding=padding).to(np.float64)
    x = rng.standard_normal((1, 2, 2, 3, 2))
    results = check_layer(layer, [x])                     # input, weight, bias vs central differences
    assert [name for name, _, _ in results] == ["input", "weight", "bias"]
    for name, analytic, numeric in results:
        assert max_relative_error(analytic, numeric) < 1e-7, name


def test_bad_input_is_rejected():
    """ConvTranspose3d's own checks; the ones every layer shares are in test_bad_input.py."""
    layer = ConvTranspose3d(2, 3, 2, stride=2)
    with pytest.raises(ValueError, match="has 4 channels, expected 2"):
        layer.forward(np.zeros((1, 4, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="gives an empty output"):
        ConvTranspose3d(2, 3, 1, padding=1).forward(np.zeros((1, 2, 2, 2, 2), np.float32))


def test_state_dict_round_trip_with_torch():
    nn3d.manual_seed(4)
    layer = ConvTranspose3d(6, 4, 2, stride=2)
    assert layer.weight.shape == (6, 4, 2, 2, 2) and layer.bias.shape == (4,)
    bound = 1 / np.sqrt(4 * 8)                                    # fan_in = Cout * k^3, as PyTorch
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.8 * bound
    twin = load_into_torch(torch.nn.ConvTranspose3d(6, 4, 2, stride=2), layer)
    back = ConvTranspose3d(6, 4, 2, stride=2)
    back.load_state_dict({k: v.detach().numpy() for k, v in twin.state_dict().items()})
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)
