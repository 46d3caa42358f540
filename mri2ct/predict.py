"""Synthetic CT for a whole MR volume: the one prediction path that train, evaluate and infer share.

The network was trained on cubes of one size (the window, e.g. 64^3) at one spacing (e.g. 3 mm) in
RAS axis order. `synthesize_ct` brings an MR volume (already in RAS order, see orientation.py) to that
frame, predicts it window by window, and brings the result back:

    1. clip the MR to a robust range, [0.1th, 99.9th percentile]: one absurd voxel (3e38 in a
       corrupt file) can neither move the normalisation scale nor reach the network
    2. resample to the training spacing, trilinear, voxel centres aligned            (D', H', W')
    3. normalise as in training: divide by the 99th percentile inside a head mask (estimated here
       by thresholding, since a scan comes without one)
    4. sliding windows of the training size, overlapping by half, each predicted in eval mode and
       blended with Gaussian weights (a window's centre counts most: it saw the most context); the
       volume is zero-padded to at least one window. Memory: one window's activations plus three
       volume-sized arrays, so a 256^3 scan runs in bounded memory.
    5. HU = net_to_hu(network output), refused unless finite, clipped to [-1024, 3071] HU (the
       12-bit range of clinical CT); resampled back to the scan's grid

Limits, checked before anything large is allocated (`check_grid`): voxel sizes from MIN_SPACING_MM
to MAX_SPACING_MM, and at most MAX_GRID_VOXELS voxels after resampling to the training spacing.
"""
import numpy as np
from scipy import ndimage

import nn3d
from mri2ct.cli import RunError
from mri2ct.data import net_to_hu, normalise_mr

WINDOW_OVERLAP = 0.5          # consecutive windows share half their width
GAUSSIAN_SIGMA = 1 / 8        # of the window size, per axis
MIN_BLEND_WEIGHT = 1e-3       # floor of the normalised Gaussian, so edge voxels never divide by ~0
HEAD_THRESHOLD = 0.1          # of the whole volume's 99th percentile: head vs background
MR_CLIP_PERCENTILES = (0.1, 99.9)  # robust MR range (step 1)
HU_RANGE = (-1024.0, 3071.0)  # every written sCT lies in this range (step 5)
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 10.0    # voxel sizes a head scan can sensibly have
MAX_GRID_VOXELS = 320 ** 3    # resampled grid: 33 M voxels, ~130 MB per float32 volume


class PredictionError(RunError):
    """The model produced values that are not a CT (NaN or infinite): one line, nothing written."""


# ---- geometry -----------------------------------------------------------------------------------
def resample(volume, shape):
    """Trilinear resampling of a (D, H, W) array to `shape`, aligning voxel centres (not corners)."""
    factors = [new / old for new, old in zip(shape, volume.shape)]
    resampled = ndimage.zoom(volume, factors, order=1, mode="nearest", grid_mode=True)
    assert resampled.shape == tuple(shape), (resampled.shape, shape)
    return resampled.astype(np.float32)


def shape_at_spacing(shape, spacing, new_spacing):
    """Grid size covering the same field of view at `new_spacing` (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def check_grid(shape, spacing, train_spacing, name="input MR"):
    """ValueError unless every voxel size is within [MIN_SPACING_MM, MAX_SPACING_MM] and the grid
    resampled to `train_spacing` stays under MAX_GRID_VOXELS. Costs nothing: header numbers only."""
    for what, values in ((name, spacing), ("the checkpoint's training", train_spacing)):
        if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in values):
            raise ValueError(f"{what} voxel size {' x '.join(f'{s:.4g}' for s in values)} mm is outside "
                             f"the supported {MIN_SPACING_MM}-{MAX_SPACING_MM} mm")
    grid = shape_at_spacing(shape, spacing, train_spacing)
    if int(np.prod(grid, dtype=np.int64)) > MAX_GRID_VOXELS:
        raise ValueError(f"{name} covers {' x '.join(map(str, grid))} voxels at the training spacing, "
                         f"more than the limit of {MAX_GRID_VOXELS:,}")


def window_starts(length, window):
    """Start indices of windows of `window` voxels covering 0..length-1, overlapping by about half;
    the last window ends exactly at `length` (length >= window)."""
    step = max(1, int(window * (1 - WINDOW_OVERLAP)))
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


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

    mr: (D, H, W) float32, normalised. window: (wd, wh, ww), multiples of 8. model: in eval mode.
    Returns (D, H, W) float32 on the network's scale.
    """
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


def estimate_head_mask(mr):
    """(D, H, W) bool: voxels brighter than a tenth of the 99th percentile, with enclosed holes
    (the dark skull and CSF inside the scalp) filled slice by slice and the result dilated by one voxel."""
    mask = mr > HEAD_THRESHOLD * np.percentile(mr, 99)
    for w in range(mask.shape[2]):
        mask[:, :, w] = ndimage.binary_fill_holes(mask[:, :, w])
    return ndimage.binary_dilation(mask)


def synthesize_ct(model, mr, spacing, window, train_spacing):
    """CT in HU for an MR volume in RAS order, on the MR's own grid (steps 1-5 of the docstring).

    mr: (D, H, W) float32 in scanner units; spacing: (3,) mm. window: (3,) voxels and
    train_spacing: (3,) mm, from the checkpoint (`checkpoint.training_frame`). model: UNet3D in eval mode.
    """
    check_grid(mr.shape, spacing, train_spacing)
    resampled = resample(clip_mr(mr), shape_at_spacing(mr.shape, spacing, train_spacing))
    normalised, _ = normalise_mr(resampled, estimate_head_mask(resampled))
    prediction = predict_sliding_window(model, normalised, window)
    return resample(prediction_to_hu(prediction), mr.shape)  # trilinear: stays inside HU_RANGE
