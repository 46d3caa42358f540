"""The one float64 reduction: per-channel sums over the rows of a flat channels-last array.

    channel_sums(a)           -> sum_p a[p, c]                                       (C,) float64
    channel_sums(a, b, shift) -> (sum_p a[p, c], sum_p a[p, c] (b[p, c] - shift[c]))  each (C,) float64
    channel_sums(a, b, shift, mask): the same sums over the p with mask[p, c] > 0 only

a, b: (P, C) C-contiguous, one dtype (an (N, D, H, W, C) activation seen as P = N*D*H*W rows).
Every sum over voxels in nn3d goes through here:
    BatchNorm statistics (S1), (S2)     channel_sums(x, x, 0)        -> sum x, sum x^2
    BatchNorm backward (B1), (B2)       channel_sums(dy, x, mean)    -> sum dy, sum dy (x - mean)
      with its ReLU fused (R)           channel_sums(dy, x, mean, y) -> the same with dy [y > 0]
    Conv bias gradient (5)              channel_sums(dy)             -> sum dy
    MSELoss (F)                         channel_sums(e, e, 0) with e = pred - target, one channel

Why float64. float32 keeps 24 bits; adding 64^3 = 2^18 values loses up to 18 of them to rounding
(about 3 of its 7 significant digits). Each term is widened to float64 first (x^2 of a float32 is
exact there), so the sums are good to ~1e-13 relative.

Why fixed chunks. The P rows are cut into chunks of ROWS_PER_CHUNK rows; each `prange` iteration
owns one chunk and writes its own row of a (chunks, C) float64 array of partial sums, which NumPy
then adds in a fixed order. The chunks depend only on P, never on the thread count, so the result
is bit-for-bit the same on 1 thread or 64.

Why 4096 rows. Big enough that a chunk's fixed costs (its partial row, the loop start, the final
sum over chunks) vanish next to its 4096 * C loads; small enough that a 64^3 volume gives 64 chunks,
which keeps every core busy on any machine we run on, and that the partial sums stay a few KiB.
Smaller chunks gain nothing: 2048 rows time the same as 4096 (docs/performance.md).

The plain NumPy versions are `channel_sums_reference` in nn3d/kernels/reference.py.
"""
import numpy as np
from numba import prange

from .jit import parallel_kernel

ROWS_PER_CHUNK = 4096


@parallel_kernel
def _channel_sums_kernel(a, b, shift, with_product, mask, masked, partial_a, partial_ab):
    """partial_a[t, c] = sum of a[p, c] over chunk t's rows; partial_ab[t, c] likewise for
    a[p, c] (b[p, c] - shift[c]) when with_product (else partial_ab is left alone). float64.
    When masked, a[p, c] counts only where mask[p, c] > 0 (a ReLU's output: its gradient mask)."""
    rows, channels = a.shape
    for t in prange(partial_a.shape[0]):
        start = t * ROWS_PER_CHUNK
        stop = min(start + ROWS_PER_CHUNK, rows)
        if with_product:
            for p in range(start, stop):
                for c in range(channels):
                    value = np.float64(a[p, c]) if not masked or mask[p, c] > 0 else 0.0
                    partial_a[t, c] += value
                    partial_ab[t, c] += value * (np.float64(b[p, c]) - shift[c])
        else:
            for p in range(start, stop):
                for c in range(channels):
                    partial_a[t, c] += a[p, c]


def channel_sums(a, b=None, shift=None, mask=None):
    """sum_p a[p, c], and with b also sum_p a[p, c] (b[p, c] - shift[c]) (shift: (C,), default 0);
    with b and mask, both over the p where mask[p, c] > 0 only.
    a, b, mask: (P, C) C-contiguous arrays of one dtype. Returns (C,) float64 arrays."""
    chunks = (a.shape[0] + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    channels = a.shape[1]
    partial_a = np.zeros((chunks, channels), np.float64)                   # (chunks, C)
    with_product = b is not None
    partial_ab = np.zeros((chunks if with_product else 0, channels), np.float64)   # (chunks, C)
    shift = np.zeros(channels, np.float64) if shift is None else np.asarray(shift, np.float64)
    masked = mask is not None
    _channel_sums_kernel(a, a if b is None else b, shift, with_product, mask if masked else a, masked,
                         partial_a, partial_ab)
    if not with_product:
        return partial_a.sum(axis=0)                                        # fixed order
    return partial_a.sum(axis=0), partial_ab.sum(axis=0)
