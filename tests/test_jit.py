"""nn3d.kernels.jit: every signature of a blocked kernel is compiled with the SLP vectoriser on and the
loop vectoriser off, whichever signature comes first; `compile_notice` speaks once, before the first
compilation, and not at all when nothing is compiled.

The check reads the optimised LLVM IR of the float32 signature of a small register-tile kernel
whose tile is a tuple of 8 scalars (as docs/kernels/conv3d_steps.py's step 3): with SLP it holds
vector float operations (<8 x float>); compiled with Numba's defaults it holds none (measured:
0, the bug this guards against, where a float64 compile first left float32 without SLP). Each order
runs in a fresh process with its own cache, so nothing is loaded from an earlier compilation.
"""
import os
import subprocess
import sys

KERNEL = '''
from numba import prange
from nn3d.kernels.jit import blocked_kernel, tile_helper


@tile_helper
def load8(matrix, i):
    return (matrix[i, 0], matrix[i, 1], matrix[i, 2], matrix[i, 3], matrix[i, 4], matrix[i, 5], matrix[i, 6],
            matrix[i, 7])


@tile_helper
def fma8(acc, value, w):
    return (acc[0] + value * w[0], acc[1] + value * w[1], acc[2] + value * w[2], acc[3] + value * w[3],
            acc[4] + value * w[4], acc[5] + value * w[5], acc[6] + value * w[6], acc[7] + value * w[7])


@blocked_kernel
def rows_times_matrix(x, w, out):
    for i in prange(x.shape[0]):
        acc = load8(out, i)
        for j in range(x.shape[1]):
            acc = fma8(acc, x[i, j], load8(w, j))
        for c in range(8):
            out[i, c] = acc[c]
'''

PROBE = '''
import sys
import numpy as np
import tile_kernel

for name in sys.argv[1].split(","):
    dtype = np.dtype(name)
    tile_kernel.rows_times_matrix(np.ones((4, 3), dtype), np.ones((3, 8), dtype), np.zeros((4, 8), dtype))
float32 = [s for s in tile_kernel.rows_times_matrix.signatures if str(s[0].dtype) == "float32"][0]
print(tile_kernel.rows_times_matrix.inspect_llvm(float32).count(" x float>"))
'''


def vector_float_operations(tmp_path, order):
    """Vector float operations in the float32 kernel's IR after compiling the dtypes in `order`."""
    (tmp_path / "tile_kernel.py").write_text(KERNEL)
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / f"cache-{order}"),
                       PYTHONPATH=os.pathsep.join([str(tmp_path), repository]))
    result = subprocess.run([sys.executable, "-c", PROBE, order], capture_output=True, text=True,
                            env=environment, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def test_float32_kernel_is_slp_vectorised_whatever_compiles_first(tmp_path):
    float32_first = vector_float_operations(tmp_path, "float32")
    float64_first = vector_float_operations(tmp_path, "float64,float32")
    assert float32_first > 0
    assert float64_first == float32_first


def test_compile_notice_speaks_once_before_the_first_compilation():
    import numba

    from nn3d.kernels.jit import compile_notice

    @numba.njit                                     # not cached: it compiles in every test run
    def add_one(x):
        return x + 1

    said = []
    with compile_notice(lambda: said.append(add_one.signatures[:])):
        add_one(1)                                  # compiles: the notice comes before it
        add_one(2.0)                                # compiles again: silent
    assert said == [[]]
    said.clear()
    with compile_notice(lambda: said.append("compiling")):
        add_one(3)                                  # already compiled: no notice
    assert said == []
