"""Numba compilation settings, in one place.

Every kernel in nn3d is compiled through one of the decorators below, so that
`NUMBA_DISABLE_JIT=1 python ...` turns all of them into plain Python you can step through in a
debugger, and `NUMBA_BOUNDSCHECK=1` checks every index.

- `kernel`:           serial, for loops not worth threads (the kernel ladders' one-tile helpers).
- `parallel_kernel`:  `prange` loops split across Numba's threads; each iteration owns its slice
                      of the output (no two iterations write the same element).
- `blocked_kernel`:   a `parallel_kernel` compiled with LLVM's loop vectoriser off and its SLP
                      (straight-line) vectoriser on, for every signature. Register-blocked
                      convolution kernels keep a few output voxels x 16 output channels in
                      local variables (nn3d/kernels/simd.py's vectors); the loop vectoriser
                      mangles the loops around such tiles, the SLP vectoriser packs the
                      straight-line scalar code left beside them (and a tile written as a tuple
                      of scalars, docs/kernels/conv3d_steps.py's step 3, into vector FMAs:
                      about 3x faster, docs/performance.md). SLP is off by default in Numba
                      because of a past miscompilation, so every such kernel is tested against
                      a plain reference.

`cache=True` stores compiled machine code in `__pycache__`, so only the first run pays for
compilation. (The cache does not notice edits in helper functions imported from other files:
delete `__pycache__` if a kernel looks stale.) fastmath stays off: it would reorder sums and hide NaNs.
The one exception is FMA contraction in `blocked_kernel` and `tile_helper`: a*b + c becomes one fused
multiply-add (one rounding instead of two; no reordering, NaN and inf behave as before).

`compile_notice` lets a program say so when it waits for compilation: Numba compiles a signature
only when its cache holds no machine code for it on this CPU (a fresh install, another CPU, an
edited kernel), and announces each such compilation as a "numba:compile" event; a cache load
announces nothing.
"""
import contextlib

import numba
from numba.core import config, event
from numba.core.compiler_lock import global_compiler_lock

JIT_OPTIONS = dict(cache=True, fastmath=False)


def kernel(function):
    return numba.njit(**JIT_OPTIONS)(function)


def parallel_kernel(function):
    return numba.njit(parallel=True, **JIT_OPTIONS)(function)


@contextlib.contextmanager
def slp_vectoriser():
    """Compile inside this block with the loop vectoriser off and the SLP vectoriser on."""
    saved = config.LOOP_VECTORIZE, config.SLP_VECTORIZE
    config.LOOP_VECTORIZE, config.SLP_VECTORIZE = 0, 1
    try:
        yield
    finally:
        config.LOOP_VECTORIZE, config.SLP_VECTORIZE = saved


FMA_OPTIONS = dict(JIT_OPTIONS, fastmath={"contract"})


def tile_helper(function):
    """Serial register-tile arithmetic inlined into blocked kernels, with FMA contraction like them."""
    return numba.njit(**FMA_OPTIONS)(function)


def inlined_tile_helper(function):
    """A `tile_helper` that Numba inlines into its caller's code (inline="always") before LLVM sees
    it. For the helper that a kernel's loop calls once per tile, when it takes arrays and is too big
    for LLVM to inline: left as a call, it updates the reference counts of its array arguments (two
    atomic operations per array per call) and hides its arithmetic from the caller's vectoriser.
    The helpers it calls in turn stay plain `tile_helper`s: LLVM inlines those into it and drops
    their reference counting, while every level of Numba inlining copies the whole IR of the level
    below (nested three deep, as in the Winograd transforms, compilation takes several times
    longer for the same machine code: docs/performance.md)."""
    return numba.njit(inline="always", **FMA_OPTIONS)(function)


def blocked_kernel(function):
    """A parallel kernel, with FMA contraction, every compilation of which (one per signature:
    float32, float64 for gradient checks, in whatever order they come) runs inside `slp_vectoriser`.

    Numba compiles a new signature through `dispatcher.compile`, at the first call with new argument
    types (or when loading it from the cache); wrapping that one method reaches every signature,
    and a call to an already compiled signature costs nothing extra. The settings are switched while
    holding Numba's compiler lock, so no other thread compiles with them."""
    dispatcher = numba.njit(parallel=True, **FMA_OPTIONS)(function)
    compile_signature = dispatcher.compile

    def compile_with_slp(signature):
        with global_compiler_lock, slp_vectoriser():
            return compile_signature(signature)

    dispatcher.compile = compile_with_slp
    return dispatcher


class FirstCompilation(event.Listener):
    """Calls `action()` at the start of the first compilation it hears of (installed on Numba's
    "numba:compile" event), then nothing more."""

    def __init__(self, action):
        self.action = action
        self.heard = False

    def on_start(self, ev):
        if not self.heard:
            self.heard = True
            self.action()

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def compile_notice(say):
    """Inside this block, `say()` is called once, just before the first kernel compilation (none when
    every kernel the block runs comes from the cache). E.g. the trainer prints one line, so a first
    run says why its first step waits."""
    with event.install_listener("numba:compile", FirstCompilation(say)):
        yield
