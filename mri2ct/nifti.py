"""NIfTI volumes in and out: read with validation, write atomically.

    load_volume(path, name=None, dtype=np.float32) -> (array (D, H, W), affine (4, 4))
    save_volume(path, array, affine, header=None, dtype=None)
    check_same_grid(volumes)   volumes: [(path, array, affine), ...]

Every problem with a file is raised as one line that names the file and the problem:
FileNotFoundError for a missing file, ValueError for anything else (not a NIfTI file, not 3-D,
NaN or infinite values, grids that disagree).
"""
import os

import nibabel as nib
import numpy as np

from mri2ct.atomic import atomic_path

AFFINE_TOLERANCE_MM = 1e-3  # affines closer than this (element-wise) describe the same grid


def _describe(path, name):
    return f"{name} {path}" if name else f"{path}"


def load_volume(path, name=None, dtype=np.float32):
    """Read a 3-D NIfTI image.

    path:  .nii or .nii.gz file.
    name:  optional word for error messages, e.g. "MR" -> "MR data/p0/mr.nii.gz: ...".
    dtype: dtype of the returned array (labels and masks can ask for np.uint8).
    Returns (array (D, H, W) of dtype, affine (4, 4) float64 voxel -> world mm).
    A 4-D image with a single volume, (D, H, W, 1), is accepted as 3-D.
    """
    what = _describe(path, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file")
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except Exception as error:  # nibabel raises several types for unreadable or non-NIfTI files
        raise ValueError(f"{what}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{what}: not a NIfTI file (read as {type(image).__name__})")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what}: {data.ndim}-D image of shape {data.shape}, expected a 3-D volume")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ValueError(f"{what}: {bad} NaN or infinite voxels")
    return data.astype(dtype, copy=False), image.affine.astype(np.float64)


def check_same_grid(volumes):
    """Raise ValueError unless every (path, array, affine) shares the first one's shape and affine."""
    first_path, first_array, first_affine = volumes[0]
    for path, array, affine in volumes[1:]:
        if array.shape != first_array.shape:
            raise ValueError(f"{path}: shape {array.shape} differs from {first_path} shape "
                             f"{first_array.shape}")
        if not np.allclose(affine, first_affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
            raise ValueError(f"{path}: affine differs from {first_path} affine "
                             f"(max difference {np.abs(affine - first_affine).max():.4g} mm)")


def save_volume(path, array, affine, header=None, dtype=None):
    """Write a NIfTI image atomically: a temporary file in the same folder, then os.replace.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    The array's dtype is stored as is (int16 stays int16, float32 stays float32), unless `dtype` asks
    for another: nibabel then stores scale factors (scl_slope, scl_inter) when the values need them.
    header: optional NIfTI header to copy (e.g. from the input scan); its dtype is overridden.
    """
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    image.set_data_dtype(dtype or np.asarray(array).dtype)
    with atomic_path(path) as temporary:   # keeps the .nii.gz suffix: nibabel compresses by name
        nib.save(image, temporary)
