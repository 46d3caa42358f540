"""mri2ct.evaluate, mri2ct.infer and mri2ct.visualize on a tiny cohort (4 patients, 32^3 at 6 mm) with
an untrained tiny model: the geometry, the files, the blending, and every bad input's one-line error."""
import csv
import io
import os

import nibabel as nib
import numpy as np
import pytest

import nn3d
from mri2ct import __version__, evaluate, infer, visualize
from mri2ct.common import drawing, errors
from mri2ct.data.preprocess import resample
from mri2ct.inference import sliding_window
from mri2ct.training.checkpoint import save_checkpoint
from mri2ct.data import generate_cohort, read_manifest
from mri2ct.model import UNet3D
from mri2ct.data.orientation import from_ras, to_ras

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
        errors.run(module.main, argv)
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
    prediction = sliding_window.predict_sliding_window(Identity(), volume, (16, 16, 16))
    np.testing.assert_allclose(prediction, volume, rtol=1e-5, atol=1e-6)


def test_window_starts_cover_the_volume():
    assert sliding_window.window_starts(64, 64) == [0]
    assert sliding_window.window_starts(100, 64) == [0, 32, 36]
    assert sliding_window.window_starts(96, 32) == [0, 16, 32, 48, 64]


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
    mr = resample(np.asarray(image.dataobj, np.float32), (40, 52, 28))[::-1]  # x flipped: L-A-S
    affine = np.diag([-4.5, 3.5, 7.0, 1.0])
    affine[:3, 3] = (90.0, -91.0, -98.0)
    source = nib.Nifti1Image(mr, affine)
    source.header["descrip"] = b"test scan"
    source.header["intent_name"] = b"head"
    nib.save(source, tmp_path / "mr.nii.gz")

    output = tmp_path / "sct.nii.gz"
    code, out, err = run_cli(infer, ["--checkpoint", checkpoint, "--input", str(tmp_path / "mr.nii.gz"),
                                     "--output", str(output)], capsys)
    assert code == 0, err
    written = nib.load(output)
    assert written.shape == (40, 52, 28) and written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.affine, affine)
    assert written.header["descrip"].tobytes().rstrip(b"\0") == b"mri2ct.infer " + __version__.encode()  # marked
    assert written.header["intent_name"].tobytes().rstrip(b"\0") == b"head"        # the rest of the header is the input's
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


