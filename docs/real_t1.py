"""Predicted HU of white matter, grey matter and background on real T1 scans that no one here made.

    python docs/real_t1.py CHECKPOINT [T1.nii ...]      (mri2ct installed, or PYTHONPATH=.)

Default scan: the crop of a real T1 brain that nibabel ships in its test data
(nibabel/tests/data/anatomical.nii, 33 x 41 x 25 voxels of 2 mm, LAS), which lies wholly inside the
brain; so each scan is first surrounded by MARGIN_MM of zeros (air, as around a skull-stripped
brain), and that margin is the background. Each scan then goes through `mri2ct.infer`'s path
(predict.synthesize_ct). The tissues are classes of the scan itself, not of the model: inside the
original field of view, three Otsu classes of the T1 intensity (scikit-image, a test dependency):
the brightest is white matter, the middle grey matter (the darkest, CSF and partial volume, is not
reported). A CT of a brain has white matter at about 25 HU, grey matter at about 40 HU, air at
-1000 HU.
"""
import os
import sys

import nibabel as nib
import numpy as np
from skimage.filters import threshold_multiotsu

from mri2ct.checkpoint import model_from_checkpoint, training_frame
from mri2ct.orientation import to_ras
from mri2ct.predict import synthesize_ct

MARGIN_MM = 20.0
NIBABEL_T1 = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


def tissue_medians(model, state, path):
    """{"white matter", "grey matter", "background": median predicted HU} of one T1 file."""
    image = nib.load(path)
    mr, _, spacing = to_ras(np.asarray(image.dataobj, dtype=np.float32), image.affine)
    margin = [(int(round(MARGIN_MM / s)),) * 2 for s in spacing]
    scanned = np.pad(np.ones(mr.shape, bool), margin)                     # the original field of view
    mr = np.pad(np.maximum(mr, 0), margin)                                # (X, Y, Z) RAS, air around
    window, train_spacing = training_frame(state, path)
    sct = synthesize_ct(model, mr, spacing, window, train_spacing)          # (X, Y, Z) HU, RAS
    dark_grey, grey_white = threshold_multiotsu(mr[scanned], classes=3)
    return {"white matter": float(np.median(sct[scanned & (mr > grey_white)])),
            "grey matter": float(np.median(sct[scanned & (mr > dark_grey) & (mr <= grey_white)])),
            "background": float(np.median(sct[~scanned]))}


def main(argv):
    model, state = model_from_checkpoint(argv[0])
    for path in argv[1:] or [NIBABEL_T1]:
        medians = tissue_medians(model, state, path)
        print(f"{path}: " + ", ".join(f"{name} {value:.0f} HU" for name, value in medians.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
