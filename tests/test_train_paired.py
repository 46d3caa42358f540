"""Training and evaluation on a paired folder (mixed shapes, orientations, dtypes, masks missing):
patches, batches, whole-scan validation, split.json, exact resume, metrics on the original grids.
Tiny: 4 patients at 8 mm, 16^3 patches, features 4 8 16 32, one thread."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mri2ct import evaluate, train
from mri2ct.common import errors
from mri2ct.training.checkpoint import load_checkpoint
from mri2ct.data import PatientSet, generate_cohort, open_data_folder, read_scan

TINY = ["--features", "4", "8", "16", "32", "--threads", "1", "--patch", "16", "--batch-size", "2"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("paired") / "pairs")
    generate_cohort(root, patients=4, seed=2, shape=(24, 28, 26), spacing=8.0, workers=1, layout="paired")
    return root


def run_train(data, out, *flags):
    command = [sys.executable, "-m", "mri2ct.train", "--data", data, "--out", out, *TINY, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(pairs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    result = run_train(pairs, out, "--epochs", "3", "--val-every", "2", "--checkpoint-every", "1")
    assert result.returncode == 0, result.stderr
    return out, result


def test_paired_run_trains_on_patches_with_its_split(pairs, run):
    out, result = run
    with open(os.path.join(out, "split.json")) as file:
        split = json.load(file)
    assert sorted(sum(split.values(), [])) == open_data_folder(pairs).ids
    assert [len(split[name]) for name in ("train", "val", "test")] == [2, 1, 1]
    assert "patches 16^3, batch 2" in result.stdout and "at 8.0 mm" in result.stdout
    with open(os.path.join(out, "history.json")) as file:
        history = json.load(file)
    assert [record["val_loss"] is None for record in history] == [True, False, False]  # every 2 and last
    state = load_checkpoint(os.path.join(out, "final.npz"))
    assert state["config"]["shape"] == 16 and state["config"]["spacing"] == 8.0
    assert state["config"]["split"] == split and state["scheduler"]["last_epoch"] == 3  # 1 step per epoch
    assert sorted(os.listdir(pairs)) == ["patient_000", "patient_001", "patient_002", "patient_003",
                                         "phantom.json"]                   # nothing written there


def test_resume_gives_the_uninterrupted_run(pairs, run, tmp_path):
    """A run stopped after epoch 1 (its latest.npz is epoch_001.npz) and resumed ends where the
    straight run ended: the patch plan depends on (seed, epoch, step) only."""
    out, _ = run
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    shutil.copy(os.path.join(out, "epoch_001.npz"), os.path.join(resumed, "latest.npz"))
    result = run_train(pairs, resumed, "--epochs", "3", "--val-every", "2", "--checkpoint-every", "1",
                       "--resume", "latest")
    assert result.returncode == 0, result.stderr
    assert "1 of 3 epochs done" in result.stdout
    final, straight = (load_checkpoint(os.path.join(folder, "final.npz")) for folder in (resumed, out))
    for key, value in straight["model"].items():
        np.testing.assert_array_equal(final["model"][key], value, err_msg=key)   # one thread: bit for bit
    for key in ("train_loss", "val_loss", "val_mae_hu", "lr"):
        assert [r[key] for r in final["history"]] == [r[key] for r in straight["history"]], key


def test_evaluate_on_the_original_grids(pairs, run, tmp_path, capsys):
    out, _ = run
    csv_path = tmp_path / "metrics.csv"
    errors.run(evaluate.main, ["--checkpoint", os.path.join(out, "final.npz"), "--data", pairs,
                            "--out", str(csv_path), "--threads", "1"])
    with open(csv_path) as file:
        rows = list(csv.DictReader(file))
    with open(os.path.join(out, "split.json")) as file:
        assert [row["patient"] for row in rows] == json.load(file)["test"]
    assert all(np.isfinite(float(rows[0][key])) for key in ("mae", "rmse", "psnr", "ssim", "mae_whole"))
    assert rows[0]["mae_bone"] == "nan"                                  # no labels in a paired folder
    stdout = capsys.readouterr().out
    assert "original grids" in stdout and "mae_bone" not in stdout


def test_prediction_comes_back_to_the_file_grid(pairs):
    """An LPS-stored patient: the sCT evaluate compares has the file's shape and axis order (a
    prediction equal to the CT itself would give MAE 0 only in that order)."""
    folder = open_data_folder(pairs)
    scan = read_scan(folder, "patient_001")                               # stored LPS, uint16 MR
    patient = PatientSet(folder, ["patient_001"], 8.0, os.environ["MRI2CT_CACHE"]).patient(0)

    class Echo:   # a "model" that returns the true CT (network scale) of the window it is shown
        def __init__(self):
            self.ct = np.asarray(patient.ct_hu) / 1000

        def eval(self):
            pass

        def forward(self, x):
            return np.ascontiguousarray(self.ct[None, None])

    model = Echo()
    window = patient.mr.shape
    predicted = evaluate.predict_original_grid(model, patient, window)
    assert predicted.shape == scan.ct.shape
    np.testing.assert_allclose(predicted, np.clip(scan.ct, -1024, 3000), atol=0.5)


def test_whole_volume_training_needs_one_shape(pairs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        errors.run(train.main, ["--data", pairs, "--out", str(tmp_path / "out"), "--features", "4", "8", "16",
                             "32", "--epochs", "1"])
    assert "train on patches (--patch N)" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--patch", "20"], "argument --patch: must be a multiple of 8 of at least 16, got 20"),
    (["--spacing", "0"], "argument --spacing: must be a finite number in [0.1, 10], got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
])
def test_bad_flags(pairs, tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--data", pairs, "--out", str(tmp_path), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_split_file_is_used_and_checked(pairs, tmp_path, capsys):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["patient_000"], "val": ["patient_404"], "test": []}))
    with pytest.raises(SystemExit):
        errors.run(train.main, ["--data", pairs, "--out", str(tmp_path / "out"), "--split", str(split),
                             "--patch", "16", "--epochs", "1"])
    assert "val patient 'patient_404' is not a patient folder of" in capsys.readouterr().err
