"""Synthetic CT for a whole MR volume: the one prediction path that train, evaluate and infer share.

The network was trained on cubes of one size (the window, e.g. 64^3) at one spacing (e.g. 3 mm) in
RAS axis order. `synthesize_ct` brings an MR volume (already in RAS order, see data/orientation.py) to that
frame, predicts it window by window, and brings the result back:

    1. clip the MR to a robust range, [0.1th, 99.9th percentile]: one absurd voxel (3e38 in a
       corrupt file) can neither move the normalisation scale nor reach the network
    2. resample to the training spacing, trilinear (data.preprocess.resample)         (D', H', W')
    3. normalise as in training (data.normalise: white-matter peak) inside a head mask computed as
       for a training scan without one (data.preprocess.compute_mask)
    4. sliding windows of the training size, overlapping by half, each predicted in eval mode and
       blended with Gaussian weights (a window's centre counts most: it saw the most context); the
       volume is zero-padded to at least one window. A window is never larger than the scan needs:
       along an axis shorter than the window it is the scan's size rounded up to a multiple of 8.
       Memory: one window's activations plus three volume-sized arrays, so a 256^3 scan runs in
       bounded memory, and a 32^3 scan is never padded to a checkpoint's 256^3 window.
    5. HU = net_to_hu(network output), refused unless finite, clipped to [-1024, 3071] HU (the
       12-bit range of clinical CT); resampled back to the scan's grid

Limits, checked before anything large is allocated (`data.preprocess.check_grid`, the same limits as
for training scans): voxel sizes from 0.1 to 10 mm, and at most 320^3 voxels after resampling to the
training spacing.
"""
import numpy as np

import nn3d
from mri2ct.common.errors import RunError
from mri2ct.data import net_to_hu, normalise_mr
from mri2ct.data.preprocess import check_grid, compute_mask, resample, shape_at_spacing

WINDOW_OVERLAP = 0.5          # consecutive windows share half their width
WINDOW_MULTIPLE = 8           # the U-Net pools three times: every window side divides by 8
GAUSSIAN_SIGMA = 1 / 8        # of the window size, per axis
MIN_BLEND_WEIGHT = 1e-3       # floor of the normalised Gaussian, so edge voxels never divide by ~0
MR_CLIP_PERCENTILES = (0.1, 99.9)  # robust MR range (step 1)
HU_RANGE = (-1024.0, 3071.0)  # every written sCT lies in this range (step 5)


class PredictionError(RunError):
    """The model produced values that are not a CT (NaN or infinite): one line, nothing written."""


# ---- geometry -----------------------------------------------------------------------------------
def window_starts(length, window):
    """Start indices of windows of `window` voxels covering 0..length-1, overlapping by about half;
    the last window ends exactly at `length` (length >= window)."""
    step = max(1, int(window * (1 - WINDOW_OVERLAP)))
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def fitted_window(shape, window):
    """The window for a volume of `shape`: each side at most the volume's, rounded up to a multiple
    of WINDOW_MULTIPLE."""
    return tuple(min(w, -(-n // WINDOW_MULTIPLE) * WINDOW_MULTIPLE) for n, w in zip(shape, window))


def gaussian_weights(window):
    """(wd, wh, ww) blending weights: a Gaussian centred in the window, max 1, floored."""
    axes = []
    for size in window:
        centre, sigma = (size - 1) / 2, size * GAUSSIAN_SIGMA
        axes.append(np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weights, MIN_BLEND_WEIGHT).astype(np.float32)


# ---- prediction ---------------------------------------------------------------------------------
def predict_sliding_window(model, mr, window):
    """Network output for a normalised MR volume of any size, by Gaussian-blended windows.

    mr: (D, H, W) float32, normalised. window: (wd, wh, ww), multiples of 8, cut to what the volume
    needs (fitted_window). model: in eval mode. Returns (D, H, W) float32 on the network's scale.
    """
    window = fitted_window(mr.shape, window)
    padded_shape = tuple(max(n, w) for n, w in zip(mr.shape, window))
    padded = np.zeros(padded_shape, np.float32)                    # background = 0, like air in T1
    padded[:mr.shape[0], :mr.shape[1], :mr.shape[2]] = mr
    weights = gaussian_weights(window)                             # (wd, wh, ww)
    total = np.zeros(padded_shape, np.float32)                     # sum of weight * prediction
    weight_sum = np.zeros(padded_shape, np.float32)                # sum of weight
    for d in window_starts(padded_shape[0], window[0]):
        for h in window_starts(padded_shape[1], window[1]):
            for w in window_starts(padded_shape[2], window[2]):
                box = (slice(d, d + window[0]), slice(h, h + window[1]), slice(w, w + window[2]))
                with nn3d.no_grad():                               # keep no backward caches
                    prediction = model.forward(padded[box][None, None])[0, 0]  # (wd, wh, ww)
                total[box] += weights * prediction
                weight_sum[box] += weights
    return (total / weight_sum)[:mr.shape[0], :mr.shape[1], :mr.shape[2]]


def prediction_to_hu(prediction):
    """Network output (D, H, W) -> HU, clipped to HU_RANGE; PredictionError if any value is NaN/inf."""
    with np.errstate(over="ignore"):                               # overflow is reported just below
        hu = net_to_hu(prediction)                                 # (D, H, W)
    if not np.isfinite(hu).all():
        raise PredictionError("the model's output holds NaN or infinite values; nothing written")
    return np.clip(hu, *HU_RANGE)


def clip_mr(mr):
    """(D, H, W) MR clipped to its [0.1th, 99.9th] percentile. The percentiles are voxel values
    ("nearest", no interpolation), so even values near the float32 limit cannot overflow."""
    low, high = np.percentile(mr, MR_CLIP_PERCENTILES, method="nearest")
    return np.clip(mr, low, high)


def synthesize_ct(model, mr, spacing, window, train_spacing):
    """CT in HU for an MR volume in RAS order, on the MR's own grid (steps 1-5 of the docstring).

    mr: (D, H, W) float32 in scanner units; spacing: (3,) mm. window: (3,) voxels and
    train_spacing: (3,) mm, from the checkpoint (`checkpoint.training_frame`). model: UNet3D in eval mode.
    """
    check_grid(mr.shape, spacing, train_spacing)
    resampled = resample(clip_mr(mr), shape_at_spacing(mr.shape, spacing, train_spacing))
    normalised, _ = normalise_mr(resampled, compute_mask(resampled))
    prediction = predict_sliding_window(model, normalised, window)
    return resample(prediction_to_hu(prediction), mr.shape)  # trilinear: stays inside HU_RANGE
