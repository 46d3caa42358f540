"""nn3d.no_grad(): identical outputs (the U-Net in eval mode: within float32 rounding, its BatchNorms
folded into the convolutions), no cache kept by any layer, a clear error for backward after it,
and the flag restored on exit (also after an exception) and across nesting.

The network covers every layer that keeps a cache: Conv3d (stride 1 and 2), ConvTranspose3d,
BatchNorm3d (training and eval mode), ReLU, MaxPool3d, Concat (inside the U-Net) and MSELoss."""
import numpy as np
import pytest

import nn3d
from mri2ct.model import UNet3D
from nn3d import (BatchNorm3d, Conv3d, ConvTranspose3d, MaxPool3d, MSELoss, ReLU, Sequential)
from nn3d.gradcheck import max_relative_error


def network():
    nn3d.manual_seed(0)
    return Sequential(Conv3d(2, 4, 3, padding=1), BatchNorm3d(4), ReLU(), MaxPool3d(2),
                      Conv3d(4, 4, 3, stride=2, padding=1), ConvTranspose3d(4, 3, 2, stride=2))


def caches(model):
    return {name: module._cache for name, module in model.named_modules() if hasattr(module, "_cache")}


def volume(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("training", [True, False])
def test_outputs_identical_and_no_cache_kept(training):
    model = network().train(training)
    x = volume((1, 2, 8, 10, 6), 0)
    with nn3d.no_grad():
        y_no_grad = model.forward(x)
    assert all(cache is None for cache in caches(model).values())
    y = model.forward(x)                              # the same batch, caches kept this time
    assert all(cache is not None for cache in caches(model).values())
    np.testing.assert_array_equal(y_no_grad, y)


def test_unet_and_loss_keep_nothing():
    nn3d.manual_seed(0)
    model, criterion = UNet3D(features=(2, 2, 2, 2)).eval(), MSELoss()
    x, target = volume((1, 1, 8, 8, 8), 1), volume((1, 1, 8, 8, 8), 2)
    y = model.forward(x)
    loss = criterion.forward(y, target)
    with nn3d.no_grad():
        y_no_grad = model.forward(x)                  # drops the caches the forward above kept
        loss_no_grad = criterion.forward(y_no_grad, target)
    assert caches(model) and all(cache is None for cache in caches(model).values())
    assert criterion._cache is None
    # In eval mode under no_grad the U-Net's blocks fold each BatchNorm into its convolution
    # (nn3d/batchnorm_folding.py): the same function, computed in another order, so the two differ
    # by float32 rounding (~1e-7 of the output's scale); 1e-5 leaves room, a wrong fold is order 1.
    assert max_relative_error(y_no_grad, y) < 1e-5
    assert abs(loss_no_grad - loss) <= 1e-5 * abs(loss)


def test_backward_after_no_grad_forward_raises():
    model = network()
    x = volume((1, 2, 8, 8, 8), 3)
    model.forward(x)
    with nn3d.no_grad():
        y = model.forward(x)                          # the earlier caches are gone too
    grad_output = volume(y.shape, 4)
    with pytest.raises(ValueError, match=r"ConvTranspose3d.backward called before .*no_grad"):
        model.backward(grad_output)
    with nn3d.no_grad(), pytest.raises(ValueError, match="before ConvTranspose3d.forward"):
        model.backward(grad_output)
    with pytest.raises(ValueError, match="before MSELoss.forward"):
        criterion = MSELoss()
        with nn3d.no_grad():
            criterion.forward(y, y)
        criterion.backward()


def test_backward_works_again_after_the_block():
    """After a no_grad forward, forward + backward give the gradients of a model that never saw the
    block (the same seeded weights; training mode, so the running statistics the first forward
    moved do not enter)."""
    x = volume((1, 2, 8, 8, 8), 5)
    model, fresh = network(), network()
    with nn3d.no_grad():
        model.forward(x)
    grad_output = volume(model.forward(x).shape, 6)
    grad_input = model.backward(grad_output)
    fresh.forward(x)
    np.testing.assert_array_equal(grad_input, fresh.backward(grad_output))
    for (name, parameter), (_, expected) in zip(model.named_parameters(), fresh.named_parameters()):
        np.testing.assert_array_equal(parameter.grad, expected.grad, err_msg=name)


def test_flag_restored_after_exception_and_nesting():
    assert nn3d.is_grad_enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with nn3d.no_grad():
            assert not nn3d.is_grad_enabled()
            raise RuntimeError("inside")
    assert nn3d.is_grad_enabled()
    with nn3d.no_grad():
        with nn3d.no_grad():
            assert not nn3d.is_grad_enabled()
        assert not nn3d.is_grad_enabled()
    assert nn3d.is_grad_enabled()
