"""MR normalisation (mri2ct/data/normalise.py): the same head gets the same scale whatever the field of
view, one absurd voxel changes nothing, and the CT mapping is linear and invertible."""
import numpy as np
import pytest

from mri2ct.data import phantom
from mri2ct.data import figures, normalise
from mri2ct.data.preprocess import compute_mask


@pytest.fixture(scope="module", params=[0, 1])
def head(request):
    return figures.default_patient(index=request.param, shape=48, spacing=4.0)


def test_white_matter_scale_does_not_depend_on_the_field_of_view(head):
    """Whole head, skull-stripped, and skull-stripped cropped tight: white matter within 3 % of one
    normalised value (the 99th percentile it replaces moves by ~50 %)."""
    white = head.labels == phantom.WHITE_MATTER
    variants = figures.field_of_view_variants(head)
    peaks = {name: normalise.white_matter_peak(values) for name, (values, _) in variants.items()}
    normalised_white = {name: np.median(head.mr[white]) / peak for name, peak in peaks.items()}
    values = np.array(list(normalised_white.values()))
    assert values.max() / values.min() - 1 < 0.03, normalised_white
    assert np.all(np.abs(values - 1) < 0.05), normalised_white          # and it is white matter's level
    old = [np.percentile(values, 99) for values, _ in variants.values()]
    assert max(old) / min(old) > 1.3                                    # what the old scale did


def test_one_absurd_voxel_changes_nothing(head):
    mask = head.mask > 0
    clean, scale = normalise.normalise_mr(head.mr, mask)
    corrupt = head.mr.copy()
    voxel = tuple(np.argwhere(mask)[len(np.argwhere(mask)) // 2])
    corrupt[voxel] = 3e38
    normalised, corrupt_scale = normalise.normalise_mr(corrupt, mask)
    assert corrupt_scale == pytest.approx(scale, rel=1e-2)      # bin edges move a little, the peak not
    assert normalised[voxel] == normalise.MR_MAX and np.isfinite(normalised).all()
    normalised[voxel] = clean[voxel]
    np.testing.assert_allclose(normalised, clean, rtol=1e-2)


def test_scale_is_proportional_to_the_gain(head):
    mask = head.mask > 0
    _, scale = normalise.normalise_mr(head.mr, mask)
    _, scaled = normalise.normalise_mr(head.mr * 7.5, mask)
    assert scaled == pytest.approx(7.5 * scale, rel=1e-3)


def test_computed_mask_of_a_stripped_brain_is_the_brain(head):
    brain = np.isin(head.labels, figures.BRAIN)
    mask = compute_mask(np.where(brain, head.mr, 0))
    assert mask[brain].mean() > 0.99 and mask.sum() < 1.5 * brain.sum()


def test_empty_images_are_refused():
    with pytest.raises(ValueError, match="the mask is empty"):
        normalise.normalise_mr(np.ones((4, 4, 4), np.float32), np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="nothing bright to scale by"):
        normalise.normalise_mr(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="a single intensity"):
        normalise.normalise_mr(np.ones((4, 4, 4), np.float32))


def test_hu_mapping_is_linear_and_invertible():
    hu = np.array([-1000.0, 0.0, 1000.0, 1800.0])
    np.testing.assert_allclose(normalise.hu_to_net(hu), [-1.0, 0.0, 1.0, 1.8])
    np.testing.assert_allclose(normalise.net_to_hu(normalise.hu_to_net(hu)), hu, rtol=1e-6)
