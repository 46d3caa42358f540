"""ConvTranspose3d against PyTorch, the fast (kernel == stride) path against the plain references,
and every gradient against central finite differences in float64."""
import numpy as np
import pytest
import torch

import nn3d
from nn3d import ConvTranspose3d
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.kernels import conv_transpose3d as kernels, reference
from nn3d.kernels.conv3d_grad_weight import conv3d_grad_weight_work_items
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
    (2, 17, 1, (3, 2, 5), 3, 3, 0, True),            # fast path k = s = 3, Cin 17, Cout 1, batch 2
    (1, 1, 17, (3, 5, 9), (2, 1, 3), (2, 1, 3), 0, False),   # fast path, non-cubic k = s, Cin 1, Cout 17
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


# (batch, in_channels, out_channels, input size, kernel == stride) for the fast path's kernels:
# odd and non-cubic sizes (W = 9 and 13 use the 8-wide tiles, then the 4-wide and single tails),
# channel counts below, at and above 16 and 8 (register tiles of 16 channels and of 8 / 4 channels)
BLOCK_SHAPES = [
    (2, 17, 17, (3, 2, 9), (2, 2, 2)),
    (1, 1, 1, (2, 3, 5), (3, 3, 3)),
    (2, 12, 33, (1, 3, 13), (2, 1, 3)),
    (1, 40, 16, (3, 1, 4), (1, 2, 2)),
]


@pytest.mark.parametrize("block_w", [8, 4])
@pytest.mark.parametrize("batch, cin, cout, size, kernel", BLOCK_SHAPES)
def test_blocks_kernels_match_references(batch, cin, cout, size, kernel, block_w):
    """The kernel == stride fast path, at both register-tile widths (whatever this CPU uses), against
    the plain scatter/gather references in float64: only the order of the sums differs, so 1e-12."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, *size, cin))                             # (N, D, H, W, Cin)
    weight = rng.standard_normal((cin, cout, *kernel))                       # (Cin, Cout, kD, kH, kW)
    bias = rng.standard_normal(cout)
    y = kernels.conv_transpose3d_blocks_forward(x, weight, bias, block_w)
    np.testing.assert_allclose(
        y, reference.conv_transpose3d_forward_reference(x, weight, bias, kernel, (0, 0, 0)), rtol=0, atol=1e-12)
    grad_output = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        kernels.conv_transpose3d_blocks_grad_input(grad_output, weight, x.shape[:4], block_w),
        reference.conv_transpose3d_grad_input_reference(grad_output, weight, kernel, (0, 0, 0)),
        rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        kernels.conv_transpose3d_blocks_grad_weight(x, grad_output, kernel, block_w),
        reference.conv_transpose3d_grad_weight_reference(x, grad_output, kernel, kernel, (0, 0, 0)),
        rtol=0, atol=1e-11)


def test_blocks_grad_weight_is_the_same_on_any_thread_count(on_one_and_two_threads):
    """Grad-weight's chunks come from the shapes, and their partial sums are added in chunk order:
    the same bits on 1 thread and 2. (A split by thread count, or a race, changes the last bits.)"""
    rng = np.random.default_rng(5)
    layer = ConvTranspose3d(16, 16, 2, stride=2)
    x = rng.standard_normal((1, 16, 4, 8, 8), dtype=np.float32)              # (N, Cin, D, H, W)
    grad_output = rng.standard_normal((1, 16, 8, 16, 16), dtype=np.float32)
    assert conv3d_grad_weight_work_items((1, 4, 8, 8, 16), (2, 2, 2), (2, 2, 2)) > 1   # several partial sums

    def grad_weight():
        layer.zero_grad()
        layer.forward(x)
        layer.backward(grad_output)
        return layer.weight.grad.copy()

    one, two = on_one_and_two_threads(grad_weight)
    np.testing.assert_array_equal(one, two)


def test_blocks_grad_weight_has_work_for_32_cores_on_the_unet():
    """Every up-convolution of the 64^3 and 128^3 U-Net splits grad-weight into >= 32 work items
    (Conv3d's grad-weight with x in the place of its output gradient: its rows are x's)."""
    for size in (64, 128):
        for cin, in_size in ((128, size // 8), (64, size // 4), (32, size // 2)):
            assert conv3d_grad_weight_work_items((1, *[in_size] * 3, cin), (2, 2, 2), (2, 2, 2)) >= 32


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
