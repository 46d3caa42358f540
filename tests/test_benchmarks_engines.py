"""The step benchmark's engines (benchmarks/engines.py) at 16^3, one timed repeat: every engine that
runs computes what nn3d computes, and one that cannot run is reported as not run, never dropped.
torch.compile is left out here (its first call compiles for about 40 s); `python -m benchmarks.step`
runs it.
"""
import sys

import numpy as np
import pytest

from benchmarks.engines import export_onnx, ours_runner
from benchmarks.step import markdown_table, time_engines

SIZE, THREADS, REPEATS = 16, 2, 1
EAGER = ["torch_ncdhw", "torch_channels_last"]

# float32 against float32: the output passes through 15 convolutions (Winograd in nn3d, oneDNN,
# ONNX Runtime's or OpenVINO's kernels in the others, each summing in its own order) and 14
# BatchNorms; each adds relative rounding noise of about 6e-8 * sqrt(reduction length ~ 1e3), a few
# 1e-6 in all. 1e-4 of the output's largest value (of the loss, for a training step) leaves a wide
# margin, while a wrong weight, a missed BatchNorm or a swapped concatenation is off by order 1.
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "unet.onnx")
    export_onnx(path, SIZE, ours_runner(SIZE, "eval")[0])
    return path


def scale(mode):
    """The largest |value| of nn3d's output (eval) or its loss (train), from the initial weights."""
    return float(np.max(np.abs(ours_runner(SIZE, mode)[1]())))


@pytest.mark.parametrize("mode, names", [("train", EAGER), ("eval", EAGER + ["onnxruntime", "openvino"])])
def test_every_engine_matches_nn3d(mode, names, onnx_path):
    result = time_engines(SIZE, mode, THREADS, REPEATS, names, onnx_path)
    assert list(result["engines"]) == names
    tolerance = RELATIVE_TOLERANCE * scale(mode)
    for name, entry in result["engines"].items():
        assert "not_run" not in entry, f"{name}: {entry.get('not_run')}"
        assert entry["max_abs_diff"] <= tolerance, name
        assert entry["s"] > 0 and entry["first_call_s"] > 0
    assert result["fastest"] in names
    assert result["speedup"] == pytest.approx(result["fastest_s"] / result["ours_s"])


def test_a_missing_engine_is_reported_not_run(monkeypatch, onnx_path):
    monkeypatch.setitem(sys.modules, "openvino", None)          # `import openvino` now fails
    result = time_engines(SIZE, "eval", THREADS, REPEATS, ["onnxruntime", "openvino"], onnx_path)
    assert result["engines"]["openvino"]["not_run"].startswith("ModuleNotFoundError: import of openvino")
    assert result["fastest"] == "onnxruntime"                   # the ratio is against what ran
    table = markdown_table([{"size": SIZE, "eval": result, "train": result}], ["onnxruntime", "openvino"])
    assert "| not run: ModuleNotFoundError: import of openvino" in table


def test_a_failed_export_leaves_the_onnx_engines_not_run():
    result = time_engines(SIZE, "eval", THREADS, REPEATS, ["onnxruntime", "openvino"],
                          RuntimeError("exporter missing\nsecond line"))
    assert all(entry == {"not_run": "ONNX export: RuntimeError: exporter missing"}
               for entry in result["engines"].values())
    assert result["fastest"] is None and result["speedup"] is None


def test_machine_info_names_the_instruction_set_the_kernels_compile_for():
    """The results name the ISA and the tile width of their run (the README keeps one table per ISA)."""
    from benchmarks.common import machine_info
    from nn3d.kernels.register_tile import BLOCK_W, compiling_for

    machine = machine_info(THREADS)
    features = compiling_for().split(",")
    assert machine["isa"] == ("AVX-512" if "+avx512f" in features else "AVX2" if "+avx2" in features else "other")
    assert machine["tile_width"] == BLOCK_W and machine["cpu_model"]
