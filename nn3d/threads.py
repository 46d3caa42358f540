"""How many cores nn3d uses, and the one place where a BLAS runs inside Numba's threads.

`set_num_threads(n)` is the knob: Numba's thread pool runs every kernel on n threads. Nothing else
is needed for speed; importing nn3d changes no thread setting of the process.

One thread pool at a time. An OpenBLAS left at its default (one thread per core) keeps its threads
busy-waiting for a while after each product, on the very cores Numba's threads need next; called
inside Numba's threads it would start its own threads in each of them (measured at 64^3 when the
up-convolutions still called np.dot in their prange loops: a training step 0.50 s -> 0.92 s, and
OpenBLAS printed "Detect OpenMP Loop"). No kernel calls BLAS any more; the one BLAS product between
kernels, Winograd's filter transform (nn3d/kernels/winograd.py), runs inside `single_threaded_blas()`,
which sets every loaded BLAS to one thread for the duration of the call and restores the previous
setting afterwards: the rest of the process (the user's own NumPy products) keeps whatever BLAS
threads it had (docs/performance.md, "One thread pool at a time").
"""
import contextlib

import numba

_blas = None     # a threadpoolctl controller of the BLAS libraries, made at first use


def set_num_threads(threads=None):
    """Run nn3d's kernels on `threads` Numba threads (default: all cores). Returns the number."""
    threads = numba.config.NUMBA_NUM_THREADS if threads is None else int(threads)
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, got {threads}")
    numba.set_num_threads(threads)
    return threads


def get_num_threads():
    return numba.get_num_threads()


@contextlib.contextmanager
def single_threaded_blas():
    """Every BLAS (NumPy's, and SciPy's, which Numba's np.dot would call) on one thread inside this
    block; the previous limits come back on exit. Costs a few microseconds per entry."""
    global _blas
    if _blas is None:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS Numba's np.dot calls, so the limit reaches it)
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    with _blas.limit(limits=1):
        yield