def test_infer_a_folder_skips_and_reports_bad_scans(patient, checkpoint, tmp_path, capsys):
    """--input-dir: every NIfTI file of the folder (other files ignored); each bad one is one line
    naming it and is skipped, the good ones are written as --input writes them; exit status 2 if any
    was skipped. A rerun keeps what is there."""
    scans = tmp_path / "scans"
    scans.mkdir()
    bad = bad_inputs(scans)
    del bad["missing"]
    for name in ("a.nii.gz", "b.nii"):
        nib.save(nib.load(os.path.join(patient, "mr.nii.gz")), scans / name)
    (scans / "notes.txt").write_text("not a scan")
    out = tmp_path / "sct"
    argv = ["--checkpoint", checkpoint, "--input-dir", str(scans), "--output-dir", str(out), "--threads", "1"]
    code, stdout, err = run_cli(infer, argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == len(bad)
    for (path, message), line in zip(sorted(bad.values()), sorted(lines)):
        assert line.startswith(f"error: input MR {path}") and message in line and line.endswith("(skipped)")
    assert stdout.strip().splitlines()[-1] == "2 of 6 scans predicted into {}, 0 kept, 4 skipped: {}".format(
        out, ", ".join(sorted(os.path.basename(path) for path, _ in bad.values())))
    assert sorted(os.listdir(out)) == ["a.nii.gz", "b.nii"]
    code, _, err = infer_cli(checkpoint, scans / "a.nii.gz", tmp_path / "single.nii.gz", capsys)
    np.testing.assert_array_equal(nib.load(out / "a.nii.gz").get_fdata(), nib.load(tmp_path / "single.nii.gz").get_fdata())

    before = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
    code, stdout, _ = run_cli(infer, argv, capsys)
    assert code == 2 and "0 of 6 scans predicted" in stdout and "2 kept" in stdout
    assert {name: os.path.getmtime(out / name) for name in os.listdir(out)} == before


@pytest.mark.parametrize("flags, message", [
    (["--input-dir", "{scans}", "--output-dir", "{scans}"], "is the input folder"),
    (["--input-dir", "{empty}", "--output-dir", "{out}"], "no .nii or .nii.gz files in it"),
    (["--input-dir", "{missing}", "--output-dir", "{out}"], "no such folder")])
def test_infer_a_folder_refuses_bad_folders(flags, message, patient, checkpoint, tmp_path, capsys):
    folders = {name: tmp_path / name for name in ("scans", "empty", "missing", "out")}
    folders["scans"].mkdir()
    folders["empty"].mkdir()
    nib.save(nib.load(os.path.join(patient, "mr.nii.gz")), folders["scans"] / "a.nii.gz")
    argv = ["--checkpoint", checkpoint] + [flag.format(**folders) for flag in flags]
    assert message in one_line_error(*run_cli(infer, argv, capsys)[::2])
    assert sorted(os.listdir(tmp_path)) == ["empty", "scans"]             # nothing written


def test_infer_needs_one_pair_of_flags(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        infer.parse_args(["--checkpoint", checkpoint, "--input", "a.nii", "--output-dir", "out"])
    assert exit_info.value.code == 2
    assert "give --input and --output, or --input-dir and --output-dir" in capsys.readouterr().err


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


# ---- issue 9: no command destroys data or returns garbage ----------------------------------------
def infer_cli(checkpoint, source, output, capsys):
    return run_cli(infer, ["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output)],
                   capsys)


def one_line_error(code, err, expected_code=2):
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("link", ["same", "hard", "symbolic", "dotted"])
def test_infer_refuses_to_write_over_its_input(link, patient, checkpoint, tmp_path, capsys):
    source = tmp_path / "mr.nii.gz"
    source.write_bytes(open(os.path.join(patient, "mr.nii.gz"), "rb").read())
    before = source.read_bytes()
    output = {"same": source, "hard": tmp_path / "hard.nii.gz", "symbolic": tmp_path / "soft.nii.gz",
              "dotted": tmp_path / "." / "mr.nii.gz"}[link]
    if link == "hard":
        os.link(source, output)
    if link == "symbolic":
        os.symlink(source, output)
    line = one_line_error(*infer_cli(checkpoint, source, output, capsys)[::2])
    assert line == f"error: --output {output} is the input MR itself; choose another file name"
    assert source.read_bytes() == before


def scan_with(patient, folder, name, edit=None, affine=None):
    """A copy of the patient's MR, changed by `edit(data)` and/or given another affine."""
    image = nib.load(os.path.join(patient, "mr.nii.gz"))
    data = np.asarray(image.dataobj, np.float32).copy()
    if edit:
        edit(data)
    path = folder / name
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), path)
    return path


def test_one_absurd_voxel_does_not_move_the_output(patient, checkpoint, tmp_path, capsys):
    """One voxel of 3e38 (a corrupt file): the robust clip keeps the scale, so the sCT far from it is
    what the clean scan gives; every value is a HU value."""
    clean = scan_with(patient, tmp_path, "clean.nii.gz")
    spiked = scan_with(patient, tmp_path, "spiked.nii.gz", edit=lambda data: data.__setitem__((5, 6, 7), 3e38))
    outputs = []
    for source in (clean, spiked):
        code, _, err = infer_cli(checkpoint, source, tmp_path / f"sct_{source.name}", capsys)
        assert code == 0, err
        outputs.append(np.asarray(nib.load(tmp_path / f"sct_{source.name}").dataobj))
    far = np.ones(outputs[0].shape, bool)
    far[:12, :14, :16] = False                                  # the window around the spike
    assert np.abs(outputs[1][far] - outputs[0][far]).max() < 1.0   # HU
    assert outputs[1].min() >= -1024 and outputs[1].max() <= 3071


def tiny_checkpoint(folder, name, edit_model=None, **config):
    nn3d.manual_seed(0)
    model = UNet3D(features=FEATURES)
    state = model.state_dict()
    if edit_model:
        edit_model(state)
    path = folder / name
    save_checkpoint(path, {"epoch": 1, "model": state,
                           "config": {"features": FEATURES, "shape": 32, "spacing": 6.0, **config}})
    return path


def test_nan_checkpoint_is_refused_at_load(patient, tmp_path, capsys):
    broken = tiny_checkpoint(tmp_path, "nan.npz", lambda state: state["enc2.bn1.running_var"].fill(np.nan))
    code, _, err = infer_cli(broken, os.path.join(patient, "mr.nii.gz"), tmp_path / "sct.nii.gz", capsys)
    assert one_line_error(code, err) == (f"error: {broken}: model/enc2.bn1.running_var holds NaN or infinite "
                                         f"values; the run that wrote it diverged, use an earlier checkpoint")
    assert not (tmp_path / "sct.nii.gz").exists()


def test_a_model_that_overflows_writes_nothing(patient, tmp_path, capsys):
    """Finite but absurd weights (3e38): the output overflows to infinity; refused, exit 1."""
    absurd = tiny_checkpoint(tmp_path, "absurd.npz", lambda state: state["head.weight"].fill(3e38))
    code, _, err = infer_cli(absurd, os.path.join(patient, "mr.nii.gz"), tmp_path / "sct.nii.gz", capsys)
    assert one_line_error(code, err, expected_code=1) == ("error: the model's output holds NaN or infinite "
                                                          "values; nothing written")
    assert not (tmp_path / "sct.nii.gz").exists()


def test_written_sct_is_clipped_to_the_hu_range(patient, tmp_path, capsys):
    """A model whose head bias alone says 20000 HU: the file holds 3071 HU, the top of the CT range."""
    hot = tiny_checkpoint(tmp_path, "hot.npz", lambda state: state["head.bias"].fill(20.0))
    code, _, err = infer_cli(hot, os.path.join(patient, "mr.nii.gz"), tmp_path / "sct.nii.gz", capsys)
    assert code == 0, err
    sct = np.asarray(nib.load(tmp_path / "sct.nii.gz").dataobj)
    assert sct.max() == 3071 and sct.min() >= -1024


@pytest.mark.parametrize("spacing, message", [
    (0.01, "voxel size 0.01 x 0.01 x 0.01 mm is outside the supported 0.1-10.0 mm"),
    (100.0, "voxel size 100 x 100 x 100 mm is outside the supported 0.1-10.0 mm"),
])
def test_voxel_sizes_outside_the_range_are_refused(spacing, message, patient, checkpoint, tmp_path, capsys):
    scan = scan_with(patient, tmp_path, "scan.nii.gz", affine=np.diag([spacing] * 3 + [1.0]))
    code, _, err = infer_cli(checkpoint, scan, tmp_path / "sct.nii.gz", capsys)
    assert one_line_error(code, err) == f"error: input MR {scan}: {message}"
    assert not (tmp_path / "sct.nii.gz").exists()


def test_resampled_grid_over_the_budget_is_refused(patient, tmp_path, capsys):
    """A model trained at 0.2 mm asked for a 32^3 scan at 6 mm: 960^3 voxels, refused before resampling."""
    fine = tiny_checkpoint(tmp_path, "fine.npz", spacing=0.2)
    code, _, err = infer_cli(fine, os.path.join(patient, "mr.nii.gz"), tmp_path / "sct.nii.gz", capsys)
    scan = os.path.join(patient, "mr.nii.gz")
    assert one_line_error(code, err) == (f"error: input MR {scan}: the scan covers 960 x 960 x 960 voxels at "
                                         f"the training spacing, more than the limit of 32,768,000")


@pytest.mark.parametrize("config, message", [
    ({"shape": None}, "checkpoint config has no shape; it cannot be used for prediction"),
    ({"spacing": -6.0}, "checkpoint config field 'spacing' is -6.0, expected a positive number of mm, or three"),
    ({"shape": 30}, "checkpoint config field 'shape' is 30, expected a multiple of 8 up to 512, or three"),
])
def test_incomplete_checkpoint_config_is_one_line(config, message, patient, tmp_path, capsys):
    bad = tiny_checkpoint(tmp_path, "bad.npz", **config)
    code, _, err = infer_cli(bad, os.path.join(patient, "mr.nii.gz"), tmp_path / "sct.nii.gz", capsys)
    assert one_line_error(code, err) == f"error: {bad}: {message}"


def test_nifti_given_as_checkpoint_is_one_line_without_pickle_advice(patient, tmp_path, capsys):
    scan = os.path.join(patient, "mr.nii.gz")
    code, _, err = infer_cli(scan, scan, tmp_path / "sct.nii.gz", capsys)
    assert one_line_error(code, err) == (f"error: {scan}: not an mri2ct checkpoint (.npz), it is a gzip "
                                         f"file (a .nii.gz image?)")


def test_zero_spacing_affine_is_one_line(patient, checkpoint, tmp_path, capsys):
    """A header whose sform maps the second voxel axis to nothing (nibabel cannot write one itself)."""
    raw = nib.load(os.path.join(patient, "mr.nii.gz")).to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    header["srow_y"] = 0.0
    header["sform_code"] = 1
    scan = tmp_path / "flat.nii"
    scan.write_bytes(header.binaryblock + raw[len(header.binaryblock):])
    code, _, err = infer_cli(checkpoint, scan, tmp_path / "sct.nii.gz", capsys)
    assert one_line_error(code, err) == (f"error: input MR {scan}: voxel size 6 x 0 x 6 mm is outside the "
                                         f"supported 0.1-10.0 mm")


def test_infer_reads_the_input_once(patient, checkpoint, tmp_path, capsys, monkeypatch):
    reads = []
    original = nib.load
    monkeypatch.setattr(nib, "load", lambda path, *a, **k: reads.append(str(path)) or original(path, *a, **k))
    source = os.path.join(patient, "mr.nii.gz")
    code, _, err = infer_cli(checkpoint, source, tmp_path / "sct.nii.gz", capsys)
    assert code == 0, err
    assert reads == [source]


def test_visualize_refuses_a_non_picture_output(patient, tmp_path, capsys):
    scan = tmp_path / "ct.nii.gz"
    scan.write_bytes(open(os.path.join(patient, "ct.nii.gz"), "rb").read())
    before = scan.read_bytes()
    argv = ["--mri", os.path.join(patient, "mr.nii.gz"), "--pred", os.path.join(patient, "ct.nii.gz"),
            "--out", str(scan)]
    code, _, err = run_cli(visualize, argv, capsys)
    assert one_line_error(code, err) == (f"error: {scan}: not a picture file name; give one ending in .png, "
                                         f".jpg, .jpeg, .pdf, .svg, .tif, .tiff")
    assert scan.read_bytes() == before


def test_evaluate_refuses_a_non_csv_output(cohort, patient, checkpoint, capsys):
    scan = os.path.join(patient, "ct.nii.gz")
    before = open(scan, "rb").read()
    code, _, err = run_cli(evaluate, ["--checkpoint", checkpoint, "--data", cohort, "--out", scan], capsys)
    assert one_line_error(code, err) == f"error: --out {scan}: give a .csv file name"
    assert open(scan, "rb").read() == before


def test_views_are_radiological_with_the_aspect_of_the_spacing():
    """A RAS volume with one bright voxel at the patient's right, anterior, superior corner region."""
    volume = np.zeros((10, 12, 14), np.float32)                 # (D, H, W): R, A, S
    volume[9, 11, 13] = volume[9, 11, 7] = volume[9, 6, 13] = volume[5, 11, 13] = 1
    axial, coronal, sagittal = drawing.central_slices(volume, (1.0, 2.0, 3.0))
    image, size = axial                                          # plane W = 7
    assert size == (10.0, 24.0) and image.shape == (12, 10)
    assert image[11, 0] == 1                                     # anterior (top row: origin lower), right on the left
    image, size = coronal                                        # plane H = 6
    assert size == (10.0, 42.0) and image[13, 0] == 1            # superior up, right on the left
    image, size = sagittal                                       # plane D = 5
    assert size == (24.0, 42.0) and image[13, 0] == 1            # superior up, anterior on the left
