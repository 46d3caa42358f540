"""mri2ct.evaluate, mri2ct.infer and mri2ct.visualize on a tiny cohort (4 patients, 32^3 at 6 mm) with
an untrained tiny model: the geometry, the files, the blending, and every bad input's one-line error."""
import csv
import os

import nibabel as nib
import numpy as np
import pytest

import nn3d
from mri2ct import cli, evaluate, infer, predict, visualize
from mri2ct.checkpoint import save_checkpoint
from mri2ct.data import generate_cohort, read_manifest
from mri2ct.model import UNet3D
from mri2ct.orientation import from_ras, to_ras

FEATURES = [4, 8, 16, 32]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cohort") / "cohort")
    generate_cohort(root, patients=4, seed=0, shape=32, spacing=6.0, workers=1)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny model saved as mri2ct.train would save it (only what evaluation reads)."""
    nn3d.manual_seed(0)
    model = UNet3D(features=FEATURES)
    path = str(tmp_path_factory.mktemp("run") / "best.npz")
    save_checkpoint(path, {"epoch": 1, "model": model.state_dict(),
                           "config": {"features": FEATURES, "shape": 32, "spacing": 6.0}})
    return path


@pytest.fixture(scope="module")
def patient(cohort):
    """Folder of the cohort's one test-split patient."""
    (test_patient,) = read_manifest(cohort)["split"]["test"]
    return os.path.join(cohort, test_patient)


def run_cli(module, argv, capsys):
    """Run a tool as its command line does, in this process; returns (exit code, stdout, stderr)."""
    try:
        cli.run(module.main, argv)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- sliding windows ----------------------------------------------------------------------------
class Identity:
    """A stand-in model whose output equals its input: blending must then give back the volume."""

    def forward(self, x):
        return x


def test_sliding_window_blending_is_normalised():
    volume = np.random.default_rng(0).standard_normal((45, 32, 20)).astype(np.float32)  # 2x1x1 windows+
    prediction = predict.predict_sliding_window(Identity(), volume, (16, 16, 16))
    np.testing.assert_allclose(prediction, volume, rtol=1e-5, atol=1e-6)


def test_window_starts_cover_the_volume():
    assert predict.window_starts(64, 64) == [0]
    assert predict.window_starts(100, 64) == [0, 32, 36]
    assert predict.window_starts(96, 32) == [0, 16, 32, 48, 64]


def test_orientation_round_trip():
    volume = np.arange(24).reshape(2, 3, 4)
    affine = np.array([[0, 0, -2.0, 0], [-1.5, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])  # axes: P S L
    ras, orientation, spacing = to_ras(volume, affine)
    assert ras.shape == (4, 2, 3) and spacing.tolist() == [2.0, 1.5, 3.0]
    np.testing.assert_array_equal(from_ras(ras, orientation), volume)


# ---- infer --------------------------------------------------------------------------------------
def test_infer_non_cubic_scan_with_other_spacing_and_orientation(patient, checkpoint, tmp_path, capsys):
    """A (40, 52, 28) scan at (4.5, 3.5, 7) mm stored L-A-S: written on the input's grid, with its header."""
    image = nib.load(os.path.join(patient, "mr.nii.gz"))
    mr = predict.resample(np.asarray(image.dataobj, np.float32), (40, 52, 28))[::-1]  # x flipped: L-A-S
    affine = np.diag([-4.5, 3.5, 7.0, 1.0])
    affine[:3, 3] = (90.0, -91.0, -98.0)
    source = nib.Nifti1Image(mr, affine)
    source.header["descrip"] = b"test scan"
    nib.save(source, tmp_path / "mr.nii.gz")

    output = tmp_path / "sct.nii.gz"
    code, out, err = run_cli(infer, ["--checkpoint", checkpoint, "--input", str(tmp_path / "mr.nii.gz"),
                                     "--output", str(output)], capsys)
    assert code == 0, err
    written = nib.load(output)
    assert written.shape == (40, 52, 28) and written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.affine, affine)
    assert written.header["descrip"].tobytes().rstrip(b"\0") == b"test scan"
    sct = np.asarray(written.dataobj)
    assert np.isfinite(sct).all() and sct.std() > 0
    assert sorted(os.listdir(tmp_path)) == ["mr.nii.gz", "sct.nii.gz"]  # no temporary file left


