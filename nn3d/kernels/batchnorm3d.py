"""Batch-normalisation kernels on flat channels-last memory: arrays of shape (P, C), P = N*D*H*W.

The layer (nn3d/batchnorm3d.py) derives the formulas; each kernel below names the line it computes.
Both are memory-bound (one read, one write per element); the statistics (S1), (S2) and the
backward sums (B1), (B2) are nn3d/kernels/channel_sum.py's float64 reductions. Each kernel can apply
the ReLU that follows BatchNorm in the U-Net in the same pass ((R) in the layer file), so
BatchNorm + ReLU reads and writes each activation once instead of twice, in both directions.

    batchnorm_affine(x, scale, shift, relu, y)     y = x * scale + shift, then max(0, y) if relu
    batchnorm_backward_input(x, grad_output, output, relu, mean, scale, mean_dy, x_hat_coefficient, grad_input)
              dx = scale (dy - mean_dy - (x - mean) x_hat_coefficient), dy = grad_output [output > 0] if relu

Plain NumPy versions with the same names: nn3d/kernels/reference.py; tests compare the pairs.
"""
from numba import prange

from .jit import parallel_kernel


# ---- normalisation: (F) y = gamma * x_hat + beta = x * scale + shift, (R) then max(0, y) -----------
@parallel_kernel
def batchnorm_affine(x, scale, shift, relu, y):
    """y[p, c] = x[p, c] * scale[c] + shift[c], with scale = gamma * inv_std, shift = beta - mean * scale;
    with relu, y[p, c] = max(0, that) (a NaN stays NaN, as in ReLU).

    x, y: (P, C); scale, shift: (C,) in x's dtype. Each iteration owns one row of y.
    """
    rows, channels = x.shape
    for p in prange(rows):
        for c in range(channels):
            value = x[p, c] * scale[c] + shift[c]
            y[p, c] = 0 if relu and value <= 0 else value


# ---- input gradient: (B3) dx = gamma inv_std (dy - mean_p dy - x_hat mean_p(dy x_hat)) ------------
@parallel_kernel
def batchnorm_backward_input(x, grad_output, output, relu, mean, scale, mean_dy, x_hat_coefficient,
                             grad_input):
    """grad_input[p, c] = scale[c] * (dy[p, c] - mean_dy[c] - (x[p, c] - mean[c]) * x_hat_coefficient[c]),
    dy = grad_output, or with relu dy = grad_output where output > 0 and 0 elsewhere (ReLU's (B),
    output = the fused layer's output y).

    Training: scale = gamma inv_std, mean_dy = sum(dy)/M,
              x_hat_coefficient = inv_std sum(dy x_hat)/M = inv_std^2 sum(dy (x - mean))/M
              ((x - mean) x_hat_coefficient = x_hat mean(dy x_hat), the path through sigma2).
    Eval:     mean_dy = 0 and x_hat_coefficient = 0, leaving the affine scale dx = gamma inv_std dy.
    All (C,) vectors in x's dtype; x, grad_output, output, grad_input: (P, C) (output is not read
    without relu).
    """
    rows, channels = x.shape
    for p in prange(rows):
        for c in range(channels):
            dy = 0 if relu and not output[p, c] > 0 else grad_output[p, c]
            x_hat_term = (x[p, c] - mean[c]) * x_hat_coefficient[c]
            grad_input[p, c] = scale[c] * (dy - mean_dy[c] - x_hat_term)
