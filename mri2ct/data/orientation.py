"""Voxel axes in RAS order and back: the model was trained on volumes whose axes run R, A, S.

A NIfTI affine maps voxel indices (i, j, k) to scanner millimetres (x = Right, y = Anterior,
z = Superior). Scanners store axes in many orders (LPS, LAS, PSR, ...). `to_ras` permutes and flips
the array, never interpolating, so that axis 0 runs towards R, axis 1 towards A and axis 2 towards S,
as in the training cohort; `from_ras` undoes exactly that.

    ras, orientation, spacing = to_ras(volume, affine)   # spacing: mm per voxel along R, A, S
    volume_again = from_ras(ras, orientation)

Volumes are (D, H, W) arrays (the axis names of nifti.py): in file order before `to_ras`, and after
it D runs towards the patient's Right, H towards Anterior, W towards Superior. An affine whose
columns are not three independent, finite, non-zero directions describes no grid and is refused
with ValueError.
"""
import numpy as np
from nibabel import orientations

RAS = orientations.axcodes2ornt("RAS")


DEGENERATE = 1e-6   # |det| below this fraction of the product of voxel sizes: axes (nearly) parallel


def check_affine(affine, what):
    """Voxel sizes (3,) mm along the file axes; ValueError naming `what` unless the affine's 3x3 part
    is finite with non-zero, independent columns."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.sqrt((linear ** 2).sum(axis=0))                  # mm per voxel along each file axis
    determinant = np.linalg.det(linear) if np.isfinite(linear).all() else np.nan
    if not abs(determinant) >= DEGENERATE * np.prod(spacing) or not (spacing > 0).all():
        raise ValueError(f"{what}: degenerate affine, voxel sizes {' x '.join(f'{s:.4g}' for s in spacing)} "
                         f"mm and determinant {determinant:.4g}; the file describes no 3-D grid")
    return spacing


def to_ras(volume, affine, what="image"):
    """(D, H, W) array in file order -> (array in RAS order, file orientation, (3,) spacing in mm).
    `what` names the image in the error message of a degenerate affine."""
    spacing_file = check_affine(affine, what)
    orientation = orientations.io_orientation(affine)             # file axis -> (RAS axis, flip)
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = spacing_file          # reorder to R, A, S
    return orientations.apply_orientation(volume, orientation), orientation, spacing


def from_ras(volume, orientation):
    """Inverse of `to_ras`: an array in RAS order -> the file's axis order."""
    return orientations.apply_orientation(volume, orientations.ornt_transform(RAS, orientation))
