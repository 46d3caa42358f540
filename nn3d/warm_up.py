"""Compile the kernels of a U-Net's training step and eval forward before the first step, in several
processes at once.

Numba compiles one kernel at a time per process (under its compiler lock), and a fresh install
compiles a training step's ~20 kernels in 50-80 s of CPU time. The compiled code goes to the
on-disk cache (`cache=True`, nn3d/kernels/jit.py), which every process on the machine shares. So
`warm_up(dtype, processes)` runs TASKS, small passes through every layer path a U-Net uses (the
direct convolutions, F(4^3, 3^3)'s forward, grad-input and (on AVX2) grad-weight, F(2^3, 3^3)'s
passes where the rule runs them (grad-weight on AVX-512), the up-convolution, BatchNorm + ReLU, pooling, the
1x1x1 head, the loss and AdamW) on tiny arrays of `dtype`, split into `processes` shares of about
equal compile time (COMPILE_SECONDS): this process runs the first share, and the moment it hears its
first compilation (a cold cache; Numba's "numba:compile" event) it starts one worker process per
other share (`python -m nn3d.warm_up`). A warm cache starts no process: the passes load their
kernels, as the first step would have. After the warm-up the first step finds every kernel in
memory or in the cache (tests/test_warm_up.py checks that a U-Net step and eval forward add no
compiled signature).
"""
import argparse
import contextlib
import os
import subprocess
import sys

import numpy as np
from numba.core import event

from .batchnorm3d import BatchNorm3d
from .batchnorm_folding import conv_batchnorm_eval
from .conv3d import Conv3d
from .conv_transpose3d import ConvTranspose3d
from .grad_mode import no_grad
from .kernels.conv_algorithm import (COMPILED_FOR, WINOGRAD4_MIN_TILES, winograd4_wins, winograd_convolves,
                                     winograd_runs)
from .kernels.jit import FirstCompilation
from .kernels.winograd.convolution4 import winograd4_forward, winograd4_grad_input
from .kernels.winograd.filter_transform import filter_transform, flipped_transposed_transform
from .kernels.winograd.filter_transform4 import filter_transform4
from .kernels.winograd.grad_weight import winograd_grad_weight
from .kernels.winograd.grad_weight4 import winograd4_grad_weight
from .loss import MSELoss
from .maxpool3d import MaxPool3d
from .optim import AdamW, clip_grad_norm_
from .schedule import CosineAnnealingLR
from .threads import set_num_threads


@contextlib.contextmanager
def forced_algorithm(name):
    """NN3D_CONV=name inside the block (nn3d/kernels/conv_algorithm.py), as it was after it."""
    saved = os.environ.get("NN3D_CONV")
    os.environ["NN3D_CONV"] = name
    try:
        yield
    finally:
        if saved is None:
            del os.environ["NN3D_CONV"]
        else:
            os.environ["NN3D_CONV"] = saved


def volume(channels, size, dtype, seed=0):
    """A (1, channels, size, size, size) array of normal values."""
    return np.random.default_rng(seed).standard_normal((1, channels, size, size, size)).astype(dtype)


def convolution_passes(algorithm, dtype):
    """The 3x3x3 convolutions of a U-Net block by `algorithm`: the first layer (1 input channel, no
    input gradient), one and two inputs (a decoder's (up, skip)) in training, and the eval forward
    with its BatchNorm folded in."""
    with forced_algorithm(algorithm):
        first = Conv3d(1, 16, 3, padding=1).to(dtype)
        first.requires_input_grad = False
        first.backward(first.forward(volume(1, 8, dtype)))
        single = Conv3d(16, 16, 3, padding=1).to(dtype)
        single.backward(single.forward(volume(16, 8, dtype)))
        double = Conv3d(32, 16, 3, padding=1).to(dtype)
        double.backward(double.forward(volume(16, 8, dtype, 1), volume(16, 8, dtype, 2)))
        batchnorm = BatchNorm3d(16, relu=True).to(dtype).eval()
        with no_grad():
            conv_batchnorm_eval(first, batchnorm, volume(1, 8, dtype))
            conv_batchnorm_eval(double, batchnorm, volume(16, 8, dtype, 1), volume(16, 8, dtype, 2))


