"""Batch-normalisation kernels on flat channels-last memory: arrays of shape (P, C), P = N*D*H*W.

The layer (nn3d/batchnorm3d.py) derives the formulas; each kernel below names the line it computes.
Both are memory-bound (one read, one write per element); the statistics (S1), (S2) and the
backward sums (B1), (B2) are nn3d/kernels/channel_sum.py's float64 reductions. They take flat
(P, C) arrays and per-channel coefficient vectors, so a fused BN+ReLU kernel could reuse them.

    batchnorm_affine(x, scale, shift, y)                     y = x * scale + shift        (P, C)
    batchnorm_backward_input(x, grad_output, mean, scale, mean_dy, x_hat_coefficient, grad_input)
                                         dx = scale (dy - mean_dy - (x - mean) x_hat_coefficient)

Plain NumPy versions with the same names: nn3d/kernels/reference.py; tests compare the pairs.
"""
from numba import prange

from .jit import parallel_kernel


# ---- normalisation: (F) y = gamma * x_hat + beta = x * scale + shift --------------------------------
@parallel_kernel
def batchnorm_affine(x, scale, shift, y):
    """y[p, c] = x[p, c] * scale[c] + shift[c], with scale = gamma * inv_std, shift = beta - mean * scale.

    x, y: (P, C); scale, shift: (C,) in x's dtype. Each iteration owns one row of y.
    """
    rows, channels = x.shape
    for p in prange(rows):
        for c in range(channels):
            y[p, c] = x[p, c] * scale[c] + shift[c]


# ---- input gradient: (B3) dx = gamma inv_std (dy - mean_p dy - x_hat mean_p(dy x_hat)) ------------
@parallel_kernel
def batchnorm_backward_input(x, grad_output, mean, scale, mean_dy, x_hat_coefficient, grad_input):
    """grad_input[p, c] = scale[c] * (dy[p, c] - mean_dy[c] - (x[p, c] - mean[c]) * x_hat_coefficient[c]).

    Training: scale = gamma inv_std, mean_dy = sum(dy)/M,
              x_hat_coefficient = inv_std sum(dy x_hat)/M = inv_std^2 sum(dy (x - mean))/M
              ((x - mean) x_hat_coefficient = x_hat mean(dy x_hat), the path through sigma2).
    Eval:     mean_dy = 0 and x_hat_coefficient = 0, leaving the affine scale dx = gamma inv_std dy.
    All (C,) vectors in x's dtype; x, grad_output, grad_input: (P, C).
    """
    rows, channels = x.shape
    for p in prange(rows):
        for c in range(channels):
            x_hat_term = (x[p, c] - mean[c]) * x_hat_coefficient[c]
            grad_input[p, c] = scale[c] * (grad_output[p, c] - mean_dy[c] - x_hat_term)

