"""The register-tile vocabulary every convolution kernel speaks: how many output channels a tile
holds (BLOCK_C), how many voxels or positions wide it is on this CPU (BLOCK_W, BLOCK_J), unsigned
offset constants (UINT), and the 16-lane loads, stores and arithmetic on tiles.

Register tiles. Numba keeps scalars and tuples in registers, never arrays. A BLOCK_C-wide slice of
output channels is therefore carried as a tuple of 16 numbers; the SLP vectoriser turns the 16
scalar operations of `fma16` into one AVX-512 vector FMA (float32; two on AVX2). The helpers are
inlined into the kernels by LLVM (check with NUMBA_DUMP_ASSEMBLY=1: the inner loop of the direct
forward kernel is one vector load and eight `vfmadd231ps (mem){1to16}, zmm, zmm`).

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

from .jit import inlined_tile_helper, tile_helper


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
def load16(matrix, i):
    """matrix[i, 0:16] as a tuple (a register tile). With `i` unsigned (or a loop counter LLVM
    knows is >= 0) there are no negative-index checks and the 16 loads become one vector load."""
    return (matrix[i, 0], matrix[i, 1], matrix[i, 2], matrix[i, 3], matrix[i, 4], matrix[i, 5],
            matrix[i, 6], matrix[i, 7], matrix[i, 8], matrix[i, 9], matrix[i, 10], matrix[i, 11],
            matrix[i, 12], matrix[i, 13], matrix[i, 14], matrix[i, 15])


@tile_helper
def fma16(acc, value, w):
    """acc + value * w, element-wise on 16-tuples."""
    return (acc[0] + value * w[0], acc[1] + value * w[1], acc[2] + value * w[2], acc[3] + value * w[3],
            acc[4] + value * w[4], acc[5] + value * w[5], acc[6] + value * w[6], acc[7] + value * w[7],
            acc[8] + value * w[8], acc[9] + value * w[9], acc[10] + value * w[10], acc[11] + value * w[11],
            acc[12] + value * w[12], acc[13] + value * w[13], acc[14] + value * w[14],
            acc[15] + value * w[15])


@tile_helper
def load16_at(flat, at):
    """flat[at:at + 16] as a 16-tuple; `at` unsigned and every offset an unsigned constant (at + 1
    with a plain int literal would be signed, with negative-index checks that stop vectorisation)."""
    return (flat[at], flat[at + UINT[1]], flat[at + UINT[2]], flat[at + UINT[3]], flat[at + UINT[4]],
            flat[at + UINT[5]], flat[at + UINT[6]], flat[at + UINT[7]], flat[at + UINT[8]], flat[at + UINT[9]],
            flat[at + UINT[10]], flat[at + UINT[11]], flat[at + UINT[12]], flat[at + UINT[13]],
            flat[at + UINT[14]], flat[at + UINT[15]])


@tile_helper
def store16_at(flat, at, v):
    """flat[at:at + 16] = the 16-tuple v (one vector store; `at` unsigned, offsets unsigned constants)."""
    flat[at], flat[at + UINT[1]], flat[at + UINT[2]], flat[at + UINT[3]] = v[0], v[1], v[2], v[3]
    flat[at + UINT[4]], flat[at + UINT[5]], flat[at + UINT[6]], flat[at + UINT[7]] = v[4], v[5], v[6], v[7]
    flat[at + UINT[8]], flat[at + UINT[9]], flat[at + UINT[10]], flat[at + UINT[11]] = v[8], v[9], v[10], v[11]
    flat[at + UINT[12]], flat[at + UINT[13]], flat[at + UINT[14]], flat[at + UINT[15]] = v[12], v[13], v[14], v[15]


@tile_helper
def add16(u, v):
    return (u[0] + v[0], u[1] + v[1], u[2] + v[2], u[3] + v[3], u[4] + v[4], u[5] + v[5], u[6] + v[6],
            u[7] + v[7], u[8] + v[8], u[9] + v[9], u[10] + v[10], u[11] + v[11], u[12] + v[12],
            u[13] + v[13], u[14] + v[14], u[15] + v[15])


@tile_helper
def sub16(u, v):
    return (u[0] - v[0], u[1] - v[1], u[2] - v[2], u[3] - v[3], u[4] - v[4], u[5] - v[5], u[6] - v[6],
            u[7] - v[7], u[8] - v[8], u[9] - v[9], u[10] - v[10], u[11] - v[11], u[12] - v[12],
            u[13] - v[13], u[14] - v[14], u[15] - v[15])


@tile_helper
def relu16(v):
    """max(0, v) element-wise on a 16-tuple; a NaN stays NaN (as ReLU)."""
    return (0 if v[0] <= 0 else v[0], 0 if v[1] <= 0 else v[1], 0 if v[2] <= 0 else v[2],
            0 if v[3] <= 0 else v[3], 0 if v[4] <= 0 else v[4], 0 if v[5] <= 0 else v[5],
            0 if v[6] <= 0 else v[6], 0 if v[7] <= 0 else v[7], 0 if v[8] <= 0 else v[8],
            0 if v[9] <= 0 else v[9], 0 if v[10] <= 0 else v[10], 0 if v[11] <= 0 else v[11],
            0 if v[12] <= 0 else v[12], 0 if v[13] <= 0 else v[13], 0 if v[14] <= 0 else v[14],
            0 if v[15] <= 0 else v[15])


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
# A register tile is a tuple of 4 (or 8) accumulators, each a 16-tuple (`load16`). The transposed
# convolution's kernels, and the 4-wide tiles of the direct forward and grad-weight kernels, differ
# only in where the broadcast values and the 16-vectors come from; these helpers are the arithmetic
# they share (an 8-tile is two 4-tiles). Inlined, they leave the loops as vector loads, broadcast
# FMAs and vector stores: the same machine code as four accumulators written out (docs/performance.md).
@inlined_tile_helper
def store16(matrix, i, tile):
    """matrix[i, 0:16] = tile, a 16-tuple: one vector store once inlined (a loop `for c in
    range(16): matrix[i, c] = tile[c]` indexes the tuple at run time: 16 scalar stores via a jump table)."""
    matrix[i, 0], matrix[i, 1], matrix[i, 2], matrix[i, 3] = tile[0], tile[1], tile[2], tile[3]
    matrix[i, 4], matrix[i, 5], matrix[i, 6], matrix[i, 7] = tile[4], tile[5], tile[6], tile[7]
    matrix[i, 8], matrix[i, 9], matrix[i, 10], matrix[i, 11] = tile[8], tile[9], tile[10], tile[11]
    matrix[i, 12], matrix[i, 13], matrix[i, 14], matrix[i, 15] = tile[12], tile[13], tile[14], tile[15]


@inlined_tile_helper
def load_tile4(matrix, i, step):
    """(matrix[i + q*step, 0:16] for q < 4): step 0 repeats one row (a bias, or zeros)."""
    return (load16(matrix, i), load16(matrix, i + step), load16(matrix, i + UINT[2] * step),
            load16(matrix, i + UINT[3] * step))


@inlined_tile_helper
def fma_tile4(tile, values, at, step, w):
    """tile[q] + values[at + q*step] * w for q < 4: w a 16-tuple, each value broadcast."""
    return (fma16(tile[0], values[at], w), fma16(tile[1], values[at + step], w),
            fma16(tile[2], values[at + UINT[2] * step], w), fma16(tile[3], values[at + UINT[3] * step], w))


@inlined_tile_helper
def store_tile4(matrix, i, step, tile):
    """matrix[i + q*step, 0:16] = tile[q] for q < 4."""
    store16(matrix, i, tile[0])
    store16(matrix, i + step, tile[1])
    store16(matrix, i + UINT[2] * step, tile[2])
    store16(matrix, i + UINT[3] * step, tile[3])


@inlined_tile_helper
def load_tile8(matrix, i, step):
    """`load_tile4` for q < 8."""
    return load_tile4(matrix, i, step) + load_tile4(matrix, i + UINT[4] * step, step)


@inlined_tile_helper
def fma_tile8(tile, values, at, step, w):
    """`fma_tile4` for q < 8."""
    return fma_tile4(tile[:4], values, at, step, w) + fma_tile4(tile[4:], values, at + UINT[4] * step, step, w)


@inlined_tile_helper
def store_tile8(matrix, i, step, tile):
    """`store_tile4` for q < 8."""
    store_tile4(matrix, i, step, tile[:4])
    store_tile4(matrix, i + UINT[4] * step, step, tile[4:])
