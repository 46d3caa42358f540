"""Voxel axes in RAS order and back: the model was trained on volumes whose axes run R, A, S.

A NIfTI affine maps voxel indices (i, j, k) to scanner millimetres (x = Right, y = Anterior,
z = Superior). Scanners store axes in many orders (LPS, LAS, PSR, ...). `to_ras` permutes and flips
the array, never interpolating, so that axis 0 runs towards R, axis 1 towards A and axis 2 towards S,
as in the training cohort; `from_ras` undoes exactly that.

    ras, orientation, spacing = to_ras(volume, affine)   # spacing: mm per voxel along R, A, S
    volume_again = from_ras(ras, orientation)
"""
import numpy as np
from nibabel import orientations

RAS = orientations.axcodes2ornt("RAS")


def to_ras(volume, affine):
    """(X, Y, Z) array in file order -> (array in RAS order, file orientation, (3,) spacing in mm)."""
    orientation = orientations.io_orientation(affine)             # file axis -> (RAS axis, flip)
    spacing_file = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = spacing_file          # reorder to R, A, S
    return orientations.apply_orientation(volume, orientation), orientation, spacing


def from_ras(volume, orientation):
    """Inverse of `to_ras`: an array in RAS order -> the file's axis order."""
    return orientations.apply_orientation(volume, orientations.ornt_transform(RAS, orientation))
