"""The register-tile vocabulary every convolution kernel speaks: how many output channels a tile
holds (BLOCK_C), how many voxels or positions wide it is on this CPU (BLOCK_W, BLOCK_J), unsigned
offset constants (UINT), and tiles of 4 and 8 accumulators (the 16-lane vector each accumulator is,
with its loads, stores and arithmetic: nn3d/kernels/simd.py).

Register tiles. Numba keeps scalars, tuples and vectors in registers, never arrays. A BLOCK_C-wide
slice of output channels is carried as one 16-lane vector (nn3d/kernels/simd.py: one AVX-512
register of float32, two AVX2 ones), and a tile of 4 (or 8) voxels x 16 channels as a tuple of 4
(or 8) such vectors, each an accumulator. Check with NUMBA_DUMP_ASSEMBLY=1: the inner loop of the
direct forward kernel is one vector load and eight `vfmadd231ps (mem){1to16}, zmm, zmm` on
AVX-512, two vector loads and eight `vfmadd231ps ymm` on AVX2.

Tile width per CPU. Numba compiles for the CPU it runs on (and keys its cache by CPU), so the tile
is chosen at import from the features Numba compiles for (`tile_width`): on AVX-512 (32 vector
registers of 16 floats) BLOCK_W = BLOCK_J = 8, i.e. 8 accumulators + the weights; on AVX2 (16
registers of 8 floats, e.g. the Zen 2 machines of docs/performance.md) 8 x 16 outputs would need all 16
registers for accumulators alone and spill, so BLOCK_W = BLOCK_J = 4 (8 accumulator registers).
The kernels take the width as an argument and contain both the 8-wide and the 4-wide loops (4 also
finishes rows after the 8-wide tiles), so the tests run both widths against the references on any
machine, and one compiled kernel serves both.

Unsigned offsets. UINT[q] is q as an unsigned 64-bit number: `at + UINT[q]` with `at` unsigned stays
unsigned, so the kernels index flat arrays without negative-index checks (`at + q` with a plain int
literal is signed, and those checks stop vectorisation).
"""
import numpy as np

from .jit import tile_helper
from .simd import fma16, load16, store16, store16_at


BLOCK_C = 16   # output channels per register tile: one AVX-512 (two AVX2) registers of float32


def tile_width(cpu_features):
    """Voxels (forward) or (kx, ci) positions (grad-weight) per register tile for a CPU whose LLVM
    feature string is `cpu_features`: 8 with AVX-512 (32 vector registers: 8 accumulators of 16
    floats + the weights fit), 4 without (AVX2's 16 registers of 8 floats: 4 x 16 outputs take 8,
    8 x 16 would take all 16 and spill)."""
    return 8 if "+avx512f" in cpu_features.split(",") else 4


def compiling_for():
    """The LLVM feature string Numba compiles for: NUMBA_CPU_FEATURES if set, else the host's."""
    from llvmlite import binding
    from numba.core import config

    return config.CPU_FEATURES or binding.get_host_cpu_features().flatten()


BLOCK_W = BLOCK_J = tile_width(compiling_for())   # chosen once per process, passed to the kernels
UINT = tuple(np.uint64(q) for q in range(BLOCK_C))  # unsigned constants: offset + UINT[q] stays unsigned


@tile_helper
def store4x16_at(flat, at, step, vectors):
    """flat[at + c*step : ... + 16] = vectors[c] for c = 0..3: four 16-channel vectors, `step` apart."""
    store16_at(flat, at, vectors[0])
    store16_at(flat, at + step, vectors[1])
    store16_at(flat, at + UINT[2] * step, vectors[2])
    store16_at(flat, at + UINT[3] * step, vectors[3])


def padded_channels(cout):
    """Cout rounded up to whole register tiles of BLOCK_C = 16 channels."""
    return -(-cout // BLOCK_C) * BLOCK_C


# ---- tiles of 4 and 8 accumulators -----------------------------------------------------------------
# A register tile is a tuple of 4 (or 8) accumulators, each a 16-lane vector. The transposed
# convolution's kernels, and the 4-wide tiles of the direct forward and grad-weight kernels, differ
# only in where the broadcast values and the 16-vectors come from; these helpers are the arithmetic
# they share (an 8-tile is two 4-tiles). LLVM inlines them: the loops are vector loads, broadcast
# FMAs and vector stores, as if the accumulators were written out (docs/performance.md).
@tile_helper
def load_tile4(matrix, i, step):
    """(matrix[i + q*step, 0:16] for q < 4): step 0 repeats one row (a bias, or zeros)."""
    return (load16(matrix, i), load16(matrix, i + step), load16(matrix, i + UINT[2] * step),
            load16(matrix, i + UINT[3] * step))


@tile_helper
def fma_tile4(tile, values, at, step, w):
    """tile[q] + values[at + q*step] * w for q < 4: w a 16-lane vector, each value broadcast."""
    return (fma16(tile[0], values[at], w), fma16(tile[1], values[at + step], w),
            fma16(tile[2], values[at + UINT[2] * step], w), fma16(tile[3], values[at + UINT[3] * step], w))


@tile_helper
def store_tile4(matrix, i, step, tile):
    """matrix[i + q*step, 0:16] = tile[q] for q < 4."""
    store16(matrix, i, tile[0])
    store16(matrix, i + step, tile[1])
    store16(matrix, i + UINT[2] * step, tile[2])
    store16(matrix, i + UINT[3] * step, tile[3])


@tile_helper
def load_tile8(matrix, i, step):
    """`load_tile4` for q < 8."""
    return load_tile4(matrix, i, step) + load_tile4(matrix, i + UINT[4] * step, step)


@tile_helper
def fma_tile8(tile, values, at, step, w):
    """`fma_tile4` for q < 8."""
    return fma_tile4(tile[:4], values, at, step, w) + fma_tile4(tile[4:], values, at + UINT[4] * step, step, w)


@tile_helper
def store_tile8(matrix, i, step, tile):
    """`store_tile4` for q < 8."""
    store_tile4(matrix, i, step, tile[:4])
    store_tile4(matrix, i + UINT[4] * step, step, tile[4:])
