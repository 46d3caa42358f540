"""BatchNorm3d: forward, running statistics and every gradient against PyTorch (train and eval),
finite differences in float64, kernels against their NumPy references, bad input."""
import numpy as np
import pytest
import torch

from nn3d import BatchNorm3d
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.kernels import batchnorm3d as kernels, reference
from nn3d.layout import from_channels_last, is_channels_last
from torch_reference import assert_matches_torch, load_into_torch

# float32 tolerances. The output is x_hat * gamma + beta with |x_hat| ~ 1..4: a few float32 roundings,
# ~ 1e-7 relative, so 2e-6. The gradients are sums over M <= 1400 voxels; we sum in float64, PyTorch
# in float32 (error ~ eps * sqrt(M) ~ 6e-8 * 40 = 2.4e-6), and dx subtracts two means from dy
# (cancellation up to ~10x): 5e-5.
OUTPUT_TOLERANCE = 2e-6
GRAD_TOLERANCE = 5e-5

SHAPES = [(2, 3, 7, 9, 11),   # odd, non-cubic, batch 2
          (1, 1, 4, 5, 6),    # C = 1, batch 1
          (2, 16, 4, 4, 4)]   # the U-Net's first width


def make_pair(channels, rng):
    """An nn3d BatchNorm3d with random gamma, beta and its torch twin (weights via state_dict)."""
    ours = BatchNorm3d(channels)
    ours.weight.data[...] = rng.uniform(0.5, 1.5, channels)
    ours.bias.data[...] = rng.standard_normal(channels)
    return ours, load_into_torch(torch.nn.BatchNorm3d(channels), ours)


def random_input(shape, rng, channels_last=False):
    """Gaussian input with a per-channel offset and scale (mean 3, std 2), float32."""
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    return from_channels_last(np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))) if channels_last else x


@pytest.mark.parametrize("shape", SHAPES)
def test_train_mode_matches_torch(shape):
    rng = np.random.default_rng(1)
    ours, theirs = make_pair(shape[1], rng)
    x = random_input(shape, rng, channels_last=shape[1] == 16)
    result = assert_matches_torch(ours, theirs, [x], GRAD_TOLERANCE, output=OUTPUT_TOLERANCE)
    assert is_channels_last(result["output"]) and is_channels_last(result["grad_input"])


def test_running_statistics_and_eval_mode_match_torch():
    """Three training steps (different batches), then eval forward and backward, as PyTorch."""
    rng = np.random.default_rng(2)
    shape = (2, 3, 5, 6, 7)
    ours, theirs = make_pair(3, rng)
    for step in range(3):
        x = random_input(shape, rng) * (step + 1)
        ours.forward(x)
        theirs(torch.from_numpy(x))
    # running_* follow (1 - m) r + m stat: float32 rounding of a few multiply-adds, 1e-6.
    assert max_relative_error(ours.running_mean, theirs.running_mean.numpy()) < 1e-6
    assert max_relative_error(ours.running_var, theirs.running_var.numpy()) < 1e-6
    assert ours.num_batches_tracked.dtype == np.int64 and ours.num_batches_tracked.shape == ()
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3

    ours.eval()
    theirs.eval()
    x = random_input(shape, rng)
    assert_matches_torch(ours, theirs, [x], GRAD_TOLERANCE, output=OUTPUT_TOLERANCE,
                         grad_input=OUTPUT_TOLERANCE)                    # eval dL/dx: a pure scale, no sums
    assert int(ours.num_batches_tracked) == 3, "eval mode must not update the running statistics"


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_finite_differences_float64(training, relu):
    rng = np.random.default_rng(3)
    layer = BatchNorm3d(3, relu=relu).to(np.float64)
    layer.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    layer.bias.data[...] = rng.standard_normal(3)
    layer.running_mean[...] = rng.standard_normal(3)
    layer.running_var[...] = rng.uniform(0.5, 2.0, 3)
    layer.train(training)
    x = rng.standard_normal((2, 3, 3, 4, 5))
    for name, analytic, numeric in check_layer(layer, [x]):
        assert max_relative_error(analytic, numeric) < 1e-7, name


