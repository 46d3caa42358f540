"""NIfTI volumes in and out: read with validation, write atomically.

    load_image(path, name=None, dtype=np.float32) -> (array (D, H, W), image)   # image: header, affine
    load_volume(path, name=None, dtype=np.float32) -> (array (D, H, W), affine (4, 4))
    save_volume(path, array, affine, header=None, dtype=None)
    check_same_grid(volumes)   volumes: [(path, array, affine), ...]

Axis names: a volume is a (D, H, W) array, the names nn3d gives the three spatial axes of
(N, C, D, H, W). Read from a file, D, H, W are the file's voxel axes i, j, k in storage order; after
orientation.to_ras, D runs towards the patient's Right, H towards Anterior, W towards Superior.

Every problem with a file is raised as one line that names the file and the problem:
FileNotFoundError for a missing file, ValueError for anything else (not a NIfTI file, not 3-D,
more than MAX_VOXELS voxels, less data than the header promises, NaN or infinite values, grids that
disagree). The size checks use the header only, before any voxel is read or any memory allocated.
"""
import gzip
import os

import nibabel as nib
import numpy as np

from mri2ct.common.atomic import atomic_path

AFFINE_TOLERANCE_MM = 1e-3  # affines closer than this (element-wise) describe the same grid
MAX_VOXELS = 512 ** 3       # largest volume read: 134 M voxels, 512 MB as float32
GZIP_SIZE_FIELD = 4         # a gzip member ends with its uncompressed size mod 2^32 (RFC 1952)


def _describe(path, name):
    return f"{name} {path}" if name else f"{path}"


def stored_data_bytes(path, needed):
    """Bytes the file holds (uncompressed, for .gz), counted only as far as `needed`: the size for a
    plain file; for gzip the size field at its end, and, only if that says too few (it is modulo 2^32
    and covers the last member only), a streaming count that keeps nothing in memory."""
    if not path.endswith(".gz"):
        return os.path.getsize(path)
    with open(path, "rb") as file:
        file.seek(-min(GZIP_SIZE_FIELD, os.path.getsize(path)), os.SEEK_END)
        if int.from_bytes(file.read(), "little") >= needed:
            return needed
    count = 0
    try:
        with gzip.open(path, "rb") as stream:
            while count < needed and (chunk := stream.read(1 << 22)):
                count += len(chunk)
    except (OSError, EOFError):        # truncated or damaged stream: what was readable counts
        pass
    return count


def check_header(image, what, path):
    """ValueError if the header describes more than MAX_VOXELS voxels or more bytes than the file holds."""
    voxels = int(np.prod(image.shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise ValueError(f"{what}: header describes {' x '.join(map(str, image.shape))} voxels, more than "
                         f"the limit of {MAX_VOXELS:,}")
    needed = int(image.dataobj.offset) + voxels * image.get_data_dtype().itemsize
    stored = stored_data_bytes(path, needed)
    if stored < needed:
        raise ValueError(f"{what}: file is truncated, the header promises {needed:,} bytes of image data "
                         f"and the file holds {stored:,}")


def load_image(path, name=None, dtype=np.float32):
    """Read a 3-D NIfTI image.

    path:  .nii or .nii.gz file.
    name:  optional word for error messages, e.g. "MR" -> "MR data/p0/mr.nii.gz: ...".
    dtype: dtype of the returned array (labels and masks can ask for np.uint8).
    Returns (array (D, H, W) of dtype, the nibabel image: .affine voxel -> world mm, .header).
    A 4-D image with a single volume, (D, H, W, 1), is accepted as 3-D.
    """
    what = _describe(path, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file")
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for unreadable or non-NIfTI files
        raise ValueError(f"{what}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{what}: not a NIfTI file (read as {type(image).__name__})")
    check_header(image, what, path)
    try:
        data = np.asarray(image.dataobj)
    except Exception as error:
        raise ValueError(f"{what}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what}: {data.ndim}-D image of shape {data.shape}, expected a 3-D volume")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ValueError(f"{what}: {bad} NaN or infinite voxels")
    return data.astype(dtype, copy=False), image


def load_volume(path, name=None, dtype=np.float32):
    """(array (D, H, W) of dtype, affine (4, 4) float64) of a 3-D NIfTI image; see load_image."""
    data, image = load_image(path, name, dtype)
    return data, image.affine.astype(np.float64)


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
