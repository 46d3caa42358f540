"""The kernel tests again, with every array index checked (NUMBA_BOUNDSCHECK=1).

The fast kernels index flat arrays with hand-computed unsigned offsets; with bounds checks off (the
default, for speed) a wrong tile width or stride silently reads or corrupts memory instead of
failing. This runs the kernel test modules in a subprocess with bounds checking on, compiled into a
separate Numba cache so the checked (slow) machine code never replaces the normal cached kernels.
"""
import os
import subprocess
import sys

KERNEL_TESTS = ["test_conv3d.py", "test_conv_transpose3d.py", "test_batchnorm3d.py", "test_channel_sum.py",
                "test_maxpool3d.py", "test_relu.py", "test_concat.py", "test_winograd.py",
                "test_winograd_grad_weight.py"]


def test_kernel_tests_pass_with_bounds_checking(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    environment = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
               *(os.path.join(here, name) for name in KERNEL_TESTS)]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
