"""mri2ct.export: the ONNX file against nn3d's eval forward in ONNX Runtime, on shapes the model never
saw; its graph, metadata and checks; an export with PyTorch unimportable; every bad input's one line."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest

import nn3d
from mri2ct import __version__, export
from mri2ct.common import errors
from mri2ct.training.checkpoint import model_from_checkpoint, save_checkpoint
from mri2ct.data.normalise import HU_SCALE, MR_MAX
from mri2ct.inference import onnx_graph
from mri2ct.model import UNet3D
from mri2ct.inference.sliding_window import HU_RANGE, MR_CLIP_PERCENTILES, synthesize_ct

FEATURES = [4, 8, 16, 32]


def tiny_checkpoint(path, **config):
    """An untrained tiny model with BatchNorm statistics and affine maps drawn at random, so that the
    folding has something to fold (a fresh BatchNorm is the identity)."""
    nn3d.manual_seed(0)
    state = UNet3D(features=FEATURES).state_dict()
    rng = np.random.default_rng(0)
    for name, value in state.items():
        if ".bn" in name and value.dtype.kind == "f":                    # not num_batches_tracked
            kind = name.rsplit(".", 1)[1]
            low, high = {"running_var": (0.5, 2.0), "weight": (0.5, 1.5)}.get(kind, (-0.3, 0.3))
            value[...] = rng.uniform(low, high, value.shape)
    config = {"features": FEATURES, "shape": 32, "spacing": 6.0, **config}
    config = {key: value for key, value in config.items() if value is not None}   # None: left out
    save_checkpoint(path, {"epoch": 7, "model": state, "config": config})
    return str(path)


def run_export(checkpoint, output, capsys):
    """Run the export as its command line does, in this process; returns (exit code, stdout, stderr)."""
    try:
        errors.run(export.main, ["--checkpoint", str(checkpoint), "--onnx", str(output)])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err):
    assert code == errors.USAGE_ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def session(path):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("run") / "best.npz")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "sct.onnx"
    errors.run(export.main, ["--checkpoint", checkpoint, "--onnx", str(path)])
    return str(path)


# ---- the file -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 16, 24, 32), (1, 1, 40, 8, 16)])
def test_onnx_runtime_matches_nn3d_eval_forward(shape, checkpoint, exported):
    """Batch and spatial sizes the model was not trained on (32^3, batch 1)."""
    x = np.random.default_rng(1).uniform(0, MR_MAX, shape).astype(np.float32)
    (y,) = session(exported).run(None, {onnx_graph.INPUT: x})
    model, _ = model_from_checkpoint(checkpoint)
    with nn3d.no_grad():
        expected = model.forward(x)
    assert y.shape == expected.shape == shape
    assert np.abs(y - expected).max() <= 1e-5 * (expected.max() - expected.min())


def test_graph_is_the_folded_unet_with_dynamic_axes(exported):
    model = onnx.load(exported)
    onnx.checker.check_model(model, full_check=True)
    assert [(opset.domain, opset.version) for opset in model.opset_import] == [("", 17)]
    assert {node.op_type for node in model.graph.node} == {"Conv", "Relu", "MaxPool", "ConvTranspose", "Concat"}
    assert sum(node.op_type == "Conv" for node in model.graph.node) == 15   # 7 blocks x 2 + head
    for value in (*model.graph.input, *model.graph.output):
        dims = [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        assert dims == ["batch", 1, "depth", "height", "width"]


def test_metadata_holds_what_infer_does_around_the_network(exported):
    model = onnx.load(exported)
    assert (model.producer_name, model.producer_version) == (onnx_graph.PRODUCER, __version__)
    values = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    assert values["version"] == __version__
    assert values["features"] == FEATURES and values["checkpoint_epoch"] == 7
    assert values["training_spacing_mm"] == [6.0] * 3 and values["window_voxels"] == [32] * 3
    assert values["mr_clip_percentiles"] == list(MR_CLIP_PERCENTILES)
    assert values["mr_normalisation"]["clip"] == [0.0, MR_MAX]
    assert values["hu_scale"] == HU_SCALE and values["hu_clip"] == list(HU_RANGE)


def test_synthesize_ct_with_the_onnx_file_is_infer(checkpoint, exported):
    """The README's recipe: mri2ct's own pre- and post-processing around an ONNX Runtime session."""
    onnx_session = session(exported)

    class OnnxModel:
        def forward(self, x):
            return onnx_session.run(None, {onnx_graph.INPUT: x})[0]

    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (30, 36, 28)], indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(0))
    mr = np.where(radius < 0.8, 300.0, 5.0) + np.where(radius < 0.5, 200.0, 0.0)
    mr = (mr + np.random.default_rng(2).normal(0, 10, mr.shape)).astype(np.float32)
    model, state = model_from_checkpoint(checkpoint)
    frame = ((32, 32, 32), (6.0, 6.0, 6.0))
    expected = synthesize_ct(model, mr, (5.0, 5.0, 5.0), *frame)
    hu = synthesize_ct(OnnxModel(), mr, (5.0, 5.0, 5.0), *frame)
    assert np.abs(hu - expected).max() <= 1e-5 * (expected.max() - expected.min())


def export_without(module, checkpoint, output):
    """`python -m mri2ct.export` in a process where importing `module` fails and is reported on stderr."""
    blocker = (
        "import importlib.abc, runpy, sys\n"
        "class Blocker(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r} or name.startswith({module!r} + '.'):\n"
        "            print('tried to import ' + name, file=sys.stderr)\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "sys.argv = ['mri2ct.export'] + sys.argv[1:]\n"
        "runpy.run_module('mri2ct.export', run_name='__main__', alter_sys=True)\n")
    return subprocess.run([sys.executable, "-c", blocker, "--checkpoint", checkpoint, "--onnx", str(output)],
                          capture_output=True, text=True, timeout=300)


def test_export_never_imports_torch(checkpoint, tmp_path):
    result = export_without("torch", checkpoint, tmp_path / "sct.onnx")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'sct.onnx'}") and (tmp_path / "sct.onnx").is_file()


def test_export_without_onnx_says_what_to_install(checkpoint, tmp_path):
    result = export_without("onnx", checkpoint, tmp_path / "sct.onnx")
    assert result.returncode == errors.USAGE_ERROR
    assert result.stderr.splitlines()[-1] == "error: exporting needs the onnx package: pip install -e '.[export]'"
    assert list(tmp_path.iterdir()) == []


# ---- bad input ----------------------------------------------------------------------------------
def test_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    fake = tmp_path / "best.npz"
    fake.write_text("not a checkpoint\n")
    code, _, err = run_export(fake, tmp_path / "sct.onnx", capsys)
    assert "not an mri2ct checkpoint" in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == [fake]


def test_an_incomplete_config(tmp_path, capsys):
    incomplete = tiny_checkpoint(tmp_path / "old.npz", spacing=None)
    code, _, err = run_export(incomplete, tmp_path / "sct.onnx", capsys)
    assert one_line_error(code, err) == (f"error: {incomplete}: checkpoint config has no spacing; it cannot "
                                         f"be used for prediction")
    assert not (tmp_path / "sct.onnx").exists()


def foreign_onnx(path):
    """An ONNX file someone else wrote: one Relu."""
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "other", [value],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, producer_name="someone-else"), path)


@pytest.mark.parametrize("kind", ["text", "onnx"])
def test_an_existing_file_the_exporter_did_not_write_is_kept(kind, checkpoint, tmp_path, capsys):
    target = tmp_path / "sct.onnx"
    target.write_text("my notes\n") if kind == "text" else foreign_onnx(target)
    before = target.read_bytes()
    code, _, err = run_export(checkpoint, target, capsys)
    assert one_line_error(code, err) == (f"error: --onnx {target}: exists and was not written by "
                                         f"mri2ct.export; choose another file name or delete it")
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]


def test_a_name_without_onnx_suffix_is_refused(checkpoint, tmp_path, capsys):
    code, _, err = run_export(checkpoint, tmp_path / "best.npz", capsys)
    assert one_line_error(code, err) == f"error: --onnx {tmp_path / 'best.npz'}: give a .onnx file name"
    assert not (tmp_path / "best.npz").exists()


def test_re_export_replaces_the_exporters_own_file(checkpoint, exported, tmp_path, capsys):
    target = tmp_path / "sct.onnx"
    target.write_bytes(open(exported, "rb").read())
    other = tiny_checkpoint(tmp_path / "other.npz", shape=[16, 24, 32])
    code, out, err = run_export(other, target, capsys)
    assert code == 0 and err == "" and out.startswith(f"wrote {target}")
    metadata = {prop.key: prop.value for prop in onnx.load(target).metadata_props}
    assert json.loads(metadata["window_voxels"]) == [16, 24, 32]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.npz", "sct.onnx"]
