"""Synthesise a CT from a T1 MRI of any size, spacing and orientation:

    python -m mri2ct.infer --checkpoint PATH --input MR.nii.gz --output SCT.nii.gz

The network was trained on cubes of one size (the window, e.g. 64^3) at one spacing (e.g. 3 mm) in
RAS axis order. A scan is brought to that frame, predicted window by window, and brought back:

    1. read and check the NIfTI: 3-D, finite, not constant
    2. reorder the axes to RAS (a permutation and flips, no interpolation)              (X, Y, Z)
    3. resample to the training spacing, trilinear, voxel centres aligned              (X', Y', Z')
    4. normalise the MR as in training: divide by the 99th percentile inside a head mask (estimated
       here by thresholding, since a scan comes without one)
    5. sliding windows of the training size, overlapping by half, each predicted by the model in eval
       mode and blended with Gaussian weights (centre of a window counts most, where it saw the most
       context); the volume is zero-padded to at least one window. Memory: one window's activations
       plus three volume-sized arrays, so a 256^3 scan runs in bounded memory.
    6. HU = net_to_hu(network output); resample back to the scan's grid; undo step 2
    7. write float32 HU with the input's affine and header, atomically (never a partial file)

A bad input (not NIfTI, 4-D, NaN, an empty image) stops with a one-line error.
"""
import argparse

import nibabel as nib
import numpy as np
from scipy import ndimage

import nn3d
from mri2ct.checkpoint import model_from_checkpoint
from mri2ct.cli import exit_on_user_error
from mri2ct.data import normalise_mr, net_to_hu
from mri2ct.nifti import load_volume, save_volume
from mri2ct.orientation import from_ras, to_ras

WINDOW_OVERLAP = 0.5          # consecutive windows share half their width
GAUSSIAN_SIGMA = 1 / 8        # of the window size, per axis
MIN_BLEND_WEIGHT = 1e-3       # floor of the normalised Gaussian, so edge voxels never divide by ~0
HEAD_THRESHOLD = 0.1          # of the whole volume's 99th percentile: head vs background


# ---- geometry -----------------------------------------------------------------------------------
def resample(volume, shape):
    """Trilinear resampling of a 3-D array to `shape`, aligning voxel centres (not corners)."""
    factors = [new / old for new, old in zip(shape, volume.shape)]
    resampled = ndimage.zoom(volume, factors, order=1, mode="nearest", grid_mode=True)
    assert resampled.shape == tuple(shape), (resampled.shape, shape)
    return resampled.astype(np.float32)


def shape_at_spacing(shape, spacing, new_spacing):
    """Grid size covering the same field of view at `new_spacing` (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def window_starts(length, window):
    """Start indices of windows of `window` voxels covering 0..length-1, overlapping by about half;
    the last window ends exactly at `length` (length >= window)."""
    step = max(1, int(window * (1 - WINDOW_OVERLAP)))
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def gaussian_weights(window):
    """(wx, wy, wz) blending weights: a Gaussian centred in the window, max 1, floored."""
    axes = []
    for size in window:
        centre, sigma = (size - 1) / 2, size * GAUSSIAN_SIGMA
        axes.append(np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weights, MIN_BLEND_WEIGHT).astype(np.float32)


# ---- prediction ---------------------------------------------------------------------------------
def predict_sliding_window(model, mr, window):
    """Network output for a normalised MR volume of any size, by Gaussian-blended windows.

    mr: (X, Y, Z) float32, normalised. window: (wx, wy, wz), multiples of 8. model: in eval mode.
    Returns (X, Y, Z) float32 on the network's scale.
    """
    padded_shape = tuple(max(n, w) for n, w in zip(mr.shape, window))
    padded = np.zeros(padded_shape, np.float32)                    # background = 0, like air in T1
    padded[:mr.shape[0], :mr.shape[1], :mr.shape[2]] = mr
    weights = gaussian_weights(window)                             # (wx, wy, wz)
    total = np.zeros(padded_shape, np.float32)                     # sum of weight * prediction
    weight_sum = np.zeros(padded_shape, np.float32)                # sum of weight
    for x in window_starts(padded_shape[0], window[0]):
        for y in window_starts(padded_shape[1], window[1]):
            for z in window_starts(padded_shape[2], window[2]):
                box = (slice(x, x + window[0]), slice(y, y + window[1]), slice(z, z + window[2]))
                with nn3d.no_grad():                               # keep no backward caches
                    prediction = model.forward(padded[box][None, None])[0, 0]  # (wx, wy, wz)
                total[box] += weights * prediction
                weight_sum[box] += weights
    return (total / weight_sum)[:mr.shape[0], :mr.shape[1], :mr.shape[2]]


def estimate_head_mask(mr):
    """(X, Y, Z) bool: voxels brighter than a tenth of the 99th percentile, with enclosed holes
    (the dark skull and CSF inside the scalp) filled slice by slice and the result dilated by one voxel."""
    mask = mr > HEAD_THRESHOLD * np.percentile(mr, 99)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return ndimage.binary_dilation(mask)


def synthesize_ct(model, mr, spacing, config):
    """CT in HU for an MR volume in RAS order, on the MR's own grid.

    mr: (X, Y, Z) float32 in scanner units; spacing: (3,) mm. config: the checkpoint's run config,
    giving the training window ("shape") and spacing. model: UNet3D in eval mode.
    """
    window = (int(config["shape"]),) * 3
    train_spacing = (float(config["spacing"]),) * 3
    resampled = resample(mr, shape_at_spacing(mr.shape, spacing, train_spacing))
    normalised, _ = normalise_mr(resampled, estimate_head_mask(resampled))
    prediction = predict_sliding_window(model, normalised, window)
    return resample(net_to_hu(prediction), mr.shape)


# ---- command line -------------------------------------------------------------------------------
def read_mr(path):
    """(data (X, Y, Z) float32, image) of a 3-D, finite, non-constant NIfTI file; ValueError otherwise."""
    data, _ = load_volume(path, "input MR")
    if data.size == 0 or data.max() == data.min():
        raise ValueError(f"input MR {path}: empty image (every voxel has the same value)")
    return data, nib.load(path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mri2ct.infer",
                                     description="Synthesise a CT (HU) from a T1 MRI with a trained UNet3D.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mri2ct.train (e.g. best.npz)")
    parser.add_argument("--input", required=True, help="T1 MRI, NIfTI (.nii or .nii.gz), any size/spacing")
    parser.add_argument("--output", required=True, help="synthetic CT to write (.nii or .nii.gz), in HU")
    parser.add_argument("--threads", type=int, default=None, help="Numba threads (default: all cores)")
    return parser.parse_args(argv)


def run(args):
    if not args.output.endswith((".nii", ".nii.gz")):
        raise ValueError(f"--output {args.output}: give a .nii or .nii.gz file name")
    nn3d.set_num_threads(args.threads)
    mr, image = read_mr(args.input)
    model, state = model_from_checkpoint(args.checkpoint)
    mr_ras, orientation, spacing = to_ras(mr, image.affine)
    ct_ras = synthesize_ct(model, mr_ras, spacing, state["config"])
    save_volume(args.output, from_ras(ct_ras, orientation).astype(np.float32), image.affine, image.header)
    print(f"wrote {args.output}: {mr.shape} voxels, HU {ct_ras.min():.0f} to {ct_ras.max():.0f}")


def main(argv=None):
    args = parse_args(argv)
    with exit_on_user_error():
        run(args)


if __name__ == "__main__":
    main()
