"""Winograd's filter transform, U = G along each axis of the filter (algorithm.py, section 2), in
the packed layout the kernels read, and grad-input's transform derived from the forward's.

The filter transform U is computed once per training step: forward computes it from the weights
(`filter_transform`) and keeps it for backward, where grad-input's kernel, the flipped and
in/out-swapped weights, has the transform U with its channels swapped and its points 0 and infinity
exchanged along each axis (`flipped_transposed_transform`).

Both run once per layer and step as parallel kernels writing the packed layout directly: at the
U-Net's 64- and 128-channel layers a one-thread transform would be a fifth to a third of their
short 16^3 and 8^3 passes on two threads (docs/performance.md).
"""
import numba
import numpy as np
from numba import prange

from ..jit import parallel_kernel, tile_helper
from ..register_tile import BLOCK_C
from .algorithm import POSITIONS_FLIPPED, TILE_VALUES


@tile_helper
def filter_points(g0, g1, g2):
    """(G g) along one axis: a 3-tap filter at the points 0, 1, -1, infinity, halved at +-1
    (algorithm.py, section 1)."""
    return g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2


@parallel_kernel
def filter_transform_kernel(weight, n_workers, u_packed):
    """u_packed[xi, cb, ci, c] = U[xi, 16cb + c, ci], with xi = (az*4 + ay)*4 + ax and U =
    filter_transform_reference(weight), computed in float64 (exact but for the final rounding) and
    stored in u_packed's dtype; zeros for the padding output channels. Work items (cb, ci), dealt to
    n_workers workers with their own float64 scratch, 16 output channels side by side in each: G
    along kx (along_x[i, j, ax, c]), then ky (along_y[i, ay, ax, c]), then kz
    (algorithm.py, section 2: the order does not matter)."""
    cout, cin = weight.shape[:2]
    n_cblocks = u_packed.shape[1]
    for worker in prange(n_workers):
        along_x = np.empty((3, 3, 4, BLOCK_C))
        along_y = np.empty((3, 4, 4, BLOCK_C))
        for item in range(worker, n_cblocks * cin, n_workers):
            cb, ci = item // cin, item % cin
            channels = min(BLOCK_C, cout - cb * BLOCK_C)
            along_x[:, :, :, channels:] = 0                             # the padding channels
            for c in range(channels):
                co = cb * BLOCK_C + c
                for i in range(3):
                    for j in range(3):
                        along_x[i, j, 0, c], along_x[i, j, 1, c], along_x[i, j, 2, c], along_x[i, j, 3, c] = \
                            filter_points(np.float64(weight[co, ci, i, j, 0]), np.float64(weight[co, ci, i, j, 1]),
                                          np.float64(weight[co, ci, i, j, 2]))
            for i in range(3):
                for ax in range(4):
                    for c in range(BLOCK_C):
                        along_y[i, 0, ax, c], along_y[i, 1, ax, c], along_y[i, 2, ax, c], along_y[i, 3, ax, c] = \
                            filter_points(along_x[i, 0, ax, c], along_x[i, 1, ax, c], along_x[i, 2, ax, c])
            for ay in range(4):
                for ax in range(4):
                    for c in range(BLOCK_C):
                        u0, u1, u2, u3 = filter_points(along_y[0, ay, ax, c], along_y[1, ay, ax, c],
                                                       along_y[2, ay, ax, c])
                        u_packed[ay * 4 + ax, cb, ci, c] = u0
                        u_packed[16 + ay * 4 + ax, cb, ci, c] = u1
                        u_packed[32 + ay * 4 + ax, cb, ci, c] = u2
                        u_packed[48 + ay * 4 + ax, cb, ci, c] = u3


def filter_transform(weight):
    """Winograd's filter transform U = G g G^T along each axis (`filter_transform_reference`), packed
    for the kernels: weight (Cout, Cin, 3, 3, 3) -> u_packed (64, Cout_padded/16, Cin, 16) in the
    weight's dtype, u_packed[xi, cb, ci, c] = U[xi, 16cb + c, ci] (zeros for the padding channels):
    the 16 output channels one product step needs are adjacent."""
    cout, cin = weight.shape[:2]
    u_packed = np.empty((TILE_VALUES, -(-cout // BLOCK_C), cin, BLOCK_C), weight.dtype)
    filter_transform_kernel(weight, np.int64(numba.get_num_threads()), u_packed)
    return u_packed


@parallel_kernel
def flipped_transposed_kernel(u_packed, positions_flipped, u_flipped):
    """u_flipped[xi, cb, co, c] = u_packed[positions_flipped[xi], co // 16, 16cb + c, co % 16], zeros
    past Cin: one gather. Work items (xi, cb)."""
    cin = u_packed.shape[2]
    n_cblocks, cout = u_flipped.shape[1:3]
    for item in prange(TILE_VALUES * n_cblocks):
        xi, cb = item // n_cblocks, item % n_cblocks
        source = positions_flipped[xi]
        for co in range(cout):
            for c in range(BLOCK_C):
                ci = cb * BLOCK_C + c
                u_flipped[xi, cb, co, c] = u_packed[source, co // BLOCK_C, ci, co % BLOCK_C] if ci < cin else 0


def flipped_transposed_transform(u_packed, cout):
    """The packed filter transform of grad-input's kernel from the forward's (`filter_transform`;
    the derivation is at `flipped_transposed_transform_reference`): u_packed (64, Cout_padded/16,
    Cin, 16) of a layer with Cout output channels -> (64, Cin_padded/16, Cout, 16), U' = U with the
    points 0 and infinity exchanged along each axis and the channel matrices transposed."""
    cin = u_packed.shape[2]
    u_flipped = np.empty((TILE_VALUES, -(-cin // BLOCK_C), cout, BLOCK_C), u_packed.dtype)
    flipped_transposed_kernel(u_packed, POSITIONS_FLIPPED, u_flipped)
    return u_flipped
