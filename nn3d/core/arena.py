"""The arena: large arrays recycled from one pass to the next, owned by nn3d, invisible outside it.

Why. Every layer allocates its output, and every backward its gradients and temporaries. glibc's
malloc serves a request above its mmap threshold (at most 32 MB) with a fresh `mmap` and returns it
with `munmap` when freed; the kernel zeroes and faults in every page again on first touch. A 96^3 x
16-channel float32 activation is 57 MB, so at 96^3 and 128^3 every pass would pay that for each of
its ~50 big arrays, seconds of system time per training step (docs/performance.md). (Changing malloc's
thresholds for the whole process would also fix it, but a library must not change the process it is
imported into.)

How. `empty(shape, dtype)` hands out arrays of 1 MiB or more as views of buffers the arena keeps.
A buffer is free when nothing outside the arena refers to it any more: every view of it (whatever
reshaping or transposing a layer or a user did) holds a reference to the buffer, so its reference
count says whether anything anywhere can still read it. A training step asks for the same sizes in
the same order every time, so from the second step on every request finds a free buffer of exactly
its size: no system call, no page fault, no zeroing.

The contract for users is therefore the plain NumPy one: an array nn3d returned stays valid, and
distinct, for as long as you hold it. Nothing is reused while referenced.

Memory. A request takes the smallest free buffer of at least its size and at most FIT times it, so
buffers of other sizes (an activation, its zero-padded copy, the next level's smaller arrays) serve
each other and the arena holds few distinct buffers.
The arena never holds more than GROWTH times the most bytes ever in use at once: a request that
would exceed that first drops the free buffers used longest ago (after a change of input size, the
old sizes go). `release()` drops every free buffer now. On the U-Net the arena then holds about the
bytes in use at the step's peak, with no new buffer from the second pass on; a GROWTH of 1.0 would
bring fresh buffers back at every step, the cost the arena exists to remove (docs/performance.md
has the numbers).
Arrays below MIN_BYTES come from NumPy directly: malloc keeps those in its heap and recycles them
without system calls anyway.
"""
import math
import sys
import threading

import numpy as np

MIN_BYTES = 1 << 20     # smaller arrays: np.empty (malloc's heap recycles them cheaply)
FIT = 8                 # a request may take a free buffer up to 8x its size (the smallest that fits)
GROWTH = 1.5            # held bytes <= GROWTH x the most bytes in use at once


class Arena:
    """Buffers (1-D uint8 arrays) with the request count of their last use."""

    def __init__(self):
        self._buffers = []           # [buffer, last_use] pairs
        self._requests = 0
        self._peak_in_use = 0        # the most bytes of arena buffers referenced at once
        self._lock = threading.Lock()
        self._free_count = self._reference_count(np.empty(1, np.uint8))

    @staticmethod
    def _reference_count(buffer):
        """References to `buffer` when only the arena's list holds it (measured on a fresh one the same
        way: the list, this argument and getrefcount's own)."""
        holder = [buffer]
        del buffer
        return sys.getrefcount(holder[0])

    def _is_free(self, entry):
        return sys.getrefcount(entry[0]) <= self._free_count

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array of `shape` and `dtype`, recycled when possible."""
        dtype = np.dtype(dtype)
        nbytes = int(math.prod(shape)) * dtype.itemsize      # math.prod: np.prod costs ~10 us a call
        if nbytes < MIN_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            self._requests += 1
            match, in_use = None, 0
            for entry in self._buffers:
                size = entry[0].nbytes
                if not self._is_free(entry):
                    in_use += size
                elif nbytes <= size <= FIT * nbytes and (match is None or size < match[0].nbytes):
                    match = entry
            if match is None:
                self._peak_in_use = max(self._peak_in_use, in_use + nbytes)
                self._make_room(nbytes)
                match = [np.empty(nbytes, np.uint8), 0]
                self._buffers.append(match)
            match[1] = self._requests
            return match[0][:nbytes].view(dtype).reshape(shape)

    def _make_room(self, nbytes):
        """Drop free buffers, least recently used first, until `nbytes` more fit under the cap."""
        held = sum(entry[0].nbytes for entry in self._buffers)
        limit = GROWTH * self._peak_in_use
        dropped = set()
        for entry in sorted((e for e in self._buffers if self._is_free(e)), key=lambda e: e[1]):
            if held + nbytes <= limit:
                break
            dropped.add(id(entry))
            held -= entry[0].nbytes
        self._buffers = [entry for entry in self._buffers if id(entry) not in dropped]

    def release(self):
        """Drop every buffer that nothing refers to (their memory goes back to the system)."""
        with self._lock:
            self._buffers = [entry for entry in self._buffers if not self._is_free(entry)]

    def held_bytes(self):
        return sum(entry[0].nbytes for entry in self._buffers)


ARENA = Arena()
empty = ARENA.empty
release = ARENA.release


def zeros(shape, dtype):
    """`empty`, filled with zeros."""
    array = ARENA.empty(shape, dtype)
    array.fill(0)
    return array


def empty_like(array):
    """`empty` with `array`'s shape and dtype (C-contiguous, whatever `array`'s order)."""
    return ARENA.empty(array.shape, array.dtype)


def copy(array):
    """A C-contiguous copy of `array` in an arena buffer."""
    out = ARENA.empty(array.shape, array.dtype)
    np.copyto(out, array)
    return out
