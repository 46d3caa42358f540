"""Shared test setup. PyTorch is required: the comparisons with it are the point of this suite, so a
missing torch must fail the run, never skip it."""
import atexit
import os
import shutil
import tempfile

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError("the test suite needs PyTorch: install it with pip install -e '.[test]' "
                      "(the extra pins torch==2.13.0, the CPU build)") from error

import numba
import pytest

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
import nn3d  # noqa: E402

nn3d.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))  # Numba's threads only; BLAS is left alone

# Preprocessed scans are cached (mri2ct.data.preprocess): keep the suite's cache out of ~/.cache.
if "MRI2CT_CACHE" not in os.environ:
    os.environ["MRI2CT_CACHE"] = tempfile.mkdtemp(prefix="mri2ct-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MRI2CT_CACHE"], True)

@pytest.fixture(params=["direct", "winograd"])
def conv_algorithm(request, monkeypatch):
    """Run the test once per Conv3d algorithm (NN3D_CONV, nn3d/kernels/conv_algorithm.py): forced,
    so every 3x3x3 stride-1 padding-1 convolution takes that path, whatever its channel count."""
    monkeypatch.setenv("NN3D_CONV", request.param)
    return request.param


@pytest.fixture
def on_one_and_two_threads():
    """run(function, *args) -> (its result on 1 Numba thread, on 2), for the tests that a kernel gives
    the same bits on any thread count. Skipped where Numba has fewer than 2 threads (a one-core
    runner): comparing 1 thread with 1 would pass whatever the kernel does."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"needs 2 Numba threads to compare with 1; NUMBA_NUM_THREADS is "
                    f"{numba.config.NUMBA_NUM_THREADS}")

    def run(function, *args):
        threads = nn3d.get_num_threads()
        try:
            nn3d.set_num_threads(1)
            one = function(*args)
            nn3d.set_num_threads(2)
            two = function(*args)
        finally:
            nn3d.set_num_threads(threads)
        return one, two
    return run


@pytest.fixture
def dead_pid():
    """The id of a process that has ended (for temporaries left by a killed writer)."""
    import subprocess
    import sys
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def pytest_collection_modifyitems(items):
    """The bounds-checked run of the kernel tests first: it is the longest (a second compilation of every
    kernel, in a process of its own), so one worker starts it while the other runs everything else."""
    items.sort(key=lambda item: item.path.name != "test_boundscheck.py")
