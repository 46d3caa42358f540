"""Image similarity of a synthetic CT to the true CT, in HU, as in the SynthRAD2023 evaluation.

With m the mask (1 inside, 0 outside; the whole volume if no mask), gt the true and pred the
predicted CT in HU:

    mae  = sum |gt - pred| m / sum m                      (no clipping)
    rmse = sqrt( sum (gt - pred)^2 m / sum m )            (no clipping)
    psnr = 10 log10( DR^2 / mse ),  mse over mask voxels of gt and pred clipped to [-1024, 3000],
           DR = 4024
    ssim: clip both to [-1024, 3000]; set voxels outside the mask to -1024; add 1024 (so >= 0);
          SSIM map with a 7^3 uniform window, K1 = 0.01, K2 = 0.03, data range 4024 and the sample
          (unbiased) covariance; mean of the map over mask voxels, after cropping 3 voxels at every
          border (where the window leaves the volume).

The SSIM map at each voxel, from the window means mu, variances s^2 and covariance s_xy:

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (K1 DR)^2, C2 = (K2 DR)^2.
"""
import os

import numpy as np
from scipy.ndimage import uniform_filter

from mri2ct.data.nifti import load_volume

HU_RANGE = (-1024.0, 3000.0)
DATA_RANGE = HU_RANGE[1] - HU_RANGE[0]  # 4024
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_volume(volume, name):
    """A path (loaded as NIfTI) or an array -> float64 array; NaNs raise a ValueError naming it."""
    if isinstance(volume, (str, os.PathLike)):
        volume, _ = load_volume(volume, name)
    volume = np.asarray(volume, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(volume)))
    if bad:
        raise ValueError(f"{name}: {bad} NaN or infinite voxels")
    return volume


def ssim_map(x, y, data_range=DATA_RANGE):
    """(D, H, W) SSIM of each voxel's 7^3 window; x, y (D, H, W) float64, borders mirrored."""
    n = SSIM_WINDOW**x.ndim
    unbiased = n / (n - 1)  # sample covariance: divide by n - 1, not n
    mu_x = uniform_filter(x, SSIM_WINDOW)
    mu_y = uniform_filter(y, SSIM_WINDOW)
    var_x = unbiased * (uniform_filter(x * x, SSIM_WINDOW) - mu_x * mu_x)
    var_y = unbiased * (uniform_filter(y * y, SSIM_WINDOW) - mu_y * mu_y)
    cov_xy = unbiased * (uniform_filter(x * y, SSIM_WINDOW) - mu_x * mu_y)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def calculate_metrics(pred_ct, true_ct, mask=None):
    """{"mae", "rmse", "psnr", "ssim"} of pred_ct against true_ct, in HU (see the module docstring).

    pred_ct, true_ct: (D, H, W) arrays in HU, or paths of NIfTI files.
    mask: optional (D, H, W) array or NIfTI path; voxels > 0 are evaluated.
    Raises ValueError for shapes that differ, NaNs, an empty mask or a volume smaller than 7^3.
    """
    pred = _as_volume(pred_ct, "pred_ct")
    true = _as_volume(true_ct, "true_ct")
    if pred.shape != true.shape:
        raise ValueError(f"pred_ct shape {pred.shape} differs from true_ct shape {true.shape}")
    if pred.ndim != 3 or min(pred.shape) < SSIM_WINDOW:
        raise ValueError(f"CT volumes must be 3-D with every side >= {SSIM_WINDOW}, got shape {pred.shape}")
    if mask is None:
        inside = np.ones(true.shape, bool)
    else:
        inside = _as_volume(mask, "mask") > 0
        if inside.shape != true.shape:
            raise ValueError(f"mask shape {inside.shape} differs from CT shape {true.shape}")
    pad = (SSIM_WINDOW - 1) // 2
    core = (slice(pad, -pad),) * 3
    if not inside[core].any():
        raise ValueError("mask is empty (no voxel > 0 at least 3 voxels from the border)")

    error = (true - pred)[inside]
    mae = np.abs(error).mean()
    rmse = np.sqrt((error**2).mean())

    low, high = HU_RANGE
    true_clipped, pred_clipped = np.clip(true, low, high), np.clip(pred, low, high)
    mse = ((true_clipped - pred_clipped)[inside] ** 2).mean()
    psnr = 10 * np.log10(DATA_RANGE**2 / mse) if mse > 0 else float("inf")

    true_shifted = np.where(inside, true_clipped, low) - low  # outside -> -1024, then shift by +1024
    pred_shifted = np.where(inside, pred_clipped, low) - low
    ssim = ssim_map(true_shifted, pred_shifted)[core][inside[core]].mean()
    return {"mae": float(mae), "rmse": float(rmse), "psnr": float(psnr), "ssim": float(ssim)}