@pytest.mark.parametrize("relu", [False, True])
def test_kernels_match_references(relu):
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        x = (1 + rng.standard_normal((5000, 3))).astype(dtype)
        grad_output = rng.standard_normal((5000, 3)).astype(dtype)
        mean = rng.standard_normal(3)
        scale, shift, mean_dy, x_hat_coefficient = (rng.standard_normal(3).astype(dtype) for _ in range(4))
        y, y_ref = np.empty_like(x), np.empty_like(x)
        kernels.batchnorm_affine(x, scale, shift, relu, y)
        reference.batchnorm_affine_reference(x, scale, shift, relu, y_ref)
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
        assert (y == 0).any() == relu                                  # the ReLU did (not) act
        grad_input, grad_input_ref = np.empty_like(x), np.empty_like(x)
        kernels.batchnorm_backward_input(x, grad_output, y, relu, mean.astype(dtype), scale, mean_dy,
                                         x_hat_coefficient, grad_input)
        reference.batchnorm_backward_input_reference(x, grad_output, y, relu, mean.astype(dtype), scale,
                                                     mean_dy, x_hat_coefficient, grad_input_ref)
        np.testing.assert_allclose(grad_input, grad_input_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
def test_whole_layer_reference_matches_the_layer_and_torch(relu):
    """reference.batchnorm3d_reference, the layer in fifteen lines, against BatchNorm3d (float64: the
    same formulas summed in another order, 1e-12) and against PyTorch's autograd (float64)."""
    rng = np.random.default_rng(7)
    shape = (2, 3, 4, 5, 6)                                              # (N, C, D, H, W)
    layer = BatchNorm3d(3, relu=relu).to(np.float64)
    layer.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    layer.bias.data[...] = rng.standard_normal(3)
    x = 3 + 2 * rng.standard_normal(shape)
    grad_output = rng.standard_normal(shape)
    flat = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 4, 1)).reshape(-1, 3)   # (P, C)
    y, grad_input, grad_gamma, grad_beta = reference.batchnorm3d_reference(
        flat(x), layer.weight.data, layer.bias.data, flat(grad_output), layer.eps, relu)
    ours = {"output": flat(layer.forward(x)), "grad_input": flat(layer.backward(grad_output)),
            "grad_gamma": layer.weight.grad, "grad_beta": layer.bias.grad}
    x_torch = torch.from_numpy(x).requires_grad_(True)
    twin = load_into_torch((BatchNormReLU(3) if relu else torch.nn.BatchNorm3d(3)).double(), layer)
    y_torch = twin(x_torch)
    y_torch.backward(torch.from_numpy(grad_output))
    theirs = {"output": flat(y_torch.detach().numpy()), "grad_input": flat(x_torch.grad.numpy()),
              "grad_gamma": twin.weight.grad.numpy(), "grad_beta": twin.bias.grad.numpy()}
    if relu:
        assert (y == 0).any()                                            # the ReLU acted
    for name, value in zip(ours, (y, grad_input, grad_gamma, grad_beta)):
        assert max_relative_error(value, ours[name]) < 1e-12, f"{name} vs the layer"
        assert max_relative_error(value, theirs[name]) < 1e-12, f"{name} vs PyTorch"


class BatchNormReLU(torch.nn.BatchNorm3d):
    """torch's BatchNorm3d then ReLU, with BatchNorm3d's parameters and keys (the fused layer's twin)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


@pytest.mark.parametrize("training", [True, False])
def test_fused_relu_matches_torch(training):
    """BatchNorm3d(relu=True) = torch BatchNorm3d -> ReLU: output, dL/dx, dgamma, dbeta, running stats."""
    rng = np.random.default_rng(6)
    ours = BatchNorm3d(16, relu=True)
    ours.weight.data[...] = rng.uniform(0.5, 1.5, 16)
    ours.bias.data[...] = rng.standard_normal(16)
    theirs = load_into_torch(BatchNormReLU(16), ours)
    ours.train(training)
    theirs.train(training)
    x = random_input((2, 16, 5, 6, 7), rng, channels_last=True)
    assert_matches_torch(ours, theirs, [x], GRAD_TOLERANCE, output=OUTPUT_TOLERANCE)
    assert max_relative_error(ours.running_mean, theirs.running_mean.numpy()) < 1e-6


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(5)
    layer = BatchNorm3d(2)
    x = random_input((2, 2, 3, 3, 3), rng)
    grad_output = rng.standard_normal(x.shape).astype(np.float32)
    layer.forward(x)
    layer.backward(grad_output)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    with pytest.raises(ValueError, match="backward called before"):   # backward consumed the cache
        layer.backward(grad_output)
    layer.forward(x)
    layer.backward(grad_output)
    np.testing.assert_allclose(layer.weight.grad, 2 * once[0], rtol=1e-6)
    np.testing.assert_allclose(layer.bias.grad, 2 * once[1], rtol=1e-6)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_state_dict_keys_match_torch():
    ours, theirs = BatchNorm3d(4), torch.nn.BatchNorm3d(4)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].shape == tuple(value.shape), key


def test_bad_input():
    """BatchNorm3d's own checks; the ones every layer shares are in test_bad_input.py."""
    layer = BatchNorm3d(3)
    with pytest.raises(ValueError, match="has 2 channels, expected 3"):
        layer.forward(np.zeros((1, 2, 2, 2, 2), np.float32))
    with pytest.raises(TypeError, match="float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((1, 3, 2, 2, 2), np.float64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.forward(np.zeros((1, 3, 1, 1, 1), np.float32))
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        BatchNorm3d(0)
