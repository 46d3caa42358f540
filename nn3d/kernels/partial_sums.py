"""Adding up per-chunk partial results in a fixed order, in parallel.

A kernel that reduces over many voxels (a weight gradient sums over every voxel of the volume) is
split into chunks of voxels fixed by the shapes alone: each parallel work item owns one chunk and
writes its own partial result, partial[chunk]. The result is then

    total[i] = (...((partial[0, i] + partial[1, i]) + partial[2, i]) + ...) + partial[chunks - 1, i]

always in this order, so it is bit-for-bit the same on 1 thread or 64 (which threads computed the
chunks does not matter). Done by NumPy (`total = partial[0].copy(); total += partial[c]` for each
chunk) it would run on one core, a serial part that caps the speed-up of the short 8^3 grad-weight
passes (docs/performance.md). Every element's sum is independent, so here the elements are split
across the threads.
"""
import numpy as np
from numba import prange

from ..core import arena
from .jit import parallel_kernel

WORK_ITEMS = 32   # parallel work items every grad-weight call has at least (when it has that many rows)


@parallel_kernel
def sum_partials_kernel(partial, total):
    """total[i, j] = sum over chunks of partial[chunk, i, j], chunk 0 first. partial (chunks, I, J),
    total (I, J); each prange iteration owns one row total[i]."""
    n_chunks, n_rows, n_columns = partial.shape
    for i in prange(n_rows):
        for j in range(n_columns):
            total[i, j] = partial[0, i, j]
        for chunk in range(1, n_chunks):
            for j in range(n_columns):
                total[i, j] += partial[chunk, i, j]


def sum_partials(partial):
    """partial (chunks, ...) -> its sum over the first axis (shape partial.shape[1:]), in the fixed
    order chunk 0, 1, 2, ...; the elements are shared between the threads."""
    total = arena.empty(partial.shape[1:], partial.dtype)
    rows = partial.shape[1] if partial.ndim > 2 else 1
    sum_partials_kernel(np.ascontiguousarray(partial).reshape(partial.shape[0], rows, -1),
                        total.reshape(rows, -1))
    return total
