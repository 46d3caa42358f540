"""python -m mri2ct.train end to end, in subprocesses as a user runs it: every output file, exact
resume after kill -9, and the one-line errors. Tiny on purpose: 4 patients of 32^3 at 6 mm
(2 train / 1 val / 1 test), features 4 8 16 32, one thread (bit-reproducible)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mri2ct.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mri2ct import infer, train
from mri2ct.common import errors
from mri2ct.data import generate_cohort
from mri2ct.model import UNet3D
from mri2ct.training.folder_lock import lock_folder

TINY = ["--features", "4", "8", "16", "32", "--threads", "1"]
HISTORY_KEYS = {"epoch", "train_loss", "val_loss", "val_mae_hu", "lr", "seconds"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cohort") / "cohort")
    generate_cohort(root, patients=4, seed=0, shape=32, spacing=6.0, workers=1)
    return root


def train_command(data, out, *flags):
    return [sys.executable, "-m", "mri2ct.train", "--data", data, "--out", out, *TINY, *flags]


def run_train(data, out, *flags):
    return subprocess.run(train_command(data, out, *flags), capture_output=True, text=True, timeout=300)


def train_error(capsys, data, out, *flags):
    """Run the trainer in this process (faster than a subprocess) on bad input: its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        errors.run(train.main, ["--data", data, "--out", out, "--features", "4", "8", "16", "32", *flags])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def error_line(result):
    """The tool's one-line error: exit status 2, the last stderr line, and no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def read_history(out):
    with open(os.path.join(out, "history.json")) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def straight_run(cohort, tmp_path_factory):
    """4 epochs in one go, keeping epoch_002.npz and epoch_004.npz."""
    out = str(tmp_path_factory.mktemp("straight"))
    result = run_train(cohort, out, "--epochs", "4", "--checkpoint-every", "2")
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_writes_every_output(straight_run):
    out, result = straight_run
    assert sorted(os.listdir(out)) == [".lock", "best.npz", "epoch_002.npz", "epoch_004.npz", "final.npz",
                                       "history.json", "latest.npz", "split.json", "training_curves.png"]
    history = read_history(out)
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert all(set(record) >= HISTORY_KEYS for record in history)
    assert history[0]["lr"] == pytest.approx(1e-4)
    assert history[0]["lr"] > history[1]["lr"] > history[3]["lr"]          # cosine decay
    assert history[-1]["train_loss"] < history[0]["train_loss"]             # it learns
    assert result.stdout.count("val MAE") == 4                               # one summary per epoch

    with np.load(os.path.join(out, "latest.npz"), allow_pickle=False) as archive:  # plain NumPy reads it
        assert archive["model/enc1.conv1.weight"].shape == (4, 1, 3, 3, 3)
    latest = load_checkpoint(os.path.join(out, "latest.npz"))
    assert latest["epoch"] == 4 and len(latest["history"]) == 4
    assert latest["optimizer"]["step"] == 8 and latest["scheduler"]["last_epoch"] == 8  # 4 epochs x 2
    assert latest["config"]["features"] == [4, 8, 16, 32] and latest["config"]["shape"] == 32
    best = load_checkpoint(os.path.join(out, "best.npz"))
    assert best["val_loss"] == min(record["val_loss"] for record in history)


def test_resume_after_kill_matches_straight_run(cohort, straight_run, tmp_path):
    """kill -9 during epoch 3 or 4, then --resume latest: the same history as the straight run."""
    out = str(tmp_path / "killed")
    process = subprocess.Popen(train_command(cohort, out, "--epochs", "4", "--checkpoint-every", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history_path = os.path.join(out, "history.json")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.exists(history_path) and len(read_history(out)) >= 2:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = load_checkpoint(os.path.join(out, "latest.npz"))["epoch"]
    assert 2 <= interrupted_at < 4, "the kill must land before the run ends"

    result = run_train(cohort, out, "--epochs", "4", "--checkpoint-every", "2", "--resume", "latest")
    assert result.returncode == 0, result.stderr
    assert f"resuming {os.path.join(out, 'latest.npz')}: {interrupted_at} of 4 epochs done" in result.stdout
    resumed, straight = read_history(out), read_history(straight_run[0])
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    for key in ("train_loss", "val_loss", "val_mae_hu", "lr"):
        np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in straight], rtol=1e-6,
                                   err_msg=key)
    final, final_straight = (load_checkpoint(os.path.join(folder, "final.npz"))["model"]
                             for folder in (out, straight_run[0]))
    for key, value in final_straight.items():
        np.testing.assert_allclose(final[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


def test_folder_without_patients(tmp_path):
    empty = tmp_path / "not_a_cohort"
    empty.mkdir()
    result = run_train(str(empty), str(tmp_path / "out"), "--epochs", "1")
    assert "not_a_cohort: no patient folders" in error_line(result)


def test_corrupt_checkpoint(cohort, straight_run, tmp_path, capsys):
    broken = tmp_path / "broken.npz"
    with open(os.path.join(straight_run[0], "latest.npz"), "rb") as file:
        broken.write_bytes(file.read()[:5000])                             # truncated mid-write
    with pytest.raises(CheckpointError, match="broken.npz: not a readable .npz checkpoint"):
        load_checkpoint(str(broken))
    line = train_error(capsys, cohort, str(tmp_path / "out"), "--epochs", "4", "--resume", str(broken))
    assert line.startswith(f"error: {broken}: not a readable .npz checkpoint")


def test_checkpoint_of_other_features(cohort, straight_run, tmp_path, capsys):
    line = train_error(capsys, cohort, str(tmp_path / "out"), "--epochs", "4", "--features", "8", "8", "16",
                       "32", "--resume", os.path.join(straight_run[0], "latest.npz"))
    assert "latest.npz: does not fit this model" in line
    assert "enc1.conv1.weight" in line and "--features 4 8 16 32" in line


def test_resume_with_other_settings(cohort, straight_run, tmp_path, capsys):
    line = train_error(capsys, cohort, str(tmp_path / "out"), "--epochs", "4", "--lr", "0.01",
                       "--resume", os.path.join(straight_run[0], "latest.npz"))
    assert "trained with lr = 0.0001, this run has 0.01" in line


def test_refuses_to_overwrite_a_run(cohort, straight_run, capsys):
    assert "already holds a run" in train_error(capsys, cohort, straight_run[0], "--epochs", "4")


def test_checkpoint_round_trip_keeps_types(tmp_path):
    model = UNet3D(features=[1, 1, 1, 1]).state_dict()
    state = {"epoch": 3, "model": model, "config": {"data": "/abs", "features": [1, 1, 1, 1]},
             "optimizer": {"betas": (0.9, 0.999), "step": np.int64(7), "exp_avg": [np.ones((2, 3))],
                           "by_index": {0: "zero"}}}
    save_checkpoint(tmp_path / "state.npz", state)
    loaded = load_checkpoint(tmp_path / "state.npz")
    assert loaded["optimizer"]["betas"] == (0.9, 0.999) and loaded["optimizer"]["by_index"] == {0: "zero"}
    assert loaded["optimizer"]["step"] == 7 and loaded["optimizer"]["step"].dtype == np.int64
    assert loaded["model"]["head.bias"].dtype == np.float32 and loaded["config"]["data"] == "/abs"
    np.testing.assert_array_equal(loaded["optimizer"]["exp_avg"][0], np.ones((2, 3)))
    assert os.listdir(tmp_path) == ["state.npz"]                           # no temporary file left


def test_a_second_trainer_on_the_folder_is_refused(cohort, straight_run, capsys):
    """While one run owns the folder (holds its lock), another trainer, even with --resume latest,
    stops at once with one line and exit status 1, writing nothing."""
    out = straight_run[0]
    before = {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)}
    with lock_folder(out):
        with pytest.raises(SystemExit) as exit_info:
            errors.run(train.main, ["--data", cohort, "--out", out, *TINY, "--epochs", "5", "--resume", "latest"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {out} is in use by another run (it holds the lock .lock); wait for it to finish or choose "
        f"another --out"]
    assert {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)} == before


def test_cohort_without_parameters_gives_a_checkpoint_infer_reads(cohort, tmp_path, dead_pid):
    """A manifest without "parameters" (any hand-made cohort): the run takes the window and spacing
    from the data, so infer can use its checkpoint. A temporary file a killed writer left in --out is
    removed by the new run."""
    data = tmp_path / "cohort"
    shutil.copytree(cohort, data)
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["parameters"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    out.mkdir()
    stray = out / f".latest.npz.{dead_pid}.abcd1234.tmp-latest.npz"
    stray.write_bytes(b"")
    errors.run(train.main, ["--data", str(data), "--out", str(out), *TINY, "--epochs", "1"])
    assert not stray.exists()
    assert {key: load_checkpoint(out / "final.npz")["config"][key] for key in ("shape", "spacing")} == \
        {"shape": 32, "spacing": 6.0}
    patient = manifest["split"]["test"][0]
    errors.run(infer.main, ["--checkpoint", str(out / "final.npz"), "--input", str(data / patient / "mr.nii.gz"),
                         "--output", str(tmp_path / "sct.nii.gz"), "--threads", "1"])
    assert os.path.exists(tmp_path / "sct.nii.gz")
