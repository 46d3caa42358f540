"""How many cores nn3d uses.

One thread pool at a time: Numba's threads run the kernels, and any BLAS call (NumPy's or the one
Numba calls for `np.dot`) runs single-threaded inside them. Two pools spinning on the same two cores
halve the speed (docs/performance.md, "One thread pool at a time").
"""
import numba
from threadpoolctl import threadpool_limits

_blas_limit = None


def set_num_threads(threads=None):
    """Use `threads` Numba threads (default: all cores) and limit every BLAS library to one thread."""
    global _blas_limit
    threads = numba.config.NUMBA_NUM_THREADS if threads is None else int(threads)
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, got {threads}")
    numba.set_num_threads(threads)
    import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS Numba's np.dot calls, so the limit reaches it)
    _blas_limit = threadpool_limits(limits=1, user_api="blas")
    return threads


def get_num_threads():
    return numba.get_num_threads()
