"""F(4^3, 3^3)'s filter transform, U = G4 along each axis of the filter (algorithm4.py, section 2), in
the packed layout convolution4.py's kernel reads: u_packed[xi, cb, ci, c] = U[xi, 16cb + c, ci].

It runs at every inference forward (the weights, and a folded BatchNorm's scale, may have changed
since the last), so it is a parallel kernel: G4 along one axis is 10 operations per line of three
taps (`filter_points4`), 63 lines per channel pair (9 along x, 18 along y, 36 along z), computed in
float64 on 16 output channels side by side and rounded once into the weight's dtype.
"""
import numba
import numpy as np
from numba import prange

from ..jit import parallel_kernel, tile_helper
from ..register_tile import BLOCK_C
from .algorithm4 import TILE_VALUES_4

SIXTH, TWENTY_FOURTH = 1.0 / 6.0, 1.0 / 24.0


@tile_helper
def filter_points4(g0, g1, g2):
    """(G4 g) along one axis: the 3-tap filter at the points 0, 1, -1, 2, -2, infinity, each divided
    by its Lagrange denominator 4, -6, -6, 24, 24, 1 (algorithm4.py, section 1)."""
    outer = g0 + g2                                   # g(1) and g(-1) share g0 + g2
    far = g0 + 4.0 * g2                               # g(2) and g(-2) share g0 + 4 g2
    return (g0 * 0.25, (outer + g1) * -SIXTH, (outer - g1) * -SIXTH, (far + 2.0 * g1) * TWENTY_FOURTH,
            (far - 2.0 * g1) * TWENTY_FOURTH, g2)


@parallel_kernel
def filter_transform4_kernel(weight, n_workers, u_packed):
    """u_packed[xi, cb, ci, c] = U[xi, 16cb + c, ci] with U = filter_transform4_reference(weight),
    computed in float64, zeros for the padding output channels. Work items (cb, ci), dealt to
    n_workers workers with their own float64 scratch: G4 along kx (along_x[i, j, ax, c]), then ky
    (along_y[i, ay, ax, c]), then kz, the 16 channels c innermost."""
    cout, cin = weight.shape[:2]
    n_cblocks = u_packed.shape[1]
    for worker in prange(n_workers):
        taps = np.zeros((3, 3, 3, BLOCK_C))
        along_x = np.empty((3, 3, 6, BLOCK_C))
        along_y = np.empty((3, 6, 6, BLOCK_C))
        for item in range(worker, n_cblocks * cin, n_workers):
            cb, ci = item // cin, item % cin
            channels = min(BLOCK_C, cout - cb * BLOCK_C)
            taps[:, :, :, channels:] = 0                             # the padding channels
            for c in range(channels):
                for i in range(3):
                    for j in range(3):
                        for k in range(3):
                            taps[i, j, k, c] = weight[cb * BLOCK_C + c, ci, i, j, k]
            for i in range(3):
                for j in range(3):
                    for c in range(BLOCK_C):
                        (along_x[i, j, 0, c], along_x[i, j, 1, c], along_x[i, j, 2, c], along_x[i, j, 3, c],
                         along_x[i, j, 4, c], along_x[i, j, 5, c]) = filter_points4(taps[i, j, 0, c], taps[i, j, 1, c],
                                                                                    taps[i, j, 2, c])
            for i in range(3):
                for ax in range(6):
                    for c in range(BLOCK_C):
                        (along_y[i, 0, ax, c], along_y[i, 1, ax, c], along_y[i, 2, ax, c], along_y[i, 3, ax, c],
                         along_y[i, 4, ax, c], along_y[i, 5, ax, c]) = filter_points4(
                            along_x[i, 0, ax, c], along_x[i, 1, ax, c], along_x[i, 2, ax, c])
            for ay in range(6):
                for ax in range(6):
                    xi = ay * 6 + ax
                    for c in range(BLOCK_C):
                        (u_packed[xi, cb, ci, c], u_packed[36 + xi, cb, ci, c], u_packed[72 + xi, cb, ci, c],
                         u_packed[108 + xi, cb, ci, c], u_packed[144 + xi, cb, ci, c],
                         u_packed[180 + xi, cb, ci, c]) = filter_points4(along_y[0, ay, ax, c], along_y[1, ay, ax, c],
                                                                         along_y[2, ay, ax, c])


def filter_transform4(weight):
    """F(4^3, 3^3)'s filter transform, packed: weight (Cout, Cin, 3, 3, 3) -> u_packed
    (216, Cout_padded/16, Cin, 16) in the weight's dtype (the padding channels zero)."""
    cout, cin = weight.shape[:2]
    u_packed = np.empty((TILE_VALUES_4, -(-cout // BLOCK_C), cin, BLOCK_C), weight.dtype)
    filter_transform4_kernel(weight, np.int64(numba.get_num_threads()), u_packed)
    return u_packed
