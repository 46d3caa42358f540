"""The synthetic patient: determinism, grid geometry, tissue layout and tissue values."""
import numpy as np
import pytest

from mri2ct.data import phantom


def make(seed, shape=32, spacing=6.0):
    return phantom.generate_patient(np.random.default_rng(seed), shape, spacing)


@pytest.fixture(scope="module")
def patient():
    """One patient on the default 64^3 grid at 3 mm."""
    return make(7, 64, 3.0)


def test_same_seed_same_patient_other_seed_differs():
    a, b, c = make(1), make(1), make(2)
    for name in ("mr", "ct", "labels", "mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.params == b.params
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.ct, c.ct)


def test_shapes_dtypes_and_affine():
    p = make(0)
    assert p.mr.shape == p.ct.shape == p.labels.shape == p.mask.shape == (32, 32, 32)
    assert (p.mr.dtype, p.ct.dtype, p.labels.dtype, p.mask.dtype) == (np.float32, np.int16, np.uint8, np.uint8)
    np.testing.assert_allclose(np.diag(p.affine)[:3], 6.0)
    centre = p.affine @ np.array([15.5, 15.5, 15.5, 1.0])  # the grid is centred on the origin
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-12)
    assert set(np.unique(p.labels)) <= set(range(phantom.N_LABELS))


def test_every_tissue_present_and_head_inside_mask(patient):
    assert set(np.unique(patient.labels)) == set(range(phantom.N_LABELS))
    assert np.all(patient.mask[patient.labels != phantom.AIR] == 1)
    grouped = [label for labels in phantom.TISSUE_GROUPS.values() for label in labels]
    assert len(grouped) == len(set(grouped))  # no tissue in two groups


def test_head_fits_the_field_of_view():
    """Sides and top of the grid are air; only the neck leaves through the bottom (z = 0)."""
    for shape, spacing in ((48, 4.0), (32, 2.0)):  # 192 mm, and a 64 mm miniature
        for seed in range(3):
            p = make(seed, shape, spacing)
            faces = [p.labels[0], p.labels[-1], p.labels[:, 0], p.labels[:, -1], p.labels[:, :, -1]]
            assert all(np.all(face == phantom.AIR) for face in faces)
            if shape * spacing < 100:
                assert p.params["fov_fit"] < 0.6  # a miniature head


def interior(p, label):
    """Voxels of `label` whose 6 neighbours share it, so free of partial volume."""
    same = p.labels == label
    for axis in range(3):
        for step in (1, -1):
            same &= np.roll(p.labels, step, axis) == label
    return same


def interior_means(p, values, label):
    return values[interior(p, label)].mean()


def test_mr_tissue_order_white_over_grey_over_csf(patient):
    wm, gm, csf = (interior_means(patient, patient.mr, label)
                   for label in (phantom.WHITE_MATTER, phantom.GREY_MATTER, phantom.CSF))
    assert wm > gm > csf
    assert patient.mr[patient.labels == phantom.FAT].mean() > gm
    bone_and_air = patient.mr[np.isin(patient.labels, (phantom.AIR, phantom.CORTICAL_BONE))].mean()
    assert bone_and_air < 0.5 * csf  # dark, as in a real T1


def test_ct_tissue_values_in_physical_ranges(patient):
    hu = patient.ct.astype(np.float64)
    assert interior_means(patient, hu, phantom.AIR) == pytest.approx(-1000, abs=5)
    for label in (phantom.CSF, phantom.GREY_MATTER, phantom.WHITE_MATTER):
        assert 0 < interior_means(patient, hu, label) < 60
    assert interior_means(patient, hu, phantom.GREY_MATTER) > interior_means(patient, hu, phantom.WHITE_MATTER)
    assert hu[patient.labels == phantom.CORTICAL_BONE].mean() > 600
    assert hu[patient.labels == phantom.TRABECULAR_BONE].mean() > 250
    assert hu[patient.labels == phantom.FAT].min() < -50
    assert 4 < hu[interior(patient, phantom.WHITE_MATTER)].std() < 12  # scanner noise of 5-10 HU


def test_partial_volume_mixes_values_at_edges(patient):
    """Pure bone is trabecular (300-600 HU) or cortical (900-1800 HU); values between the two come
    only from mixing tissues in one voxel, which supersampling does and a plain grid does not."""
    def between_fraction(p):
        hu = p.ct[np.isin(p.labels, (phantom.CORTICAL_BONE, phantom.TRABECULAR_BONE))]
        return np.mean((hu > 630) & (hu < 870))

    assert between_fraction(patient) > 0.2
    assert between_fraction(phantom.generate_patient(np.random.default_rng(7), 64, 3.0, supersample=1)) < 0.02


def test_smooth_noise_has_unit_variance_and_is_resolution_independent():
    noise = phantom.SmoothNoise(np.random.default_rng(0), 10.0, 100.0)
    fine = np.arange(-90.0, 90.0, 1.0)
    field = noise.on_grid(fine, fine, fine)[0]
    assert field.std() == pytest.approx(1.0, abs=0.2)
    coarse = noise.on_grid(fine[::3], fine[::3], fine[::3])[0]
    np.testing.assert_allclose(coarse, field[::3, ::3, ::3], atol=1e-5)


def test_block_reductions():
    fine = np.zeros((4, 2, 2), np.uint8)
    fine[:2] = 3
    fine[2, 0, 0] = 5  # one of eight votes
    np.testing.assert_array_equal(phantom.block_majority(fine, 2).ravel(), [3, 0])
    np.testing.assert_allclose(phantom.block_mean(fine.astype(np.float32), 2).ravel(), [3.0, 5 / 8])