def winograd_filter_transform_passes(dtype):
    """Winograd's filter transforms alone (the forward's, and grad-input's made from it), on a 16 -> 16
    weight. A task of its own, run first in a share without the Winograd convolutions (`shares`), so
    that its kernels are in the cache by the time `winograd_passes`, in another process, needs them.
    Nothing where the rule never runs F(2^3, 3^3)'s forward and grad-input (`winograd_convolves`)."""
    if not winograd_convolves(COMPILED_FOR):
        return
    u_packed = filter_transform(Conv3d(16, 16, 3, padding=1).to(dtype).weight.data)
    flipped_transposed_transform(u_packed, 16)


def channels_last_volumes(dtype):
    """Two inputs and an output gradient (1, 8, 8, 8, 16), channels-last, for kernels called directly."""
    return tuple(np.ascontiguousarray(volume(16, 8, dtype, seed).transpose(0, 2, 3, 4, 1)) for seed in (1, 2, 3))


def winograd_passes(dtype):
    """F(2^3, 3^3)'s grad-weight first, called directly (it needs no filter transform; one input and a
    decoder's two, channels-last), then the layer passes of `convolution_passes`, which find the
    filter transforms compiled by the other share's first task and grad-weight compiled here: each
    where the rule runs it (`winograd_runs`, `winograd_convolves`)."""
    x0, x1, grad_output = channels_last_volumes(dtype)
    if winograd_runs(COMPILED_FOR, "grad_weight"):
        winograd_grad_weight((x0,), grad_output)
        winograd_grad_weight((x0, x1), grad_output)
    if winograd_convolves(COMPILED_FOR):
        convolution_passes("winograd", dtype)


def winograd4_passes(dtype):
    """F(4^3, 3^3): the eval forward, one input and a decoder's two, its BatchNorm folded in, and
    where the rule trains by it (nn3d/kernels/conv_algorithm.py) the training forward, grad-input and
    grad-weight, called directly (on AVX-512 the layer's backward would also compile F(2^3, 3^3)'s
    grad-weight, which `winograd_passes` compiles in another share)."""
    with forced_algorithm("winograd4"), no_grad():
        batchnorm = BatchNorm3d(16, relu=True).to(dtype).eval()
        conv_batchnorm_eval(Conv3d(16, 16, 3, padding=1).to(dtype), batchnorm, volume(16, 8, dtype))
        conv_batchnorm_eval(Conv3d(32, 16, 3, padding=1).to(dtype), batchnorm, volume(16, 8, dtype, 1),
                            volume(16, 8, dtype, 2))
    if not winograd4_wins(COMPILED_FOR, "forward", 16, 16, WINOGRAD4_MIN_TILES):
        return
    x0, x1, grad_output = channels_last_volumes(dtype)
    for inputs in ((x0,), (x0, x1)):
        weight = Conv3d(16 * len(inputs), 16, 3, padding=1).to(dtype).weight.data
        winograd4_forward(inputs, filter_transform4(weight), None, 16)
        winograd4_grad_input(grad_output, weight, (16,) * len(inputs))
        if winograd4_wins(COMPILED_FOR, "grad_weight", 16, 16, WINOGRAD4_MIN_TILES):
            winograd4_grad_weight(inputs, grad_output)


def up_convolution_passes(dtype):
    up = ConvTranspose3d(32, 16, 2, stride=2).to(dtype)
    up.backward(up.forward(volume(32, 4, dtype)))
    with no_grad():
        up.forward(volume(32, 4, dtype))


def head_passes(dtype):
    """The 1x1x1 head to one channel (the pointwise kernels)."""
    head = Conv3d(16, 1, 1).to(dtype)
    head.backward(head.forward(volume(16, 8, dtype)))
    with no_grad():
        head.forward(volume(16, 8, dtype))


def memory_bound_passes(dtype):
    """BatchNorm + ReLU (training and eval), max-pooling, the loss, clipping, AdamW, the schedule."""
    batchnorm = BatchNorm3d(16, relu=True).to(dtype)
    pool = MaxPool3d(2)
    y = pool.forward(batchnorm.forward(volume(16, 8, dtype)))
    batchnorm.backward(pool.backward(np.ones_like(y)))
    batchnorm.eval()
    with no_grad():
        batchnorm.forward(volume(16, 8, dtype))
    loss = MSELoss()
    loss.forward(volume(1, 8, dtype, 1), volume(1, 8, dtype, 2))
    loss.backward()
    params = list(batchnorm.parameters())
    optimizer = AdamW(params, lr=1e-3)
    clip_grad_norm_(params, 1.0)
    optimizer.step()
    CosineAnnealingLR(optimizer, T_max=2).step()


