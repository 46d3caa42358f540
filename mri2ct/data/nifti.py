"""NIfTI volumes in and out: read with validation, write atomically.

    load_image(path, name=None, dtype=np.float32) -> (array (D, H, W), image)   # image: header, affine
    load_volume(path, name=None, dtype=np.float32) -> (array (D, H, W), affine (4, 4))
    save_volume(path, array, affine, header=None, dtype=None)
    check_same_grid(volumes)   volumes: [(path, array, affine), ...]

Axis names: a volume is a (D, H, W) array, the names nn3d gives the three spatial axes of
(N, C, D, H, W). Read from a file, D, H, W are the file's voxel axes i, j, k in storage order; after
orientation.to_ras, D runs towards the patient's Right, H towards Anterior, W towards Superior.

Every image is checked once, here, where it is read, and every problem is raised as one line that
names the file and the problem: FileNotFoundError for a missing file, IsADirectoryError for a folder,
ValueError for anything else:
    - from the header, before any voxel is read or any memory allocated (`open_image`): not a NIfTI
      file, more than MAX_VOXELS voxels, less data than the header promises, a voxel type that is not
      a real number (RGB, complex), an affine as the file stores it (before nibabel's repairs, which
      turn a voxel size of 0 into 1 mm) that is not finite, has voxel sizes outside
      MIN_SPACING_MM-MAX_SPACING_MM, or describes no 3-D grid;
    - from the voxels (`load_image`): not 3-D (a 4-D file with one volume counts as 3-D), NaN or
      infinite values, values the header's scaling (scl_slope, scl_inter) takes beyond float32's range
      (named as overflow; no RuntimeWarning is printed).
Grids that disagree (`check_same_grid`) are refused the same way.

Writing: `save_volume(..., description=...)` stores a note in the header's `descrip` field (80
bytes); mri2ct.infer marks its outputs so, and `description_of(path)` reads it back.
"""
import gzip
import os

import nibabel as nib
import numpy as np
from nibabel.imageglobals import LoggingOutputSuppressor
from nibabel.openers import ImageOpener

from mri2ct.common.atomic import atomic_path
from mri2ct.data.orientation import check_affine

AFFINE_TOLERANCE_MM = 1e-3  # affines closer than this (element-wise) describe the same grid
MAX_VOXELS = 512 ** 3       # largest volume read: 134 M voxels, 512 MB as float32
GZIP_SIZE_FIELD = 4         # a gzip member ends with its uncompressed size mod 2^32 (RFC 1952)
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 10.0   # voxel sizes a head scan can sensibly have
REAL_KINDS = "biuf"         # NumPy dtype kinds of real numbers: bool, signed and unsigned int, float
FLOAT32_MAX = float(np.finfo(np.float32).max)
DESCRIPTION_BYTES = 80      # size of the NIfTI-1 header's descrip field


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


def check_voxel_sizes(sizes, what):
    """ValueError unless every voxel size (mm) is within MIN_SPACING_MM..MAX_SPACING_MM (NaN is not)."""
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in sizes):
        raise ValueError(f"{what}: voxel size {' x '.join(f'{s:.4g}' for s in sizes)} mm is outside "
                         f"the supported {MIN_SPACING_MM}-{MAX_SPACING_MM} mm")


