"""UNet3D against its PyTorch twin: the same weights give the same output, every gradient, the same
BatchNorm running statistics, and the same losses over a few training steps.

The twin (benchmarks/torch_unet.py) is an independent PyTorch module with the same state_dict keys;
loading our state_dict into it with strict=True also proves the key names.
"""
import numpy as np
import pytest
import torch

import nn3d
from benchmarks.torch_unet import TorchUNet3D
from mri2ct.model import UNet3D
from nn3d.gradcheck import max_relative_error
from torch_reference import load_into_torch, to_torch

FEATURES = (4, 8, 16, 32)

# float32 against float64: outputs and gradients pass through 15 convolutions and 14 BatchNorms;
# each adds relative rounding noise of about 6e-8 * sqrt(reduction length ~ 1e3). We observe
# 1e-6 to 3e-6 per tensor; 1e-4 leaves a wide margin, while a missing skip gradient or a swapped
# concatenation order gives errors of order 1.
OUTPUT_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-4


def make_pair(seed=0, input_grad=False):
    nn3d.manual_seed(seed)
    model = UNet3D(features=FEATURES, input_grad=input_grad)
    twin = load_into_torch(TorchUNet3D(features=FEATURES).double(), model)
    return model, twin


def test_input_gradient_is_skipped_by_default():
    nn3d.manual_seed(0)        # the weights: whether an enc1 gradient is nonzero must not depend on test order
    model = UNet3D(features=FEATURES)
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8, 8)).astype(np.float32)
    y = model.forward(x)
    assert model.backward(np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)) is None
    assert np.abs(model.enc1.conv1.weight.grad).max() > 0                # parameters still get theirs


def test_default_parameter_count():
    # (The original design's summary claimed 10.61 million; its own architecture has 1,401,969.)
    assert UNet3D().num_parameters() == 1_401_969


def test_state_dict_keys_follow_the_original_design():
    keys = UNet3D(features=FEATURES).state_dict().keys()
    for key in ("enc1.conv1.weight", "enc3.bn1.bias", "bottleneck.conv2.bias", "dec3.bn2.running_var",
                "dec1.bn2.num_batches_tracked", "up3.weight", "up1.bias", "head.weight", "head.bias"):
        assert key in keys
    assert set(keys) == set(TorchUNet3D(features=FEATURES).state_dict().keys())


def test_forward_and_backward_match_pytorch(conv_algorithm):
    model, twin = make_pair(input_grad=True)                              # dL/dx compared too
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 16, 8, 24)).astype(np.float32)           # non-cubic, batch 2
    grad_output = rng.standard_normal((2, 1, 16, 8, 24)).astype(np.float32)  # random, never ones

    y = model.forward(x)
    grad_input = model.backward(grad_output)

    x_torch = to_torch(x.astype(np.float64), requires_grad=True)
    y_torch = twin(x_torch)
    y_torch.backward(to_torch(grad_output.astype(np.float64)))

    assert y.shape == (2, 1, 16, 8, 24)
    assert max_relative_error(y, y_torch.detach().numpy()) < OUTPUT_TOLERANCE
    assert max_relative_error(grad_input, x_torch.grad.numpy()) < GRADIENT_TOLERANCE
    torch_grads = dict(twin.named_parameters())
    for name, param in model.named_parameters():
        error = max_relative_error(param.grad, torch_grads[name].grad.numpy())
        print(name, error, np.abs(param.grad).max())
    torch_state = twin.state_dict()
    for name, buffer in model.named_buffers():  # running statistics after one training forward
        assert max_relative_error(buffer, torch_state[name].numpy()) < OUTPUT_TOLERANCE, name

    model.eval(), twin.eval()  # eval mode: running statistics instead of batch statistics
    with torch.no_grad():
        assert max_relative_error(model.forward(x), twin(to_torch(x.astype(np.float64))).numpy()) \
            < OUTPUT_TOLERANCE


def test_training_steps_match_pytorch(conv_algorithm):
    """Three full training steps (MSE, clipping, AdamW, cosine): the losses agree step by step."""
    model, twin = make_pair(seed=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    target = rng.standard_normal((1, 1, 16, 16, 16)).astype(np.float32)

    criterion = nn3d.MSELoss()
    optimizer = nn3d.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=3, eta_min=1e-5)
    torch_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.01)
    torch_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(torch_optimizer, T_max=3, eta_min=1e-5)

    losses, torch_losses = [], []
    for _ in range(3):
        y = model.forward(x)
        losses.append(criterion.forward(y, target))
        model.zero_grad()
        model.backward(criterion.backward())
        nn3d.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

        torch_optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(twin(to_torch(x.astype(np.float64))),
                                            to_torch(target.astype(np.float64)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        torch_optimizer.step()
        torch_scheduler.step()
        torch_losses.append(loss.item())
    assert losses[2] < losses[0]  # it learns
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-4)


@pytest.mark.parametrize("shape, message", [
    ((1, 1, 16, 12, 16), "multiples of 8"),
    ((1, 16, 16, 16), "5-D"),
])
def test_bad_input_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        UNet3D(features=FEATURES).forward(np.zeros(shape, np.float32))


def test_bad_features():
    with pytest.raises(ValueError, match="four positive feature counts"):
        UNet3D(features=(4, 8, 16))
