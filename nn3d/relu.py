"""ReLU: the rectified linear unit, elementwise.

Forward, for every element i of x (N, C, D, H, W):
    y_i = max(0, x_i)                                                             (F)  (N, C, D, H, W)
Backward: dy_i/dx_i = 1 if x_i > 0, else 0 (at x_i = 0 the function has no derivative; PyTorch
takes 0, and so do we), hence
    dL/dx_i = dL/dy_i * [x_i > 0] = dL/dy_i * [y_i > 0]                           (B)  (N, C, D, H, W)
since y_i > 0 exactly when x_i > 0. Backward therefore needs only the output y, which exists anyway
(the next layer holds it): saving a reference costs no memory, unlike a separate mask. (Do not modify
a layer's output in place before calling backward.)

NaN propagates forward as in PyTorch; its gradient is 0. Kernels: nn3d/kernels/relu.py; plain NumPy
references: relu_forward_reference, relu_backward_reference in nn3d/kernels/reference.py.
"""
from .core import arena
from .checks import check_forward_ran, check_grad_output, check_volume
from .grad_mode import is_grad_enabled
from .kernels.relu import relu_backward, relu_forward
from .layout import from_channels_last, to_channels_last
from .module import Module


class ReLU(Module):
    """ReLU(): y = max(0, x), as torch.nn.ReLU."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        check_volume(x, "ReLU")
        x_cl = to_channels_last(x)                                   # (N, D, H, W, C)
        y_cl = arena.empty_like(x_cl)                                 # (N, D, H, W, C)
        relu_forward(x_cl.reshape(-1), y_cl.reshape(-1))             # (F)
        self._cache = y_cl if is_grad_enabled() else None
        return from_channels_last(y_cl)                              # (N, C, D, H, W) view

    # forward:  y = max(0, x)
    # backward: dL/dx = dL/dy * [y > 0]      (B)
    def backward(self, grad_output):
        check_forward_ran(self._cache, "ReLU")
        y_cl = self._cache                                           # (N, D, H, W, C)
        check_grad_output(grad_output, from_channels_last(y_cl).shape, y_cl.dtype, "ReLU")
        self._cache = None                                           # consumed
        grad_output_cl = to_channels_last(grad_output)               # (N, D, H, W, C)
        grad_input = arena.empty_like(y_cl)                           # (N, D, H, W, C)
        relu_backward(y_cl.reshape(-1), grad_output_cl.reshape(-1), grad_input.reshape(-1))   # (B)
        return from_channels_last(grad_input)                        # (N, C, D, H, W) view
