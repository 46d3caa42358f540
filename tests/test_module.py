"""Module, Sequential and Parameter: state_dict keys and round trips with PyTorch, load_state_dict
errors naming the key, zero_grad, gradient accumulation, train/eval, to(float64)."""
import numpy as np
import pytest
import torch

from nn3d import BatchNorm3d, Conv3d, Module, Parameter, ReLU, Sequential
from torch_reference import load_into_torch


def network():
    return Sequential(Conv3d(2, 3, 3, padding=1), BatchNorm3d(3), ReLU(), Conv3d(3, 1, 1))


def torch_network():
    return torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.BatchNorm3d(3), torch.nn.ReLU(),
                               torch.nn.Conv3d(3, 1, 1))


def test_state_dict_keys_shapes_and_round_trip_with_torch():
    ours, theirs = network(), torch_network()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].shape == tuple(value.shape), key
    load_into_torch(theirs, ours)                                  # nn3d -> torch
    back = network()
    back.load_state_dict(theirs.state_dict())                      # torch -> nn3d (tensors accepted)
    for (key, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=key)
        assert a.dtype == b.dtype, key


def test_state_dict_returns_copies():
    model = network()
    state = model.state_dict()
    state["1.running_mean"][...] = 7
    assert not model[1].running_mean.any()


def test_load_state_dict_errors_name_the_key():
    model = network()
    state = model.state_dict()
    del state["1.running_var"]
    with pytest.raises(ValueError, match=r"missing key\(s\): 1\.running_var"):
        model.load_state_dict(state)
    model.load_state_dict(state, strict=False)                     # non-strict: missing is fine
    state = model.state_dict()
    state["9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"unexpected key\(s\): 9\.weight"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["0.weight"] = np.zeros((3, 2, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(3, 2, 3, 3, 2\) in the state dict "
                                         r"but \(3, 2, 3, 3, 3\) in the model"):
        model.load_state_dict(state)


def test_zero_grad_and_gradient_accumulation():
    """Two forward + backward passes on one batch add up (2x); zero_grad resets every gradient."""
    rng = np.random.default_rng(0)
    model = network()
    x = rng.standard_normal((2, 2, 4, 3, 5)).astype(np.float32)
    grad_output = rng.standard_normal((2, 1, 4, 3, 5)).astype(np.float32)
    model.forward(x)
    model.backward(grad_output)
    once = {name: p.grad.copy() for name, p in model.named_parameters()}
    model.forward(x)
    model.backward(grad_output)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-5, atol=1e-7, err_msg=name)
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def test_train_and_eval_modes():
    rng = np.random.default_rng(1)
    model = network()
    x = rng.standard_normal((2, 2, 3, 3, 3)).astype(np.float32)
    model.eval()
    assert not any(module.training for _, module in model.named_modules())
    model.forward(x)
    assert int(model[1].num_batches_tracked) == 0 and not model[1].running_mean.any()
    model.train()
    assert all(module.training for _, module in model.named_modules())
    model.forward(x)
    assert int(model[1].num_batches_tracked) == 1 and model[1].running_mean.any()


def test_to_float64():
    rng = np.random.default_rng(2)
    model = network().to(np.float64)
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64, name
    assert model[1].running_mean.dtype == np.float64 and model[1].running_var.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64, "the counter stays an integer"
    y = model.forward(rng.standard_normal((1, 2, 3, 3, 3)))
    assert y.dtype == np.float64
    assert model.backward(np.ones_like(y)).dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64, not float16"):
        model.to(np.float16)


def test_sequential_and_parameter_basics():
    model = network()
    assert len(model) == 4 and isinstance(model[1], BatchNorm3d)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                               "3.weight", "3.bias"]
    assert model.num_parameters() == 3 * 2 * 27 + 3 + 3 + 3 + 3 + 1
    p = Parameter(np.arange(3))                                    # integers become float32
    assert p.data.dtype == np.float32 and p.grad.shape == (3,) and not p.grad.any()

    class Broken(Module):
        def __init__(self):
            self.weight = Parameter(np.zeros(1))

    with pytest.raises(AttributeError, match="must call super"):
        Broken()
    with pytest.raises(NotImplementedError, match="does not implement forward"):
        Module().forward(np.zeros(1))
