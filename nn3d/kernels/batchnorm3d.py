"""Batch-normalisation kernels on flat channels-last memory: arrays of shape (P, C), P = N*D*H*W.

The layer (nn3d/batchnorm3d.py) derives the formulas; each kernel below names the line it computes.
All four are memory-bound: the statistics and the backward reductions read their inputs once, the
normalisation and the input gradient read once and write once. They take flat (P, C) arrays and
per-channel coefficient vectors, so a later fused BN+ReLU kernel can reuse them unchanged.

Reductions split the P rows into fixed chunks of ROWS_PER_CHUNK rows; each `prange` iteration owns
one chunk and writes its own row of a (chunks, C) float64 partial-sum array, which NumPy then sums
in a fixed order. The result therefore does not depend on the number of threads.

    batchnorm_statistics(x)                                  -> sum_p x, sum_p x^2        (C,) float64
    batchnorm_affine(x, scale, shift, y)                     y = x * scale + shift        (P, C)
    batchnorm_backward_reduce(x, grad_output, mean)          -> sum_p dy, sum_p dy (x - mean)  (C,) float64
    batchnorm_backward_input(x, grad_output, mean, scale, mean_dy, k, grad_input)
                                                             dx = scale (dy - mean_dy - (x - mean) k)

Each has a plain NumPy `*_reference` with the same variable names; tests compare the pairs.
"""
import numpy as np
from numba import prange

from .jit import parallel_kernel

ROWS_PER_CHUNK = 2048


def num_chunks(rows):
    return (rows + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK


# ---- statistics: (S1), (S2) in the layer's derivation ----------------------------------------------
@parallel_kernel
def _statistics_kernel(x, partial_sum, partial_sum_sq):
    """partial_sum[t, c] = sum of x[p, c] over chunk t's rows; partial_sum_sq likewise for x^2."""
    rows, channels = x.shape
    for t in prange(partial_sum.shape[0]):
        start = t * ROWS_PER_CHUNK
        stop = min(start + ROWS_PER_CHUNK, rows)
        for p in range(start, stop):
            for c in range(channels):
                value = np.float64(x[p, c])
                partial_sum[t, c] += value
                partial_sum_sq[t, c] += value * value


def batchnorm_statistics(x):
    """x: (P, C) float32/float64 C-contiguous. Returns (sum_p x[p, c], sum_p x[p, c]^2), each (C,) float64."""
    chunks = num_chunks(x.shape[0])
    partial_sum = np.zeros((chunks, x.shape[1]), np.float64)      # (chunks, C)
    partial_sum_sq = np.zeros((chunks, x.shape[1]), np.float64)   # (chunks, C)
    _statistics_kernel(x, partial_sum, partial_sum_sq)
    return partial_sum.sum(axis=0), partial_sum_sq.sum(axis=0)


def batchnorm_statistics_reference(x):
    x = x.astype(np.float64)                                       # (P, C)
    return x.sum(axis=0), (x * x).sum(axis=0)


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


def batchnorm_affine_reference(x, scale, shift, y):
    y[...] = x * scale + shift


# ---- backward reductions: (B1) dbeta = sum dy, (B2) dgamma = sum dy * x_hat = inv_std * sum dy (x - mean)
@parallel_kernel
def _backward_reduce_kernel(x, grad_output, mean, partial_dy, partial_dy_xmu):
    rows, channels = x.shape
    for t in prange(partial_dy.shape[0]):
        start = t * ROWS_PER_CHUNK
        stop = min(start + ROWS_PER_CHUNK, rows)
        for p in range(start, stop):
            for c in range(channels):
                dy = np.float64(grad_output[p, c])
                partial_dy[t, c] += dy
                partial_dy_xmu[t, c] += dy * (np.float64(x[p, c]) - mean[c])


def batchnorm_backward_reduce(x, grad_output, mean):
    """x, grad_output: (P, C) same dtype; mean: (C,) float64.
    Returns (sum_p dy[p, c], sum_p dy[p, c] (x[p, c] - mean[c])), each (C,) float64."""
    chunks = num_chunks(x.shape[0])
    partial_dy = np.zeros((chunks, x.shape[1]), np.float64)        # (chunks, C)
    partial_dy_xmu = np.zeros((chunks, x.shape[1]), np.float64)    # (chunks, C)
    _backward_reduce_kernel(x, grad_output, mean, partial_dy, partial_dy_xmu)
    return partial_dy.sum(axis=0), partial_dy_xmu.sum(axis=0)


def batchnorm_backward_reduce_reference(x, grad_output, mean):
    dy = grad_output.astype(np.float64)                            # (P, C)
    return dy.sum(axis=0), (dy * (x.astype(np.float64) - mean)).sum(axis=0)


# ---- input gradient: (B3) dx = gamma inv_std (dy - mean_p dy - x_hat mean_p(dy x_hat)) ------------
@parallel_kernel
def batchnorm_backward_input(x, grad_output, mean, scale, mean_dy, k, grad_input):
    """grad_input[p, c] = scale[c] * (dy[p, c] - mean_dy[c] - (x[p, c] - mean[c]) * k[c]).

    Training: scale = gamma inv_std, mean_dy = sum(dy)/M, k = inv_std^2 sum(dy (x - mean))/M.
    Eval:     mean_dy = 0 and k = 0, leaving the affine scale dx = gamma inv_std dy.
    All (C,) vectors in x's dtype; x, grad_output, grad_input: (P, C).
    """
    rows, channels = x.shape
    for p in prange(rows):
        for c in range(channels):
            grad_input[p, c] = scale[c] * (grad_output[p, c] - mean_dy[c] - (x[p, c] - mean[c]) * k[c])


def batchnorm_backward_input_reference(x, grad_output, mean, scale, mean_dy, k, grad_input):
    grad_input[...] = scale * (grad_output - mean_dy - (x - mean) * k)
