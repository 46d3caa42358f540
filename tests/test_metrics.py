"""SynthRAD2023-style metrics against an independent implementation (scikit-image, test-only)."""
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from mri2ct.data import phantom
from mri2ct.inference.metrics import calculate_metrics
from mri2ct.data.nifti import save_volume


def synthrad_reference(pred, true, mask=None):
    """The SynthRAD2023 evaluation procedure written around scikit-image's metrics."""
    true, pred = true.astype(np.float64), pred.astype(np.float64)
    inside = np.ones(true.shape, bool) if mask is None else mask > 0
    mae = np.sum(np.abs(true - pred) * inside) / inside.sum()
    rmse = np.sqrt(np.sum((true - pred) ** 2 * inside) / inside.sum())
    true_c, pred_c = np.clip(true, -1024, 3000), np.clip(pred, -1024, 3000)
    psnr = peak_signal_noise_ratio(true_c[inside], pred_c[inside], data_range=4024)
    true_s = np.where(inside, true_c, -1024) + 1024
    pred_s = np.where(inside, pred_c, -1024) + 1024
    full, ssim_map = structural_similarity(true_s, pred_s, data_range=4024, full=True)
    ssim = full if mask is None else crop(ssim_map, 3)[crop(inside, 3)].mean(dtype=np.float64)
    return {"mae": mae, "rmse": rmse, "psnr": psnr, "ssim": ssim}


def assert_agree(ours, reference):
    for name in ("mae", "rmse", "psnr", "ssim"):
        assert ours[name] == pytest.approx(reference[name], rel=1e-7, abs=1e-9), name


@pytest.mark.parametrize("use_mask", [False, True])
def test_random_volumes_agree_with_scikit_image(use_mask):
    rng = np.random.default_rng(0)
    true = rng.uniform(-1500, 3500, (20, 18, 16))  # beyond the clip range on both sides
    pred = true + rng.normal(0, 300, true.shape)
    mask = (rng.random(true.shape) < 0.6).astype(np.uint8) if use_mask else None
    assert_agree(calculate_metrics(pred, true, mask), synthrad_reference(pred, true, mask))


@pytest.fixture(scope="module")
def patient():
    return phantom.generate_patient(np.random.default_rng(0), 32, 6.0)


def test_phantom_volumes_agree_with_scikit_image(patient):
    rng = np.random.default_rng(1)
    true = patient.ct.astype(np.float64)
    pred = 0.9 * true + rng.normal(0, 40, true.shape) + 20  # a plausible, imperfect synthetic CT
    for mask in (None, patient.mask):
        ours = calculate_metrics(pred, true, mask)
        assert_agree(ours, synthrad_reference(pred, true, mask))
    assert 0 < ours["ssim"] < 1 and ours["psnr"] > 10


def test_mask_and_clipping_semantics():
    true = np.zeros((9, 9, 9))
    pred = np.zeros((9, 9, 9))
    pred[0, 0, 0] = 5000.0  # outside the mask: ignored by every metric
    pred[4, 4, 4] = 4000.0  # inside: unclipped for MAE, clipped to 3000 for PSNR
    mask = np.zeros((9, 9, 9))
    mask[2:7, 2:7, 2:7] = 1
    metrics = calculate_metrics(pred, true, mask)
    assert metrics["mae"] == pytest.approx(4000 / 125)
    assert metrics["rmse"] == pytest.approx(np.sqrt(4000**2 / 125))
    assert metrics["psnr"] == pytest.approx(10 * np.log10(4024**2 / (3000**2 / 125)))


def test_identical_volumes_are_perfect(patient):
    metrics = calculate_metrics(patient.ct, patient.ct, patient.mask)
    assert metrics["mae"] == 0 and metrics["rmse"] == 0 and metrics["psnr"] == np.inf
    assert metrics["ssim"] == pytest.approx(1.0)


def test_nifti_paths_are_accepted(patient, tmp_path):
    paths = {}
    for name, volume in (("pred", patient.ct + 10), ("true", patient.ct), ("mask", patient.mask)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        save_volume(paths[name], volume, patient.affine)
    from_files = calculate_metrics(paths["pred"], paths["true"], paths["mask"])
    from_arrays = calculate_metrics(patient.ct + 10, patient.ct, patient.mask)
    assert from_files == pytest.approx(from_arrays)
    assert from_files["mae"] == pytest.approx(10)


def test_errors():
    volume = np.zeros((8, 8, 8))
    with pytest.raises(ValueError, match=r"pred_ct shape \(8, 8, 7\) differs from true_ct shape \(8, 8, 8\)"):
        calculate_metrics(volume[:, :, :7], volume)
    nan = volume.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="true_ct: 1 NaN or infinite voxels"):
        calculate_metrics(volume, nan)
    with pytest.raises(ValueError, match="mask is empty"):
        calculate_metrics(volume, volume, np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match=r"mask shape \(8, 8\) differs"):
        calculate_metrics(volume, volume, np.ones((8, 8)))
    with pytest.raises(ValueError, match="every side >= 7"):
        calculate_metrics(np.zeros((8, 8, 5)), np.zeros((8, 8, 5)))
    with pytest.raises(FileNotFoundError, match="pred_ct missing.nii.gz: no such file"):
        calculate_metrics("missing.nii.gz", volume)
