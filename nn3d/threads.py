"""How many cores nn3d uses.

`set_num_threads(n)` is the knob: Numba's thread pool runs every kernel on n threads. Nothing else
is needed for speed; importing nn3d changes no thread setting of the process.

One thread pool at a time. An OpenBLAS left at its default (one thread per core) keeps its threads
busy-waiting for a while after each product, on the very cores Numba's threads need next; called
inside Numba's threads it starts its own threads in each of them (docs/performance.md has what
that cost a training step). So nn3d calls no BLAS at all, neither inside its kernels
nor between them (Winograd's filter transform, the last product, is a kernel of its own): the user's
own NumPy products keep whatever BLAS threads they had (docs/performance.md, "One thread pool at a
time").
"""
import numba


def set_num_threads(threads=None):
    """Run nn3d's kernels on `threads` Numba threads (default: all cores). Returns the number."""
    threads = numba.config.NUMBA_NUM_THREADS if threads is None else int(threads)
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, got {threads}")
    numba.set_num_threads(threads)
    return threads


def get_num_threads():
    return numba.get_num_threads()

