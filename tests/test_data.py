"""Cohort folder, NIfTI validation, dataset normalisation, seeded epochs and flips, CLI."""
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from mri2ct import data
from mri2ct.data import phantom
from mri2ct.data.__main__ import main
from mri2ct.data.stats import tissue_statistics
from mri2ct.data.nifti import load_volume, save_volume

SMALL = dict(patients=4, seed=3, shape=32, spacing=6.0, workers=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cohort"))
    data.generate_cohort(root, **SMALL)
    return root


def read_patient_arrays(root, patient):
    return {name: nib.load(os.path.join(root, patient, f"{name}.nii.gz")).get_fdata()
            for name in data.VOLUME_FILES}


def test_same_seed_same_files_any_worker_count(cohort, tmp_path):
    again = str(tmp_path / "again")
    data.generate_cohort(again, **{**SMALL, "patients": 2, "workers": 2})
    for patient in ("patient_000", "patient_001"):  # patient i does not depend on the cohort size
        first, second = read_patient_arrays(cohort, patient), read_patient_arrays(again, patient)
        for name in data.VOLUME_FILES:
            np.testing.assert_array_equal(first[name], second[name])
    other = str(tmp_path / "other")
    data.generate_cohort(other, **{**SMALL, "patients": 1, "seed": 4})
    assert not np.array_equal(read_patient_arrays(cohort, "patient_000")["ct"],
                              read_patient_arrays(other, "patient_000")["ct"])


def test_split_sizes_seeded_and_disjoint():
    split = data.split_patients(60, seed=0)
    assert [len(split[name]) for name in ("train", "val", "test")] == [42, 9, 9]
    everyone = split["train"] + split["val"] + split["test"]
    assert sorted(everyone) == [data.patient_id(i) for i in range(60)]
    assert data.split_patients(60, seed=0) == split
    assert data.split_patients(60, seed=1) != split
    assert [len(part) for part in data.split_patients(4, 0).values()] == [2, 1, 1]


def test_manifest_and_files(cohort):
    manifest = data.read_manifest(cohort)
    assert manifest["version"] == phantom.GENERATOR_VERSION
    assert manifest["parameters"] == {"layout": "cohort", "patients": 4, "seed": 3, "shape": 32, "spacing": 6.0,
                                      "supersample": 2}
    assert manifest["split"] == data.split_patients(4, 3)
    assert sorted(manifest["patients"]) == [data.patient_id(i) for i in range(4)]
    assert not [name for name in os.listdir(cohort) if name.startswith(".")]  # no temporary files left


def test_four_files_share_one_affine_with_true_spacing(cohort):
    for patient in data.read_manifest(cohort)["patients"]:
        images = [nib.load(os.path.join(cohort, patient, f"{name}.nii.gz")) for name in data.VOLUME_FILES]
        for image in images:
            np.testing.assert_array_equal(image.affine, images[0].affine)
            assert image.shape == (32, 32, 32)
        np.testing.assert_allclose(nib.affines.voxel_sizes(images[0].affine), 6.0)
        assert nib.aff2axcodes(images[0].affine) == ("R", "A", "S")
        assert images[1].get_data_dtype() == np.int16  # CT in HU


def test_dataset_items_are_normalised(cohort):
    dataset = data.open_split(cohort, "train")
    assert len(dataset) == 2 and dataset.spacing == 6.0
    mr, ct = dataset[0]
    assert mr.shape == ct.shape == (1, 1, 32, 32, 32) and mr.dtype == ct.dtype == np.float32
    patient = dataset.patient(0)
    assert patient.id == dataset.ids[0]
    raw_mr, affine = load_volume(os.path.join(cohort, patient.id, "mr.nii.gz"))
    raw_ct, _ = load_volume(os.path.join(cohort, patient.id, "ct.nii.gz"))
    np.testing.assert_array_equal(patient.affine, affine)  # already RAS at 6 mm: used as written
    np.testing.assert_allclose(mr[0, 0] * patient.mr_scale, np.clip(raw_mr, 0, 3 * patient.mr_scale), rtol=1e-5)
    white = patient.labels == phantom.WHITE_MATTER
    assert np.median(mr[0, 0][white]) == pytest.approx(1.0, abs=0.05)  # scaled by the white-matter peak
    np.testing.assert_allclose(data.net_to_hu(ct[0, 0]), np.clip(raw_ct, -1024, 3000), atol=1e-3)
    assert patient.labels.dtype == np.uint8 and patient.mask.dtype == bool
    assert dataset.patient(0) is patient  # kept


def test_epoch_plan_is_a_function_of_seed_and_epoch(cohort):
    a = data.open_split(cohort, "train", seed=5, augment=True)
    a.ids = a.ids * 8  # 16 items so orders and flips differ visibly
    b = data.open_split(cohort, "train", seed=5, augment=True)  # a "resumed run"
    b.ids = b.ids * 8

    def plan(dataset, epoch):
        return [(index, tuple(flips)) for index, flips in dataset.epoch_plan(epoch)]

    assert plan(a, 3) == plan(b, 3)
    assert plan(a, 3) != plan(a, 4)
    c = data.open_split(cohort, "train", seed=6, augment=True)
    c.ids = c.ids * 8
    assert plan(a, 3) != plan(c, 3)
    flips = np.array([f for _, f in plan(a, 3)])
    assert 0 < flips.mean() < 1
    assert sorted(index for index, _ in plan(a, 3)) == list(range(16))
    plain = data.open_split(cohort, "train", seed=5)
    assert not any(np.any(f) for _, f in plain.epoch_plan(0))
    assert [i for i, _ in plain.epoch_plan(0, shuffle=False)] == [0, 1]


def test_flips_applied_jointly_to_mr_and_ct(cohort):
    dataset = data.open_split(cohort, "train", seed=1, augment=True)
    dataset.ids = dataset.ids * 6
    seen = 0
    for (index, flips), (mr, ct) in zip(dataset.epoch_plan(2), dataset.iterate(2)):   # batch size 1
        plain_mr, plain_ct = dataset[index]
        axes = tuple(2 + axis for axis in range(3) if flips[axis])
        np.testing.assert_array_equal(mr, np.flip(plain_mr, axes))
        np.testing.assert_array_equal(ct, np.flip(plain_ct, axes))
        seen += bool(axes)
    assert seen > 0


def test_apply_flips():
    volume = np.arange(8).reshape(1, 1, 2, 2, 2)
    flipped = data.apply_flips(volume, np.array([True, False, True]))
    assert flipped[0, 0, 0, 0, 0] == volume[0, 0, 1, 0, 1]
    assert flipped.flags.c_contiguous


# ---- bad input: each error names the file and the problem -------------------------------------

@pytest.fixture
def patient_dir(cohort, tmp_path):
    """A writable copy of one patient folder."""
    folder = tmp_path / "patient_000"
    folder.mkdir()
    for name in data.VOLUME_FILES:
        array, affine = load_volume(os.path.join(cohort, "patient_000", f"{name}.nii.gz"))
        save_volume(str(folder / f"{name}.nii.gz"), array, affine)
    return folder


def read_copy(patient_dir):
    return data.read_scan(data.open_data_folder(str(patient_dir.parent)), patient_dir.name)


def test_missing_file(patient_dir):
    os.remove(patient_dir / "ct.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"patient_000: no ct\.nii\.gz, ct\.nii or ct\.mha"):
        read_copy(patient_dir)


def test_not_a_nifti_file(patient_dir):
    (patient_dir / "mr.nii.gz").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"MR .*mr\.nii\.gz: not a readable NIfTI file"):
        read_copy(patient_dir)


def test_four_dimensional_image(patient_dir):
    save_volume(str(patient_dir / "mr.nii.gz"), np.zeros((32, 32, 32, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=r"mr\.nii\.gz: 4-D image of shape \(32, 32, 32, 2\)"):
        read_copy(patient_dir)


def test_shape_mismatch(patient_dir):
    ct, affine = load_volume(str(patient_dir / "ct.nii.gz"))
    save_volume(str(patient_dir / "ct.nii.gz"), ct[:-1].astype(np.int16), affine)
    with pytest.raises(ValueError, match=r"ct\.nii\.gz: shape \(31, 32, 32\) differs from .*mr\.nii\.gz"):
        read_copy(patient_dir)


def test_affine_mismatch(patient_dir):
    labels, affine = load_volume(str(patient_dir / "labels.nii.gz"), dtype=np.uint8)
    shifted = affine.copy()
    shifted[0, 3] += 1.0
    save_volume(str(patient_dir / "labels.nii.gz"), labels, shifted)
    with pytest.raises(ValueError, match=r"labels\.nii\.gz: affine differs from .*mr\.nii\.gz"):
        read_copy(patient_dir)


def test_nan_voxels(patient_dir):
    mr, affine = load_volume(str(patient_dir / "mr.nii.gz"))
    mr[3, 4, 5] = np.nan
    save_volume(str(patient_dir / "mr.nii.gz"), mr, affine)
    with pytest.raises(ValueError, match=r"MR .*mr\.nii\.gz: 1 NaN or infinite voxels"):
        read_copy(patient_dir)


def test_empty_mask(patient_dir):
    mask, affine = load_volume(str(patient_dir / "mask.nii.gz"), dtype=np.uint8)
    save_volume(str(patient_dir / "mask.nii.gz"), np.zeros_like(mask), affine)
    with pytest.raises(ValueError, match=r"mask\.nii\.gz: the mask is empty"):
        read_copy(patient_dir)


def test_folder_without_patients(tmp_path):
    with pytest.raises(FileNotFoundError, match="no patient folders .* create a synthetic set with "
                                                "python -m mri2ct.data --out"):
        data.open_split(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        data.open_split(str(tmp_path / "absent"), "train")


def test_broken_manifest_and_unknown_split(cohort, tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        data.read_manifest(str(tmp_path))
    with pytest.raises(ValueError, match="no split 'validation'"):
        data.open_split(cohort, "validation")


def test_save_volume_keeps_dtype_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "v.nii.gz")
    save_volume(path, np.arange(27, dtype=np.int16).reshape(3, 3, 3), np.diag([2.0, 2.0, 2.0, 1.0]))
    save_volume(path, np.arange(27, dtype=np.int16).reshape(3, 3, 3) * 2, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert os.listdir(tmp_path) == ["v.nii.gz"]
    image = nib.load(path)
    assert image.get_data_dtype() == np.int16 and image.dataobj[2, 2, 2] == 52


# ---- command line --------------------------------------------------------------------------

def test_cli_generate_and_stats(tmp_path, capsys):
    root = str(tmp_path / "cli")
    main(["--out", root, "--patients", "3", "--shape", "32", "--spacing", "6", "--workers", "1"])
    assert "3 patients (1/1/1 train/val/test)" in capsys.readouterr().out
    main(["--stats", root])
    table = capsys.readouterr().out
    assert "| 7 | white matter |" in table and "| 3 | cortical bone |" in table
    stats = tissue_statistics(root)
    assert stats[phantom.WHITE_MATTER]["mr_mean"] == pytest.approx(1.0, abs=0.1)
    assert stats[phantom.AIR]["hu_mean"] < -900


def test_cli_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "mri2ct.data", "--stats", "/nonexistent/cohort"],
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode != 0
    assert result.stderr.strip() == "error: /nonexistent/cohort: no such folder"
