"""Predicted HU of white matter, grey matter and background on real T1 scans that no one here made.

    python docs/real_t1.py CHECKPOINT [T1.nii ...] [--tissue-maps GM.nii WM.nii]
                                                    (mri2ct installed, or PYTHONPATH=.)

Default scan: the crop of a real T1 brain that nibabel ships in its test data
(nibabel/tests/data/anatomical.nii, 33 x 41 x 25 voxels of 2 mm, LAS), which lies wholly inside the
brain; so each scan is first surrounded by MARGIN_MM of zeros (air, as around a skull-stripped
brain), and that margin is the background. Each scan then goes through `mri2ct.infer`'s path
(sliding_window.synthesize_ct). The tissues are classes of the scan itself, not of the model: inside the
original field of view, three Otsu classes of the T1 intensity (scikit-image, a test dependency):
the brightest is white matter, the middle grey matter (the darkest, CSF and partial volume, is not
reported).

With --tissue-maps (one scan only), grey and white matter are where the given probability maps
exceed 0.5, and the background is every voxel where the T1 is zero. That is how the MNI152 2009a
template is measured, the average of 152 real T1 scans that nilearn ships, skull-stripped, 1 mm,
with its own grey- and white-matter maps (in the nilearn wheel:
nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz).

A CT of a brain has white matter at about 25 HU, grey matter at about 40 HU, air at -1000 HU.
"""
import argparse
import os

import nibabel as nib
import numpy as np
from skimage.filters import threshold_multiotsu

from mri2ct.training.checkpoint import model_from_checkpoint, training_frame
from mri2ct.data.orientation import to_ras
from mri2ct.inference.sliding_window import synthesize_ct

MARGIN_MM = 20.0
NIBABEL_T1 = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


def read_ras(path):
    """(array (X, Y, Z) float32 in RAS, voxel spacing) of one NIfTI file."""
    image = nib.load(path)
    volume, _, spacing = to_ras(np.asarray(image.dataobj, dtype=np.float32), image.affine)
    return volume, spacing


def tissue_regions(mr, scanned, tissue_maps, margin):
    """{"white matter", "grey matter", "background": boolean masks} over the padded scan `mr`."""
    if tissue_maps is not None:
        grey, white = (np.pad(read_ras(path)[0], margin) for path in tissue_maps)  # same grid as the T1
        half = 0.5 * max(grey.max(), white.max())                     # maps in [0, 1] or [0, 255]
        return {"white matter": white > half, "grey matter": grey > half, "background": mr == 0}
    dark_grey, grey_white = threshold_multiotsu(mr[scanned], classes=3)
    return {"white matter": scanned & (mr > grey_white),
            "grey matter": scanned & (mr > dark_grey) & (mr <= grey_white),
            "background": ~scanned}


def tissue_medians(model, state, path, tissue_maps=None):
    """{"white matter", "grey matter", "background": median predicted HU} of one T1 file."""
    mr, spacing = read_ras(path)
    margin = [(int(round(MARGIN_MM / s)),) * 2 for s in spacing]
    scanned = np.pad(np.ones(mr.shape, bool), margin)                     # the original field of view
    mr = np.pad(np.maximum(mr, 0), margin)                                # (X, Y, Z) RAS, air around
    window, train_spacing = training_frame(state, path)
    sct = synthesize_ct(model, mr, spacing, window, train_spacing)          # (X, Y, Z) HU, RAS
    regions = tissue_regions(mr, scanned, tissue_maps, margin)
    return {name: float(np.median(sct[region])) for name, region in regions.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("scans", nargs="*", default=[NIBABEL_T1])
    parser.add_argument("--tissue-maps", nargs=2, metavar=("GM", "WM"))
    args = parser.parse_args(argv)
    if args.tissue_maps and len(args.scans) != 1:
        parser.error("--tissue-maps goes with one scan")
    model, state = model_from_checkpoint(args.checkpoint)
    for path in args.scans:
        medians = tissue_medians(model, state, path, args.tissue_maps)
        print(f"{path}: " + ", ".join(f"{name} {value:.0f} HU" for name, value in medians.items()))


if __name__ == "__main__":
    main()
