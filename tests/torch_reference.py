"""The PyTorch side of the tests, imported one way everywhere: `from torch_reference import ...`.

`assert_matches_torch` is the one layer-vs-PyTorch comparison (nn3d.gradcheck.torch_comparison
runs both on the same input and the same random upstream gradient); each layer test is one call.
"""
import numpy as np
import torch

from nn3d.gradcheck import max_relative_error, torch_comparison


def to_torch(array, requires_grad=False):
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.requires_grad_(requires_grad)


def load_into_torch(torch_module, nn3d_module):
    """Copy an nn3d module's state_dict into the torch twin (keys and shapes must match exactly)."""
    state = {key: torch.from_numpy(np.ascontiguousarray(value))
             for key, value in nn3d_module.state_dict().items()}
    torch_module.load_state_dict(state, strict=True)
    return torch_module


def assert_matches_torch(layer, torch_module, inputs, tolerance, seed=0, **tolerances):
    """Assert that `layer` and `torch_module` agree on the output and every gradient, each within
    `tolerance` (max relative error, see nn3d.gradcheck.max_relative_error), or within
    tolerances[name] for the tensors named there (output, grad_input, grad_weight, grad_bias, ...).
    Returns {name: our array} (output, grad_input, ...) for further checks."""
    ours = {}
    for name, our_array, torch_array in torch_comparison(layer, torch_module, inputs, seed):
        key = name.replace(" ", "_")
        assert np.shape(our_array) == np.shape(torch_array), f"{key}: shape {np.shape(our_array)} " \
                                                           f"vs torch's {np.shape(torch_array)}"
        error = max_relative_error(our_array, torch_array)
        assert error <= tolerances.get(key, tolerance), f"{key}: max relative error {error:.2e}"
        ours[key] = our_array
    unused = set(tolerances) - set(ours)
    assert not unused, f"tolerances for tensors that were not compared: {unused}"
    return ours
