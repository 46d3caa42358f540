"""Cohort folder, NIfTI validation, dataset normalisation, seeded epochs and flips, CLI."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from mri2ct import data, phantom
from mri2ct.nifti import load_volume, save_volume

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
    assert manifest["parameters"] == {"patients": 4, "seed": 3, "shape": 32, "spacing": 6.0, "supersample": 2}
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
    dataset = data.CohortDataset(cohort, "train")
    assert len(dataset) == 2
    mr, ct = dataset[0]
    assert mr.shape == ct.shape == (1, 1, 32, 32, 32) and mr.dtype == ct.dtype == np.float32
    patient = dataset.patient(0)
    assert patient.id == dataset.ids[0]
    raw_mr, _ = load_volume(os.path.join(cohort, patient.id, "mr.nii.gz"))
    assert np.percentile(mr[0, 0][patient.mask], 99) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(mr[0, 0] * patient.mr_scale, raw_mr, rtol=1e-5)
    np.testing.assert_allclose(data.net_to_hu(ct[0, 0]), patient.ct_hu, atol=1e-3)
    assert patient.labels.dtype == np.uint8 and patient.mask.dtype == bool
    assert dataset.patient(0) is patient  # cached


def test_hu_mapping_is_linear_and_invertible():
    hu = np.array([-1000.0, 0.0, 1000.0, 1800.0])
    np.testing.assert_allclose(data.hu_to_net(hu), [-1.0, 0.0, 1.0, 1.8])
    np.testing.assert_allclose(data.net_to_hu(data.hu_to_net(hu)), hu, rtol=1e-6)


def test_epoch_plan_is_a_function_of_seed_and_epoch(cohort):
    a = data.CohortDataset(cohort, "train", augment=True, seed=5)
    a.ids = a.ids * 8  # 16 items so orders and flips differ visibly
    b = data.CohortDataset(cohort, "train", augment=True, seed=5)  # a "resumed run"
    b.ids = b.ids * 8

    def plan(dataset, epoch):
        return [(index, tuple(flips)) for index, flips in dataset.epoch_plan(epoch)]

    assert plan(a, 3) == plan(b, 3)
    assert plan(a, 3) != plan(a, 4)
    c = data.CohortDataset(cohort, "train", augment=True, seed=6)
    c.ids = c.ids * 8
    assert plan(a, 3) != plan(c, 3)
    flips = np.array([f for _, f in plan(a, 3)])
    assert 0 < flips.mean() < 1
    assert sorted(index for index, _ in plan(a, 3)) == list(range(16))
    plain = data.CohortDataset(cohort, "train", augment=False, seed=5)
    assert not any(np.any(f) for _, f in plain.epoch_plan(0))
    assert [i for i, _ in plain.epoch_plan(0, shuffle=False)] == [0, 1]


def test_flips_applied_jointly_to_mr_and_ct(cohort):
    dataset = data.CohortDataset(cohort, "train", augment=True, seed=1)
    dataset.ids = dataset.ids * 6
    seen = 0
    for (index, flips), (mr, ct) in zip(dataset.epoch_plan(2), dataset.iterate(2)):
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


def test_missing_file(patient_dir):
    os.remove(patient_dir / "ct.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"CT .*ct\.nii\.gz: no such file"):
        data.load_patient(str(patient_dir))


def test_not_a_nifti_file(patient_dir):
    (patient_dir / "mr.nii.gz").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"MR .*mr\.nii\.gz: not a readable NIfTI file"):
        data.load_patient(str(patient_dir))


def test_four_dimensional_image(patient_dir):
    save_volume(str(patient_dir / "mr.nii.gz"), np.zeros((32, 32, 32, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=r"mr\.nii\.gz: 4-D image of shape \(32, 32, 32, 2\)"):
        data.load_patient(str(patient_dir))


def test_shape_mismatch(patient_dir):
    ct, affine = load_volume(str(patient_dir / "ct.nii.gz"))
    save_volume(str(patient_dir / "ct.nii.gz"), ct[:-1].astype(np.int16), affine)
    with pytest.raises(ValueError, match=r"ct\.nii\.gz: shape \(31, 32, 32\) differs from .*mr\.nii\.gz"):
        data.load_patient(str(patient_dir))


def test_affine_mismatch(patient_dir):
    labels, affine = load_volume(str(patient_dir / "labels.nii.gz"), dtype=np.uint8)
    shifted = affine.copy()
    shifted[0, 3] += 1.0
    save_volume(str(patient_dir / "labels.nii.gz"), labels, shifted)
    with pytest.raises(ValueError, match=r"labels\.nii\.gz: affine differs from .*mr\.nii\.gz"):
        data.load_patient(str(patient_dir))


def test_nan_voxels(patient_dir):
    mr, affine = load_volume(str(patient_dir / "mr.nii.gz"))
    mr[3, 4, 5] = np.nan
    save_volume(str(patient_dir / "mr.nii.gz"), mr, affine)
    with pytest.raises(ValueError, match=r"MR .*mr\.nii\.gz: 1 NaN or infinite voxels"):
        data.load_patient(str(patient_dir))


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json — not a cohort folder; create one with "
                                                "python -m mri2ct.data --out"):
        data.CohortDataset(str(tmp_path), "train")


def test_broken_manifest_and_unknown_split(cohort, tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        data.read_manifest(str(tmp_path))
    with pytest.raises(ValueError, match="no split 'validation'"):
        data.CohortDataset(cohort, "validation")


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
    data.main(["--out", root, "--patients", "3", "--shape", "32", "--spacing", "6", "--workers", "1"])
    assert "3 patients (1/1/1 train/val/test)" in capsys.readouterr().out
    data.main(["--stats", root])
    table = capsys.readouterr().out
    assert "| 7 | white matter |" in table and "| 3 | cortical bone |" in table
    stats = data.tissue_statistics(root)
    assert stats[phantom.WHITE_MATTER]["mr_mean"] == pytest.approx(1.0, abs=0.1)
    assert stats[phantom.AIR]["hu_mean"] < -900


def test_cli_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "mri2ct.data", "--stats", "/nonexistent/cohort"],
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode != 0
    assert "/nonexistent/cohort: no manifest.json" in result.stderr
