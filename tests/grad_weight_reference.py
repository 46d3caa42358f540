"""The truths the grad-weight kernels are tested against, imported one way everywhere:
`from grad_weight_reference import ...` (tests/test_winograd_grad_weight.py,
tests/test_winograd4_grad_weight.py)."""
import numpy as np
import torch

from nn3d.kernels import reference
from nn3d.kernels.padding import pad_channels_last
from torch_reference import to_torch

ONES = (1, 1, 1)


def direct_reference(x, grad_output):
    """Line (4) of nn3d/conv3d.py plainly (kernels/reference.py), for a 3x3x3, padding-1 kernel."""
    return reference.conv3d_grad_weight_reference(pad_channels_last(x, ONES), grad_output, (3, 3, 3), ONES)


def random_pair(rng, batch, cin, cout, size, dtype=np.float64):
    """x (N, D, H, W, Cin) and grad_output (N, D, H, W, Cout), standard normal."""
    return (rng.standard_normal((batch, *size, cin)).astype(dtype),
            rng.standard_normal((batch, *size, cout)).astype(dtype))


def torch_grad_weight(x, grad_output):
    """PyTorch's dL/dweight for the same convolution (NCDHW tensors from our channels-last arrays)."""
    x_t, g_t = (to_torch(a.transpose(0, 4, 1, 2, 3)) for a in (x, grad_output))
    return torch.nn.grad.conv3d_weight(x_t, (grad_output.shape[4], x.shape[4], 3, 3, 3), g_t,
                                       padding=1).numpy()
