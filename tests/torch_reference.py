"""The PyTorch "gold" side of the comparisons: run a torch module on the same input and the same
random upstream gradient, return everything as float64 NumPy arrays."""
import numpy as np
import torch


def to_torch(array, requires_grad=False):
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.requires_grad_(requires_grad)


def run_torch(module, inputs, grad_output):
    """Forward `inputs` (NumPy arrays) through `module`, backpropagate `grad_output`.

    Returns (output, [grad of each input], {parameter name: grad}), all float64 NumPy arrays.
    The loss is sum(output * grad_output), so d loss / d output = grad_output.
    """
    tensors = [to_torch(x, requires_grad=True) for x in inputs]
    output = module(*tensors)
    output.backward(to_torch(grad_output))
    grads_in = [t.grad.double().numpy() for t in tensors]
    grads_params = {name: p.grad.double().numpy() for name, p in module.named_parameters()}
    return output.detach().double().numpy(), grads_in, grads_params


def load_into_torch(torch_module, nn3d_module):
    """Copy an nn3d module's state_dict into the torch twin (keys and shapes must match exactly)."""
    state = {key: torch.from_numpy(np.ascontiguousarray(value))
             for key, value in nn3d_module.state_dict().items()}
    torch_module.load_state_dict(state, strict=True)
    return torch_module