TASKS = {"winograd filter transforms": winograd_filter_transform_passes,
         "winograd convolution": winograd_passes,
         "direct convolution": lambda dtype: convolution_passes("direct", dtype),
         "winograd4 convolution": winograd4_passes,
         "up-convolution": up_convolution_passes,
         "head": head_passes,
         "memory-bound": memory_bound_passes}

# CPU seconds each task compiles on a cold cache, in TASKS's order in one process (a kernel that two
# tasks use counted in the first that compiles it; docs/performance.md): AVX2's on a Zen 3, AVX-512's
# on a Zen 4 (the F(2^3, 3^3) forward and grad-input are not compiled: `winograd_convolves`; on AVX2
# neither is its grad-weight, F(4^3, 3^3)'s runs instead: `winograd_runs`). Only their ratios matter:
# they balance the shares
COMPILE_SECONDS_BY_ISA = {
    "avx2": {"winograd4 convolution": 22, "direct convolution": 13, "up-convolution": 6, "memory-bound": 4,
             "head": 3, "winograd convolution": 0, "winograd filter transforms": 0},
    "avx512": {"winograd convolution": 15, "direct convolution": 12, "winograd4 convolution": 10,
               "up-convolution": 5, "memory-bound": 4, "head": 3, "winograd filter transforms": 0}}
COMPILE_SECONDS = COMPILE_SECONDS_BY_ISA[COMPILED_FOR]


def shares(processes, tasks=None):
    """`tasks` (default: TASKS) split into `processes` lists of about equal compile time (longest
    first, each to the share with the least so far); share 0, this process's, holds the longest task.
    Each share runs its tasks in TASKS's order: "winograd filter transforms" first wherever it goes,
    so that another share's "winograd convolution" finds it compiled (`winograd_passes`)."""
    lists, loads = [[] for _ in range(processes)], [0] * processes
    for name in sorted(TASKS if tasks is None else tasks, key=lambda name: -COMPILE_SECONDS[name]):
        least = loads.index(min(loads))
        lists[least].append(name)
        loads[least] += COMPILE_SECONDS[name]
    return [sorted(names, key=list(TASKS).index) for names in lists if names]


def run_tasks(names, dtype):
    for name in names:
        TASKS[name](dtype)


def start_worker(names, dtype):
    """A `python -m nn3d.warm_up` process running the tasks `names`, with this process's environment
    (the same Numba cache) and this copy of nn3d first on its path."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.Popen([sys.executable, "-m", "nn3d.warm_up", "--dtype", np.dtype(dtype).name,
                             "--tasks", ",".join(names)], env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def warm_up(dtype=np.float32, processes=2, tasks=None):
    """Load or compile every kernel of `tasks` (default: TASKS, what a U-Net's training step and eval
    forward use) for `dtype`, in up to `processes` processes when the cache is cold (module
    docstring). Returns True if anything was compiled (a cold cache). Raises RuntimeError, with its
    error output, if a worker fails; a call that ends by an exception kills the workers it started."""
    parts = shares(max(1, int(processes)), tasks)
    workers = []
    listener = FirstCompilation(lambda: workers.extend(start_worker(names, dtype) for names in parts[1:]))
    try:
        with event.install_listener("numba:compile", listener):
            run_tasks(parts[0] if parts else [], dtype)
        for worker in workers:
            finish(worker)
    finally:                          # interrupted (Ctrl-C, SIGTERM) or failed: no worker outlives the call
        for worker in workers:
            stop(worker)
    return listener.heard


def finish(worker):
    """Wait for a worker; RuntimeError with its error output if it failed."""
    _, errors = worker.communicate()
    if worker.returncode != 0:
        raise RuntimeError(f"nn3d.warm_up: a worker compiling kernels failed (exit {worker.returncode}):\n"
                           f"{errors}")


def stop(worker):
    if worker.poll() is None:
        worker.kill()
        worker.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nn3d.warm_up", description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    args = parser.parse_args(argv)
    set_num_threads(1)                              # compilation is serial; the passes are tiny
    run_tasks(args.tasks.split(","), np.dtype(args.dtype))


if __name__ == "__main__":
    main()
