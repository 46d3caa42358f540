"""Shared test setup. PyTorch is required: the comparisons with it are the point of this suite, so a
missing torch must fail the run, never skip it."""
import os

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError("the test suite needs PyTorch: install it with pip install -e '.[test]' "
                      "(the extra pins torch==2.13.0, the CPU build)") from error

import numba
import pytest

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
import nn3d  # noqa: E402

nn3d.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))  # also: every BLAS single-threaded


@pytest.fixture
def dead_pid():
    """The id of a process that has ended (for temporaries left by a killed writer)."""
    import subprocess
    import sys
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
