"""Paired folders (SynthRAD layout): the phantom writer, reading .nii/.mha in any orientation and dtype,
preprocessing and its cache, the split, the patch sampler, and the generator's guards and argument errors."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mri2ct import data
from mri2ct.common import errors
from mri2ct.data import phantom
from mri2ct.data import cohort, preprocess
from mri2ct.data.__main__ import main
from mri2ct.data.nifti import save_volume
from mri2ct.data.orientation import to_ras

PAIRED = dict(patients=4, seed=2, shape=(24, 28, 26), spacing=8.0, workers=1, layout="paired")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("paired") / "pairs")
    data.generate_cohort(root, **PAIRED)
    return root


def copy_patient(source, target, patient="patient_001"):
    """A copy of one patient folder of `source` in `target` (a new data folder)."""
    os.makedirs(os.path.join(target, patient))
    for name in os.listdir(os.path.join(source, patient)):
        with open(os.path.join(source, patient, name), "rb") as file:
            content = file.read()
        with open(os.path.join(target, patient, name), "wb") as file:
            file.write(content)
    return data.open_data_folder(target)


# ---- the writer --------------------------------------------------------------------------------
def test_paired_layout_mixes_shapes_orientations_dtypes_and_masks(pairs):
    folder = data.open_data_folder(pairs)
    assert folder.manifest is None and folder.ids == [f"patient_00{i}" for i in range(4)]
    images = {id: {kind: nib.load(path) for kind, path in folder.paths[id].items()} for id in folder.ids}
    shapes = {images[id]["mr"].shape for id in folder.ids}
    assert len(shapes) >= 3 and all(len(set(shape)) > 1 for shape in shapes)           # non-cubic, differ
    assert all(s <= n for shape in shapes for s, n in zip(shape, PAIRED["shape"]))
    assert nib.aff2axcodes(images["patient_001"]["mr"].affine) == ("L", "P", "S")
    assert nib.aff2axcodes(images["patient_000"]["mr"].affine) == ("R", "A", "S")
    assert [images[id]["ct"].get_data_dtype() for id in folder.ids] == [np.int16, np.uint16, np.float32, np.int16]
    assert images["patient_001"]["ct"].dataobj.inter < -1000                           # scale factors
    assert "mask" not in folder.paths["patient_003"] and "mask" in folder.paths["patient_000"]
    assert "labels" not in folder.paths["patient_000"]
    np.testing.assert_allclose(nib.affines.voxel_sizes(images["patient_002"]["ct"].affine), 8.0)
    with open(os.path.join(pairs, cohort.PAIRED_RECORD)) as file:
        assert json.load(file)["parameters"]["layout"] == "paired"
    assert not [name for name in os.listdir(os.path.dirname(pairs)) if name.startswith(".")]


def test_same_patient_in_both_layouts(pairs, tmp_path):
    """The paired layout stores the same phantom as the cohort (patient i from stream (seed, i))."""
    scan = data.read_scan(data.open_data_folder(pairs), "patient_001")
    grid = cohort.patient_shape("paired", PAIRED["shape"], PAIRED["seed"], 1)
    expected = phantom.generate_patient(data.streams.generator(PAIRED["seed"], data.streams.PATIENT, 1),
                                        grid, PAIRED["spacing"])
    mr, _, _ = to_ras(scan.mr, scan.affine)
    ct, _, _ = to_ras(scan.ct, scan.affine)
    np.testing.assert_allclose(mr, expected.mr, rtol=1e-3, atol=1e-3 * expected.mr.max())  # uint16 + slope
    np.testing.assert_allclose(ct, expected.ct, atol=0.1)


# ---- reading and preprocessing ----------------------------------------------------------------
def test_orientation_and_file_format_do_not_change_the_preprocessed_patient(pairs, tmp_path):
    """patient_001 stored LPS (.nii.gz), stored RAS (.nii) and as MetaImage (.mha, LPS world frame)
    give the same training arrays."""
    lps = data.load_patient(data.open_data_folder(pairs), "patient_001", 6.0, str(tmp_path / "cache"))
    scan = data.read_scan(data.open_data_folder(pairs), "patient_001")
    ras_folder = tmp_path / "ras" / "patient_001"
    mha_folder = tmp_path / "mha" / "patient_001"
    ras_folder.mkdir(parents=True)
    mha_folder.mkdir(parents=True)
    for kind in ("mr", "ct", "mask"):
        volume = getattr(scan, kind)
        ras, orientation, spacing = to_ras(volume, scan.affine)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = scan.affine[:3, :3] @ [(n - 1) * (f < 0) for n, (_, f) in zip(volume.shape, orientation)] \
            + scan.affine[:3, 3]
        save_volume(str(ras_folder / f"{kind}.nii"), ras, affine)
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))   # ITK: (Z, Y, X)
        lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ scan.affine
        image.SetSpacing([float(s) for s in np.sqrt((lps_affine[:3, :3] ** 2).sum(0))])
        image.SetDirection((lps_affine[:3, :3] / np.sqrt((lps_affine[:3, :3] ** 2).sum(0))).ravel().tolist())
        image.SetOrigin(lps_affine[:3, 3].tolist())
        sitk.WriteImage(image, str(mha_folder / f"{kind}.mha"))
    for other in ("ras", "mha"):
        patient = data.load_patient(data.open_data_folder(str(tmp_path / other)), "patient_001", 6.0,
                                    str(tmp_path / "cache"))
        np.testing.assert_allclose(patient.affine, lps.affine, atol=1e-4)
        np.testing.assert_allclose(patient.mr, lps.mr, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(patient.ct_hu, lps.ct_hu, atol=1e-2)
        np.testing.assert_array_equal(patient.mask, lps.mask)


def test_preprocessing_resamples_clips_and_computes_a_mask(pairs, tmp_path):
    folder = data.open_data_folder(pairs)
    scan = data.read_scan(folder, "patient_003")                    # no mask.nii.gz
    patient = data.load_patient(folder, "patient_003", 6.0, str(tmp_path))
    fov = np.array(scan.mr.shape) * 8.0
    np.testing.assert_allclose(np.array(patient.mr.shape) * np.diag(patient.affine)[:3], fov, rtol=1e-6)
    assert np.all(np.abs(np.diag(patient.affine)[:3] - 6.0) < 6.0 / min(patient.mr.shape))
    assert patient.ct_hu.min() >= -1024 and patient.ct_hu.max() <= 3000
    assert patient.mr.min() >= 0 and patient.mr.max() <= 3.0
    assert patient.mask.dtype == bool and 0.2 < patient.mask.mean() < 0.9
    head = patient.ct_hu > -500
    assert patient.mask[head].all() and np.mean(~head[patient.mask]) < 0.35   # the head and a thin rim
    assert patient.labels is None


def test_native_spacing_and_default_split(pairs, tmp_path):
    folder = data.open_data_folder(pairs)
    assert data.native_spacing(folder) == 8.0
    split = data.choose_split(folder, seed=4)
    assert split == data.choose_split(folder, seed=4)
    assert sorted(sum(split.values(), [])) == folder.ids
    assert [len(split[name]) for name in ("train", "val", "test")] == [2, 1, 1]
    assert {str(data.choose_split(folder, seed)) for seed in range(6)} != {str(split)}
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["patient_000"], "val": ["patient_002"], "test": []}))
    assert data.choose_split(folder, 4, str(path))["train"] == ["patient_000"]
    path.write_text(json.dumps({"train": ["patient_009"], "val": [], "test": []}))
    with pytest.raises(ValueError, match="train patient 'patient_009' is not a patient folder of"):
        data.choose_split(folder, 4, str(path))


def test_cache_is_reused_and_invalidated(pairs, tmp_path, monkeypatch):
    root = str(tmp_path / "copy")
    folder = copy_patient(pairs, root, "patient_000")
    cache = str(tmp_path / "cache")
    first = data.load_patient(folder, "patient_000", 6.0, cache)
    assert isinstance(first.mr, np.memmap) and len(os.listdir(cache)) == 1

    def no_preprocessing(*args):
        raise AssertionError("preprocessed again although the cache holds the patient")
    monkeypatch.setattr(preprocess, "preprocess", no_preprocessing)
    again = data.load_patient(folder, "patient_000", 6.0, cache)
    np.testing.assert_array_equal(again.mr, first.mr)
    monkeypatch.undo()

    data.load_patient(folder, "patient_000", 7.0, cache)                       # another spacing
    path = os.path.join(root, "patient_000", "mr.nii.gz")
    image = nib.load(path)
    save_volume(path, np.asarray(image.dataobj) * 2.0, image.affine)           # the scan changes
    changed = data.load_patient(data.open_data_folder(root), "patient_000", 6.0, cache)
    assert len(os.listdir(cache)) == 3
    assert changed.mr_scale == pytest.approx(2 * first.mr_scale, rel=0.02)
    assert not [name for name in os.listdir(cache) if name.startswith(".")]    # no temporary entries
    assert sorted(os.listdir(root)) == ["patient_000"]                         # nothing in the data folder


# ---- bad folders: one line naming the problem -------------------------------------------------
def test_patient_without_ct_is_named(pairs, tmp_path):
    root = str(tmp_path / "bad")
    copy_patient(pairs, root, "patient_002")
    os.remove(os.path.join(root, "patient_002", "ct.nii.gz"))
    os.makedirs(os.path.join(root, "notes"))                  # a folder without scans is ignored
    result = subprocess.run([sys.executable, "-m", "mri2ct.train", "--data", root, "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "patient_002: no ct.nii.gz, ct.nii or ct.mha" in result.stderr


def test_absurd_voxel_size_is_refused(pairs, tmp_path):
    root = str(tmp_path / "bad")
    folder = copy_patient(pairs, root, "patient_000")
    for kind in ("mr", "ct", "mask"):
        image = nib.load(folder.paths["patient_000"][kind])
        save_volume(folder.paths["patient_000"][kind], np.asarray(image.dataobj),
                    np.diag([20.0, 20.0, 20.0, 1.0]))
    with pytest.raises(ValueError, match=r"MR .*patient_000/mr.nii.gz: voxel size 20 x 20 x 20 mm is outside "
                                         r"the supported 0.1-10.0 mm"):
        data.load_patient(data.open_data_folder(root), "patient_000", 8.0, str(tmp_path / "cache"))


def test_unreadable_mha_is_named(pairs, tmp_path):
    root = str(tmp_path / "bad")
    copy_patient(pairs, root, "patient_000")
    os.remove(os.path.join(root, "patient_000", "mr.nii.gz"))
    (tmp_path / "bad" / "patient_000" / "mr.mha").write_text("ObjectType = Image\nNDims = 3\n")
    with pytest.raises(ValueError, match=r"MR .*mr\.mha: not a readable MetaImage file"):
        data.read_scan(data.open_data_folder(root), "patient_000")


# ---- patches ----------------------------------------------------------------------------------
def test_patch_plan_is_a_function_of_seed_epoch_and_step(pairs, tmp_path):
    def plan(seed, epoch):
        dataset = data.PatientSet(data.open_data_folder(pairs), ["patient_000", "patient_001", "patient_002"],
                                  8.0, str(tmp_path), augment=True, seed=seed)
        return dataset, dataset.batch_plan(epoch, batch_size=2, patch=16)
    dataset, steps = plan(1, 3)
    assert [len(step) for step in steps] == [2, 1]
    assert plan(1, 3)[1] == steps                                # a resumed run draws the same
    assert plan(1, 4)[1] != steps and plan(2, 3)[1] != steps
    for step in steps:
        for sample in step:
            patient = dataset.patient(sample.index)
            centre = np.array(sample.corner) + 8
            assert all(0 <= c <= n - 16 for c, n in zip(sample.corner, patient.mr.shape))
            assert patient.mask[tuple(np.minimum(centre, np.array(patient.mask.shape) - 1))] or \
                np.any(np.array(sample.corner) == np.array(patient.mask.shape) - 16)
    mr, ct = dataset.batch(steps[0], patch=16)
    assert mr.shape == ct.shape == (2, 1, 16, 16, 16) and mr.dtype == ct.dtype == np.float32
    first = steps[0][0]
    patient = dataset.patient(first.index)
    box = tuple(slice(c, c + 16) for c in first.corner)
    axes = tuple(axis for axis in range(3) if first.flips[axis])
    np.testing.assert_array_equal(mr[0, 0], np.flip(patient.mr[box], axes))
    np.testing.assert_allclose(ct[0, 0], np.flip(patient.ct_hu[box], axes) / 1000, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot be stacked into a batch; train on patches"):
        dataset.batch(dataset.batch_plan(3, batch_size=2)[0])        # whole scans of different shapes


def test_patch_larger_than_the_scan_is_padded_with_air():
    volume = np.ones((4, 5, 6), np.float32)
    patch = data.dataset.extract_patch(volume, (0, 0, 0), 8, -1024.0)
    assert patch.shape == (8, 8, 8) and patch[:4, :5, :6].min() == 1 and patch[4:].max() == -1024


# ---- the generator's guards and argument errors -----------------------------------------------
def test_out_refuses_a_foreign_folder_and_keeps_an_identical_one(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):                         # never replaced, even with --overwrite
        with pytest.raises(SystemExit) as exit_info:
            errors.run(main, ["--out", str(foreign), "--patients", "1", "--shape", "16", "--spacing", "10",
                              *overwrite])
        assert exit_info.value.code == 2
        assert "folder is not empty and holds no cohort folder this command wrote" in capsys.readouterr().err
        assert os.listdir(foreign) == ["notes.txt"]
    out = tmp_path / "cohort"
    arguments = ["--out", str(out), "--patients", "1", "--shape", "16", "--spacing", "10", "--workers", "1"]
    main(arguments[:-4] + ["--spacing", "9"])
    main(arguments + ["--overwrite"])                                 # a cohort it wrote: replaced
    assert sorted(os.listdir(out)) == ["manifest.json", "patient_000"]
    stamp = os.stat(out / "manifest.json").st_mtime_ns
    main(arguments)                                                    # the same cohort: a no-op
    assert "nothing to do" in capsys.readouterr().out
    assert os.stat(out / "manifest.json").st_mtime_ns == stamp
    with pytest.raises(SystemExit):
        errors.run(main, arguments[:-4] + ["--spacing", "9", "--workers", "1"])   # another cohort: refused
    assert "holds another cohort folder; choose an empty or new folder, or add --overwrite" in \
        capsys.readouterr().err
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_interrupted_generation_leaves_the_old_cohort_whole(tmp_path, monkeypatch):
    out = str(tmp_path / "cohort")
    data.generate_cohort(out, patients=1, shape=16, spacing=10.0, workers=1)
    before = sorted(os.listdir(out))

    def interrupted(rng, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(phantom, "generate_patient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.generate_cohort(out, patients=2, shape=16, spacing=10.0, workers=1, overwrite=True)
    assert sorted(os.listdir(out)) == before and os.listdir(tmp_path) == ["cohort"]


@pytest.mark.parametrize("arguments, message", [
    (["--shape", "0"], "argument --shape: must be at least 8, got 0"),
    (["--shape", "32", "0", "32"], "argument --shape: must be at least 8, got 0"),
    (["--shape", "32", "32"], "argument --shape: takes one or three sizes, got 2"),
    (["--spacing", "0"], "argument --spacing: must be a finite number in [0.1, 10], got 0"),
    (["--spacing", "nan"], "argument --spacing: must be a finite number in [0.1, 10], got nan"),
    (["--supersample", "0"], "argument --supersample: must be between 1 and 8, got 0"),
    (["--patients", "-2"], "argument --patients: must be at least 1, got -2"),
])
def test_generator_arguments_give_one_line_errors(tmp_path, arguments, message):
    result = subprocess.run([sys.executable, "-m", "mri2ct.data", "--out", str(tmp_path / "c"), *arguments],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {message}")
    assert os.listdir(tmp_path) == []
