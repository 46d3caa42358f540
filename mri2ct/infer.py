"""Synthesise a CT from a T1 MRI of any size, spacing and orientation:

    python -m mri2ct.infer --checkpoint PATH --input MR.nii.gz --output SCT.nii.gz

    1. read the NIfTI once and check it: 3-D, finite, not constant, a real grid, within the size
       limits (nifti.py: header checks before any voxel is read; predict.py: voxel sizes and the
       resampled grid)
    2. reorder the axes to RAS (a permutation and flips, no interpolation; orientation.py)
    3. predict the CT in HU on that grid (predict.synthesize_ct: robust clip, resample to the
       training spacing, normalise, Gaussian-blended sliding windows, back to the scan's grid)
    4. undo step 2 and write float32 HU with the input's affine and header, atomically (never a
       partial file)

Every bad input stops with a one-line error and writes nothing; `--output` may not be the input
file itself (compared by device and inode, so links to it count too).
"""
import argparse
import os

import numpy as np

import nn3d
from mri2ct import cli
from mri2ct.checkpoint import model_from_checkpoint, training_frame
from mri2ct.nifti import load_image, save_volume
from mri2ct.orientation import from_ras, to_ras
from mri2ct.predict import synthesize_ct


def read_mr(path):
    """(data (D, H, W) float32, image) of a 3-D, finite, non-constant NIfTI file; ValueError otherwise."""
    data, image = load_image(path, "input MR")
    if data.size == 0 or data.max() == data.min():
        raise ValueError(f"input MR {path}: empty image (every voxel has the same value)")
    return data, image


def same_file(first, second):
    """True if both paths name one file: same device and inode (hard links, symlinks) or same real path."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        a, b = os.stat(first), os.stat(second)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mri2ct.infer",
                                     description="Synthesise a CT (HU) from a T1 MRI with a trained UNet3D.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mri2ct.train (e.g. best.npz)")
    parser.add_argument("--input", required=True, help="T1 MRI, NIfTI (.nii or .nii.gz), any size/spacing")
    parser.add_argument("--output", required=True, help="synthetic CT to write (.nii or .nii.gz), in HU")
    cli.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.output.endswith((".nii", ".nii.gz")):
        raise ValueError(f"--output {args.output}: give a .nii or .nii.gz file name")
    if same_file(args.input, args.output):
        raise ValueError(f"--output {args.output} is the input MR itself; choose another file name")
    nn3d.set_num_threads(args.threads)
    mr, image = read_mr(args.input)
    model, state = model_from_checkpoint(args.checkpoint)
    window, train_spacing = training_frame(state, args.checkpoint)
    mr_ras, orientation, spacing = to_ras(mr, image.affine, f"input MR {args.input}")
    ct_ras = synthesize_ct(model, mr_ras, spacing, window, train_spacing)
    save_volume(args.output, from_ras(ct_ras, orientation).astype(np.float32), image.affine, image.header)
    print(f"wrote {args.output}: {mr.shape} voxels, HU {ct_ras.min():.0f} to {ct_ras.max():.0f}")


if __name__ == "__main__":
    cli.run(main)
