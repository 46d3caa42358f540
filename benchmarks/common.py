"""What every benchmark shares: threads, timing, the machine's own sgemm and copy rates, JSON output.

Timing rules (the machine is noisy): warm up first so compilation and first-touch page faults are
excluded, then time `repeats` calls and report the median. Ours and the other engines' are measured
in the same process, interleaved, so all see the same machine.
"""
import json
import os
import platform
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits


def set_threads(threads):
    """PyTorch on `threads` threads, and nn3d too. nn3d gets its one knob, `nn3d.set_num_threads`,
    only when `threads` differs from its default (all cores): with the default, ours is measured as a
    plain script runs it, with no setup call at all."""
    import torch

    import nn3d

    if threads != nn3d.get_num_threads():
        nn3d.set_num_threads(threads)
    torch.set_num_threads(threads)


def median_seconds(function, repeats=5, warmup=1):
    """Median wall time of `function()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions, repeats=5, warmup=1):
    """Median seconds of each of several functions, timed round-robin so drift hits all alike."""
    for function in functions:
        for _ in range(warmup):
            function()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def sgemm_gflops(threads, size=2048, repeats=5):
    """NumPy's float32 matrix product rate on `threads` BLAS threads: the machine's practical peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        seconds = median_seconds(lambda: np.dot(a, b), repeats=repeats)
    return 2.0 * size ** 3 / seconds / 1e9


def copy_gbps(megabytes=256, repeats=5):
    """Memory bandwidth of a NumPy copy (bytes read + bytes written per second): the roof for
    memory-bound layers such as BatchNorm, ReLU and pooling."""
    source = np.ones(megabytes * 2 ** 20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    seconds = median_seconds(lambda: np.copyto(target, source), repeats=repeats)
    return 2 * source.nbytes / seconds / 1e9


def cpu_model():
    """The CPU's model name from /proc/cpuinfo ("AMD EPYC"), or the platform's answer elsewhere."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def instruction_set():
    """The vector instruction set nn3d's kernels are compiled for, from the same LLVM feature string
    that picks their register-tile width (nn3d/kernels/register_tile.py): "AVX-512", "AVX2" or "other"."""
    from nn3d.kernels.register_tile import compiling_for

    features = compiling_for().split(",")
    return "AVX-512" if "+avx512f" in features else "AVX2" if "+avx2" in features else "other"


def version(package):
    """A package's installed version, or "not installed"."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(threads):
    from nn3d.kernels.register_tile import BLOCK_W

    return {"cpu": platform.machine(), "cpu_model": cpu_model(), "isa": instruction_set(),
            "tile_width": BLOCK_W, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(),
            **{package: version(package) for package in ("numpy", "numba", "torch", "onnx",
                                                         "onnxscript", "onnxruntime", "openvino")}}


def write_json(path, payload):
    """Write JSON atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(temporary, path)
    finally:                          # a failed dump leaves nothing half-written behind
        if os.path.exists(temporary):
            os.remove(temporary)
