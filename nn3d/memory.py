"""Keep large activation buffers in the heap, so each pass does not pay the kernel to zero them again.

Every layer allocates its output (and backward its gradient) with `np.empty`. glibc's malloc serves a
request above its *mmap threshold* (dynamic, at most 32 MB) with a fresh `mmap` and returns it with
`munmap` on free. A fresh mapping costs a page fault per page on first touch, and the kernel zeroes
every page it hands out. A 96^3 x 16-channel float32 activation is 57 MB, so at 96^3 and 128^3 every
forward and backward pass paid that for each of its ~50 big arrays: measured at 96^3 on 2 threads,
~25 000 page faults and ~0.5 s of system time per training step (out of ~2.2 s); at 64^3 (16.8 MB
per activation) the arrays were small enough to be recycled inside the heap and the cost was absent.

`keep_large_buffers_in_heap()` raises the mmap threshold (and the trim threshold, so the top of the
heap is not handed back to the kernel after every pass) with glibc's `mallopt`. Freed activations are
then reused by the next pass's `np.empty` with no system call and no page zeroing. Peak resident
memory stays the same (the same arrays are alive at the same time); the process keeps its peak
after a pass instead of returning it, which is what a training loop wants anyway.

It runs once when `nn3d` is imported. It only acts on Linux with glibc; elsewhere (macOS, musl,
Windows) it does nothing and returns False. Set NN3D_KEEP_MALLOC=1 to leave malloc's defaults alone
(e.g. to measure the difference). The same effect without code:
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824`.
"""
import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1      # mallopt parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
HEAP_THRESHOLD = 1 << 30   # requests below 1 GiB come from the heap (every U-Net activation up to 128^3)


def keep_large_buffers_in_heap(threshold=HEAP_THRESHOLD):
    """Ask glibc to serve allocations below `threshold` bytes from the heap and not to trim the heap
    top below it. Returns True if glibc accepted both settings, False if not glibc Linux."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    threshold = ctypes.c_int(min(int(threshold), 2**31 - 1))
    accepted_mmap = libc.mallopt(M_MMAP_THRESHOLD, threshold)
    accepted_trim = libc.mallopt(M_TRIM_THRESHOLD, threshold)
    return bool(accepted_mmap and accepted_trim)


HEAP_BUFFERS = False if os.environ.get("NN3D_KEEP_MALLOC") == "1" else keep_large_buffers_in_heap()