def test_infer_follows_the_orientation(patient, checkpoint, tmp_path, capsys):
    """The same scan stored with its first axis reversed gives the same sCT, reversed."""
    image = nib.load(os.path.join(patient, "mr.nii.gz"))
    flipped_affine = image.affine @ np.array([[-1, 0, 0, 31], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    flipped = nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), flipped_affine)
    nib.save(flipped, tmp_path / "flip.nii.gz")
    outputs = []
    for name, source in (("a", os.path.join(patient, "mr.nii.gz")),
                         ("b", str(tmp_path / "flip.nii.gz"))):
        code, _, err = run_cli(infer, ["--checkpoint", checkpoint, "--input", source,
                                       "--output", str(tmp_path / f"{name}.nii.gz")], capsys)
        assert code == 0, err
        outputs.append(np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj))
    np.testing.assert_allclose(outputs[1], outputs[0][::-1], atol=1e-3)


def bad_inputs(folder):
    """{name: (path, expected message)} of inputs infer must refuse."""
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    volume = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    with_nan = volume.copy()
    with_nan[3, 4, 5] = np.nan
    files = {"4d": (np.stack([volume, volume], axis=-1), "4-D image"),
             "nan": (with_nan, "1 NaN or infinite voxels"),
             "empty": (np.zeros_like(volume), "empty image")}
    cases = {}
    for name, (data, message) in files.items():
        nib.save(nib.Nifti1Image(data, affine), folder / f"{name}.nii.gz")
        cases[name] = (str(folder / f"{name}.nii.gz"), message)
    (folder / "text.nii.gz").write_text("not an image")
    cases["not_nifti"] = (str(folder / "text.nii.gz"), "not a readable NIfTI file")
    cases["missing"] = (str(folder / "missing.nii.gz"), "no such file")
    return cases


@pytest.mark.parametrize("case", ["4d", "nan", "empty", "not_nifti", "missing"])
def test_infer_refuses_bad_input(case, checkpoint, tmp_path, capsys):
    path, message = bad_inputs(tmp_path)[case]
    output = tmp_path / "out" / "sct.nii.gz"
    output.parent.mkdir()
    argv = ["--checkpoint", checkpoint, "--input", path, "--output", str(output)]
    code, _, err = run_cli(infer, argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0] and path in lines[0]
    assert os.listdir(output.parent) == []                             # nothing written, not even partly


def test_infer_refuses_a_corrupt_checkpoint(patient, tmp_path, capsys):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = run_cli(infer, ["--checkpoint", str(broken), "--input",
                                   os.path.join(patient, "mr.nii.gz"),
                                   "--output", str(tmp_path / "sct.nii.gz")], capsys)
    assert code == 2 and err.startswith(f"error: {broken}: not a readable .npz checkpoint")


# ---- evaluate and visualize ---------------------------------------------------------------------
def test_evaluate_writes_csv_and_table(cohort, patient, checkpoint, tmp_path, capsys):
    out = tmp_path / "metrics.csv"
    code, stdout, err = run_cli(evaluate, ["--checkpoint", checkpoint, "--data", cohort, "--out", str(out)],
                                capsys)
    assert code == 0, err
    with open(out) as file:
        rows = list(csv.DictReader(file))
    assert [row["patient"] for row in rows] == [os.path.basename(patient)]
    assert set(rows[0]) == {"patient", "mae", "rmse", "psnr", "ssim", "mae_whole", "mae_bone",
                            "mae_soft_tissue", "mae_brain"}
    assert all(np.isfinite(float(value)) for key, value in rows[0].items() if key != "patient")
    assert "| mae (HU) |" in stdout and "| mae_bone (HU) |" in stdout and " ± " in stdout


def test_evaluate_on_a_folder_without_patients(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(evaluate, ["--checkpoint", checkpoint, "--data", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error: ") and "no patient folders" in err


@pytest.mark.parametrize("with_ct", [True, False])
def test_visualize(patient, tmp_path, capsys, with_ct):
    argv = ["--mri", os.path.join(patient, "mr.nii.gz"), "--pred", os.path.join(patient, "ct.nii.gz"),
            "--out", str(tmp_path / "figure.png")]
    if with_ct:  # the true CT as the "prediction": the metrics are then perfect
        argv += ["--ct", os.path.join(patient, "ct.nii.gz"), "--mask", os.path.join(patient, "mask.nii.gz")]
    code, _, err = run_cli(visualize, argv, capsys)
    assert code == 0, err
    with open(tmp_path / "figure.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
