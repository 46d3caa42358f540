"""ReLU kernels on flat arrays (any memory order; the layer passes channels-last blocks .reshape(-1)).

    relu_forward(x, y)                      y_i = max(0, x_i)            (F) of nn3d/relu.py
    relu_backward(y, grad_output, grad_input)   grad_input_i = grad_output_i [y_i > 0]   (B)

One pass over memory each, split across threads (NumPy's np.where needs a temporary mask and one
thread, about 6x slower here). `0 if x <= 0 else x` keeps a NaN (NaN <= 0 is False), as PyTorch does.
Plain NumPy references with the same names: nn3d/kernels/reference.py; tests compare the pairs.
"""
from numba import prange

from .jit import parallel_kernel


@parallel_kernel
def relu_forward(x, y):
    """x, y: (size,) same dtype. Each iteration owns y[i]."""
    for i in prange(x.shape[0]):
        value = x[i]
        y[i] = 0 if value <= 0 else value


@parallel_kernel
def relu_backward(y, grad_output, grad_input):
    """y, grad_output, grad_input: (size,) same dtype. Each iteration owns grad_input[i]."""
    for i in prange(y.shape[0]):
        grad_input[i] = grad_output[i] if y[i] > 0 else 0
