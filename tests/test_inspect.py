"""python -m mri2ct.inspect: the per-layer table and figure of one training step, the wrappers that
take the numbers (and leave the model as it was), and the one-line errors. Tiny on purpose: 3
patients of 32^3 at 6 mm (1 train / 1 val / 1 test) and a fresh model with features 4 8 16 32."""
import os

import numpy as np
import pytest

import nn3d
from mri2ct import inspect
from mri2ct.common import errors
from mri2ct.training.checkpoint import save_checkpoint
from mri2ct.data import generate_cohort, open_split
from mri2ct.model import UNet3D

FEATURES = (4, 8, 16, 32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cohort") / "cohort")
    generate_cohort(root, patients=3, seed=0, shape=32, spacing=6.0, workers=1)
    return root


def fresh_model():
    nn3d.manual_seed(0)
    return UNet3D(features=FEATURES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run") / "fresh.npz")
    save_checkpoint(path, {"epoch": 0, "model": fresh_model().state_dict(),
                           "config": {"features": list(FEATURES), "shape": 32, "spacing": 6.0}})
    return path


def test_table_lists_every_layer_and_the_figure_is_written(cohort, checkpoint, capsys):
    errors.run(inspect.main, ["--checkpoint", checkpoint, "--data", cohort])
    output = capsys.readouterr().out
    figure = os.path.join(os.path.dirname(checkpoint), "inspect.png")       # default: next to the checkpoint
    assert os.path.getsize(figure) > 10_000
    rows = {line.split()[0]: line.split() for line in output.splitlines() if line[:1].isalpha()}
    layers = [name for name, _ in inspect.leaf_modules(fresh_model())]
    assert len(layers) == 35                    # 7 blocks x 4 (ReLU fused into BatchNorm), 3 pools, 3 ups, head
    for name in layers:
        assert name in rows, f"layer {name} missing from the table"
    first_train_patient = open_split(cohort, "train").ids[0]
    assert first_train_patient in output
    # Conv3d rows carry both parameter norms, MaxPool rows none.
    assert rows["head"][-1] != "-" and rows["pool1"][-2:] == ["-", "-"]


def test_numbers_are_those_of_a_training_step(cohort):
    """The recorded statistics equal those computed directly, and what BatchNorm implies holds."""
    model = fresh_model()
    x, target = open_split(cohort, "train")[0]
    loss, records, total = inspect.inspect_step(model, x, target)
    by_name = {record.name: record for record in records}
    assert [record.name for record in records][:3] == ["enc1.conv1", "enc1.bn1", "enc1.conv2"]
    assert records[-1].name == "head"

    reference = fresh_model().train()
    enc1_conv1 = reference.enc1.conv1.forward(x)
    assert by_name["enc1.conv1"].act_mean == pytest.approx(float(enc1_conv1.mean(dtype=np.float64)), rel=1e-5)
    criterion = nn3d.MSELoss()
    assert loss == pytest.approx(criterion.forward(reference.forward(x), target), rel=1e-6)
    reference.zero_grad()
    grad_head = criterion.backward()
    reference.backward(grad_head)
    assert by_name["head"].grad_output_norm == pytest.approx(np.linalg.norm(grad_head), rel=1e-5)
    assert by_name["head"].param_grad_norms["weight"] == pytest.approx(
        np.linalg.norm(reference.head.weight.grad), rel=1e-4)
    assert total == pytest.approx(np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2)
                                              for p in reference.parameters())), rel=1e-4)
    # BatchNorm (gamma = 1, beta = 0) then its fused ReLU: relu(z) of a zero-mean, unit-variance z, so
    # 0 < mean and std < 1 (E relu(z)^2 <= E z^2 = 1); the conv bias before it: ~0 gradient.
    assert 0 < by_name["enc1.bn1"].act_mean < 1 and 0 < by_name["enc1.bn1"].act_std < 1
    assert by_name["enc1.conv1"].param_grad_norms["bias"] < 1e-4 * by_name["enc1.conv1"].param_grad_norms["weight"]


def test_wrappers_are_removed_afterwards(cohort):
    model = fresh_model()
    x, target = open_split(cohort, "train")[0]
    with inspect.record_layers(model) as records:
        assert "forward" in model.head.__dict__
        model.forward(x)
    assert len(records) == 35
    assert all("forward" not in module.__dict__ and "backward" not in module.__dict__
               for _, module in model.named_modules())
    assert type(model.head).forward is nn3d.Conv3d.forward


@pytest.mark.parametrize("flags, message", [
    (["--checkpoint", "{tmp}/missing.npz", "--data", "{cohort}"], "no such checkpoint file"),
    (["--checkpoint", "{checkpoint}", "--data", "{tmp}/no_cohort"], "no such folder"),
    (["--checkpoint", "{checkpoint}", "--data", "{cohort}", "--patient", "7"], "out of range"),
    (["--checkpoint", "{checkpoint}", "--data", "{cohort}", "--split", "holdout"], "no split 'holdout'"),
    (["--checkpoint", "{checkpoint}", "--data", "{cohort}", "--out", "{cohort}/manifest.json"],
     "manifest.json: not a picture file name"),
])
def test_user_errors_are_one_line(flags, message, cohort, checkpoint, tmp_path, capsys):
    values = {"tmp": str(tmp_path), "cohort": cohort, "checkpoint": checkpoint}
    with pytest.raises(SystemExit) as exit_info:
        errors.run(inspect.main, [flag.format(**values) for flag in flags])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
