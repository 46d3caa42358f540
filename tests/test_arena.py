"""nn3d.core.arena recycles large buffers only when nothing refers to them, and importing or running nn3d
changes no process-wide setting (malloc, BLAS threads)."""
import json
import subprocess
import sys

import numpy as np

import nn3d
from nn3d.core import arena

BIG = (1, 64, 64, 64, 2)          # 2 MiB of float32: above arena.MIN_BYTES


def address(array):
    return array.__array_interface__["data"][0]


def test_a_held_array_is_never_handed_out_again():
    first = arena.empty(BIG, np.float32)
    first_view = first.transpose(0, 4, 1, 2, 3)               # a user keeps only a view
    del first
    second = arena.empty(BIG, np.float32)
    assert address(second) != address(first_view)
    del first_view
    third = arena.empty(BIG, np.float32)                      # the first buffer is free again
    assert address(third) != address(second)
    arena.release()


def test_freed_buffer_is_recycled_and_release_drops_it():
    arena.release()
    buffer_address = address(arena.empty(BIG, np.float32))    # dropped at once: free
    assert address(arena.empty(BIG, np.float32)) == buffer_address
    arena.release()
    held = arena.ARENA.held_bytes()
    kept = arena.empty(BIG, np.float32)
    assert arena.ARENA.held_bytes() == held + kept.nbytes
    del kept
    arena.release()
    assert arena.ARENA.held_bytes() == held


def test_layer_outputs_of_two_passes_stay_distinct():
    """A user may keep the output of every forward (and every gradient backward returns): a later pass
    must neither overwrite nor alias it."""
    rng = np.random.default_rng(0)
    layers = nn3d.Sequential(nn3d.Conv3d(2, 16, 3, padding=1), nn3d.BatchNorm3d(16), nn3d.ReLU(),
                             nn3d.MaxPool3d(2))
    x1 = rng.standard_normal((1, 2, 32, 32, 32)).astype(np.float32)
    x2 = rng.standard_normal((1, 2, 32, 32, 32)).astype(np.float32)
    y1 = layers.forward(x1)
    y1_copy = y1.copy()
    grad1 = layers.backward(np.ones_like(y1))
    grad1_copy = grad1.copy()
    y2 = layers.forward(x2)
    grad2 = layers.backward(np.ones_like(y2))
    assert not np.shares_memory(y1, y2) and not np.shares_memory(grad1, grad2)
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(grad1, grad1_copy)


def test_arena_never_holds_more_than_growth_times_peak_use():
    arena.release()
    for size in (40, 48, 56, 64, 72):                          # new sizes evict old free buffers
        for _ in range(3):
            kept = [arena.empty((1, size, size, size, 4), np.float32) for _ in range(2)]
            del kept
    assert arena.ARENA.held_bytes() <= arena.GROWTH * arena.ARENA._peak_in_use
    arena.release()


PROBE = r"""
import ctypes, json, sys
import numpy as np
from threadpoolctl import threadpool_info
import scipy.linalg.cython_blas

def rss_mb():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024

def blas_threads():
    return sorted((info["filepath"], info["num_threads"]) for info in threadpool_info()
                  if info["user_api"] == "blas")

before = blas_threads()
import nn3d
x = np.random.default_rng(0).standard_normal((1, 16, 16, 16, 16)).astype(np.float32)
up = nn3d.ConvTranspose3d(16, 4, 2, stride=2)
up.backward(up.forward(x))                       # the up-convolution's kernels ran
conv = nn3d.Conv3d(16, 16, 3, padding=1)         # 16^3: Winograd's too
conv.backward(conv.forward(x))
after = blas_threads()
# glibc's default: a 256 MB block is mmap'ed and returned to the system when freed.
# (nn3d used to raise the mmap threshold and turn trimming off at import: the block stayed.)
base = rss_mb()
block = np.ones(64 * 2**20, np.float32)
grown = rss_mb() - base
del block
print(json.dumps({"before": before, "after": after, "grown": grown, "kept": rss_mb() - base}))
"""


def test_import_and_use_change_no_process_setting():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["before"] == probe["after"]               # BLAS thread counts as they were
    assert probe["grown"] > 200                              # the block was resident ...
    assert probe["kept"] < 50                                # ... and went back to the system when freed
