"""Loss kernel: the float64 sum of squared differences behind MSELoss (nn3d/loss.py, line (F)).

    sum_squared_difference(pred, target) = sum_i (pred_i - target_i)^2      pred, target: (size,) flat

float32 has 24 bits: summing 64^3 = 262144 squares in float32 would lose ~log2(262144) = 18 of them,
so each chunk of CHUNK elements sums in float64, one prange iteration per chunk (its own slot of
`partial`), and NumPy adds the partial sums in a fixed order (independent of the thread count).
"""
import numpy as np
from numba import prange

from .jit import parallel_kernel

CHUNK = 16384


@parallel_kernel
def _sum_squared_difference_kernel(pred, target, partial):
    size = pred.shape[0]
    for t in prange(partial.shape[0]):
        acc = 0.0
        for i in range(t * CHUNK, min((t + 1) * CHUNK, size)):
            diff = np.float64(pred[i]) - np.float64(target[i])
            acc += diff * diff
        partial[t] = acc


def sum_squared_difference(pred, target):
    """pred, target: 1-D C-contiguous arrays of one dtype and length. Returns a Python float."""
    partial = np.zeros((pred.shape[0] + CHUNK - 1) // CHUNK, np.float64)   # (chunks,)
    _sum_squared_difference_kernel(pred, target, partial)
    return float(partial.sum())


def sum_squared_difference_reference(pred, target):
    diff = pred.astype(np.float64) - target.astype(np.float64)
    return float(np.sum(diff * diff))
