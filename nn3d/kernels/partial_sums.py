"""The fixed-order sum of per-chunk partial results, in parallel.

A kernel that sums over voxels (a grad-weight) splits the voxels into chunks fixed by the shapes and
writes one partial result per chunk, partial[chunk] (n_chunks, M, 16). Adding them in
the order chunk 0, 1, 2, ... makes the result the same bits on any thread count. Here each `prange`
iteration owns one 16-value row m of the result and adds that row of every chunk in that order, so
the threads share the work without changing the order of any sum.
"""
from numba import prange

from .jit import parallel_kernel


@parallel_kernel
def add_partial_sums(partial, total):
    """total[m, c] = (...((partial[0, m, c] + partial[1, m, c]) + partial[2, m, c]) + ...):
    partial (n_chunks, M, 16), total (M, 16). Each prange iteration owns one row total[m]."""
    n_chunks, n_rows, width = partial.shape
    for m in prange(n_rows):
        for c in range(width):
            total[m, c] = partial[0, m, c]
        for chunk in range(1, n_chunks):
            for c in range(width):
                total[m, c] += partial[chunk, m, c]