def check_geometry(affine, what):
    """ValueError naming `what` unless the (4, 4) voxel -> world affine is finite, its voxel sizes
    are in range (check_voxel_sizes) and its axes span 3-D (orientation.check_affine)."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise ValueError(f"{what}: the affine (voxel to world mm) holds NaN or infinite values; the file "
                         f"places its voxels nowhere")
    check_voxel_sizes(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), what)
    check_affine(affine, what)


def check_voxel_type(dtype, label, what):
    """ValueError unless voxels of `dtype` (its name in the file's format: `label`) are real numbers,
    not colours (RGB) nor complex numbers."""
    if np.dtype(dtype).kind not in REAL_KINDS:
        kind = "colour" if np.dtype(dtype).fields else "complex" if np.dtype(dtype).kind == "c" else "non-numeric"
        raise ValueError(f"{what}: voxel type {label} ({kind} values); only real-valued numeric voxel "
                         f"types are read")


def stored_affine(image, path):
    """The affine as the file's header stores it. nibabel repairs some headers as it loads them (a
    voxel size of 0 becomes 1 mm); this one is read again without the repairs."""
    with ImageOpener(path) as file:
        header = type(image.header).from_fileobj(file, check=False)
    return header.get_best_affine()


def open_image(path, name=None):
    """The nibabel image of a NIfTI file, checked from its header alone (module docstring), no voxel
    read. name: optional word for error messages, e.g. "MR" -> "MR data/p0/mr.nii.gz: ..."."""
    what = _describe(path, name)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: is a folder, not a NIfTI file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file")
    try:
        with LoggingOutputSuppressor():            # nibabel's notes on the repairs it makes
            image = nib.load(path)
            if isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
                affine = stored_affine(image, path)
    except Exception as error:  # nibabel raises several types for unreadable or non-NIfTI files
        raise ValueError(f"{what}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{what}: not a NIfTI file (read as {type(image).__name__})")
    check_header(image, what, path)
    check_voxel_type(image.get_data_dtype(), image.header.get_value_label("datatype"), what)
    check_geometry(affine, what)
    return image


def check_values(data, what, scaling="", unscaled=None):
    """ValueError if the voxels are NaN, infinite or beyond float32's range. scaling: how the file
    scales its stored values, for the message; unscaled: a function returning the stored values, so
    that a voxel the scaling made infinite is told from one stored so (read only if there is one)."""
    if not np.issubdtype(data.dtype, np.floating):
        return
    bad = int(np.count_nonzero(~np.isfinite(data)))
    stored_bad = bad if not bad or unscaled is None else int(np.count_nonzero(~np.isfinite(unscaled())))
    if bad > stored_bad:
        raise ValueError(f"{what}: overflow: {bad - stored_bad} voxels become infinite{scaling}")
    if bad:
        raise ValueError(f"{what}: {bad} NaN or infinite voxels")
    peak = float(np.abs(data).max(initial=0.0))
    if peak > FLOAT32_MAX:
        raise ValueError(f"{what}: overflow: values up to {peak:.4g}{scaling} exceed float32's largest "
                         f"{FLOAT32_MAX:.4g}")


def scaling_of(image):
    """' after the header's scaling (scl_slope s, scl_inter i)', or '' when the file has none."""
    slope, inter = image.dataobj.slope, image.dataobj.inter
    if (slope, inter) == (1.0, 0.0):
        return ""
    return f" after the header's scaling (scl_slope {slope:.4g}, scl_inter {inter:.4g})"


def load_image(path, name=None, dtype=np.float32):
    """Read a 3-D NIfTI image, checked (module docstring).

    path:  .nii or .nii.gz file.
    name:  optional word for error messages, e.g. "MR" -> "MR data/p0/mr.nii.gz: ...".
    dtype: dtype of the returned array.
    Returns (array (D, H, W) of dtype, the nibabel image: .affine voxel -> world mm, .header).
    A 4-D image with a single volume, (D, H, W, 1), is accepted as 3-D.
    """
    what = _describe(path, name)
    image = open_image(path, name)
    try:
        with np.errstate(over="ignore", invalid="ignore"):       # overflow is reported by check_values
            data = np.asarray(image.dataobj)
    except Exception as error:
        raise ValueError(f"{what}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what}: {data.ndim}-D image of shape {data.shape}, expected a 3-D volume")
    if data.size == 0:
        raise ValueError(f"{what}: shape {data.shape} holds no voxels")
    scaling = scaling_of(image)
    check_values(data, what, scaling, (lambda: np.asarray(image.dataobj.get_unscaled())) if scaling else None)
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


def save_volume(path, array, affine, header=None, dtype=None, description=None):
    """Write a NIfTI image atomically: a temporary file in the same folder, then os.replace.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    The array's dtype is stored as is (int16 stays int16, float32 stays float32), unless `dtype` asks
    for another: nibabel then stores scale factors (scl_slope, scl_inter) when the values need them.
    header: optional NIfTI header to copy (e.g. from the input scan); its dtype is overridden.
    description: optional text for the header's descrip field (at most DESCRIPTION_BYTES bytes).
    """
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    image.set_data_dtype(dtype or np.asarray(array).dtype)
    if description is not None:
        image.header["descrip"] = description.encode()[:DESCRIPTION_BYTES]
    with atomic_path(path) as temporary:   # keeps the .nii.gz suffix: nibabel compresses by name
        nib.save(image, temporary)


def description_of(path):
    """The descrip field of a NIfTI file's header as text, or None if the file is not a readable NIfTI."""
    try:
        with LoggingOutputSuppressor():
            header = nib.load(path).header
        return header["descrip"].tobytes().rstrip(b"\0").decode(errors="replace")
    except Exception:  # anything nibabel cannot read has no description
        return None
