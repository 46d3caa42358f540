"""From a scan as stored to what training reads, computed once per patient and cached on disk.

    patient = load_patient(folder, "1BA001", spacing=1.5, cache_dir)   # PatientVolumes

Steps (`preprocess`), each a documented choice, after `check_grid` (voxel sizes 0.1-10 mm, at most
MAX_GRID_VOXELS at the training spacing: a scan cannot make the preprocessing allocate gigabytes):
    1. reorder the axes to RAS (a permutation and flips of the array, no interpolation: orientation.py)
    2. resample MR and CT trilinearly to `spacing` mm, isotropic, keeping the field of view (voxel
       centres aligned as in `resample`); the mask and labels by nearest neighbour. Skipped when the
       scan already has that spacing (within SPACING_TOLERANCE_MM), so the cohort is used as written.
    3. clip the CT to [-1024, 3000] HU, the range SynthRAD2023 evaluates in
    4. mask: the given one (> 0), or `compute_mask` of the MR when the folder has none
    5. normalise the MR inside the mask (normalise.py: white-matter peak)

Cache: the results are `.npy` files, memory-mapped when read, in
    cache_dir/<patient id>-<key>/{mr, ct_hu, mask, labels}.npy + meta.json
where key is a hash of everything the result depends on: the preprocessing version, the spacing and
each source file's absolute path, size and modification time. Editing a scan or changing --spacing
therefore computes a new entry; the old one is simply no longer used. Entries are written into a
temporary folder and renamed when complete, so a killed run never leaves a half entry. meta.json,
written last, is the entry's completeness mark: it lists every array file with its size in bytes,
shape and dtype. An entry that does not match its mark (a file missing or cut short, as a
temporary-file cleaner can leave it, or not the array meta.json describes; meta.json itself missing
or unreadable) is damaged: it is removed and built again, with one warning line on stderr naming it.
(Sizes, not checksums: a file overwritten in place with as many bytes is not noticed.) The cache lives outside the data
folder (default: $MRI2CT_CACHE or ~/.cache/mri2ct; --cache DIR to choose).
"""
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
from nibabel import orientations
from scipy import ndimage

from mri2ct.common.atomic import make_temporary_folder
from mri2ct.data.folders import read_scan
from mri2ct.data.nifti import check_voxel_sizes
from mri2ct.data.normalise import normalise_mr
from mri2ct.data.orientation import to_ras

PREPROCESS_VERSION = 2          # bump when any step above changes: old cache entries stop matching
CT_RANGE_HU = (-1024.0, 3000.0)
SPACING_TOLERANCE_MM = 1e-3
MASK_THRESHOLD = 0.1            # of the MR's 99.9th percentile: head vs background air
CACHE_FILES = ("mr", "ct_hu", "mask", "labels")
MAX_GRID_VOXELS = 320 ** 3    # resampled grid: 33 M voxels, ~130 MB per float32 volume


def default_cache_dir():
    return os.environ.get("MRI2CT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mri2ct")


@dataclass
class PatientVolumes:
    """One patient ready for training: RAS axes, isotropic `spacing`, normalised MR."""
    id: str
    mr: np.ndarray       # (X, Y, Z) float32, normalised (divided by mr_scale, clipped)
    ct_hu: np.ndarray    # (X, Y, Z) float32, Hounsfield units clipped to CT_RANGE_HU
    mask: np.ndarray     # (X, Y, Z) bool: given or computed
    labels: np.ndarray   # (X, Y, Z) uint8 tissue labels, or None
    affine: np.ndarray   # (4, 4) voxel -> RAS mm of this grid
    mr_scale: float      # the MR normalisation divisor
    source: dict         # what evaluation needs to go back: "orientation" (3, 2), "ras_shape" (3,)


# ---- geometry -----------------------------------------------------------------------------------
def shape_at_spacing(shape, spacing, new_spacing):
    """Grid size covering the same field of view at `new_spacing` (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def check_grid(shape, spacing, train_spacing, name="the scan"):
    """ValueError unless every voxel size is within the range nifti.check_voxel_sizes accepts and the
    grid resampled to `train_spacing` stays under MAX_GRID_VOXELS. Costs nothing: header numbers only."""
    check_voxel_sizes(spacing, name)
    check_voxel_sizes(train_spacing, "the checkpoint's training spacing")
    grid = shape_at_spacing(shape, spacing, train_spacing)
    if int(np.prod(grid, dtype=np.int64)) > MAX_GRID_VOXELS:
        raise ValueError(f"{name} covers {' x '.join(map(str, grid))} voxels at the training spacing, "
                         f"more than the limit of {MAX_GRID_VOXELS:,}")


def resample(volume, shape, order=1):
    """Resample a 3-D array to `shape` over the same field of view (grid_mode: the outer voxel edges
    stay where they are, voxel centres move with the spacing); order 1 trilinear, 0 nearest."""
    factors = [new / old for new, old in zip(shape, volume.shape)]
    resampled = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    assert resampled.shape == tuple(shape), (resampled.shape, shape)
    return resampled


def resampled_affine(affine, old_shape, new_shape):
    """Affine of the `resample`d grid: new voxel i sits at old index (i + 1/2) old/new - 1/2."""
    factor = np.asarray(old_shape, float) / np.asarray(new_shape, float)
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(factor)
    index_map[:3, 3] = (factor - 1) / 2
    return affine @ index_map


def compute_mask(mr):
    """(X, Y, Z) bool head (or brain) mask of an MR without one:
    1. threshold at MASK_THRESHOLD x the 99.9th percentile (air and noise are below);
    2. keep the largest connected component (drops specks and ghosts outside the head);
    3. fill enclosed holes (the dark skull and CSF inside the scalp) in 3-D and then in every axial
       slice (a head cut by the field of view is not closed in 3-D);
    4. dilate by one voxel (partial-volume edges belong to the head)."""
    mask = mr > MASK_THRESHOLD * np.percentile(mr, 99.9)
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == np.argmax(sizes)
    mask = ndimage.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return ndimage.binary_dilation(mask)


def preprocess(scan, spacing):
    """PatientVolumes of a Scan (folders.read_scan) at `spacing` mm: steps 1-5 of the module docstring."""
    what = f"MR {scan.paths['mr']}"
    mr, orientation, ras_spacing = to_ras(scan.mr, scan.affine, what)
    check_grid(mr.shape, ras_spacing, (spacing,) * 3, what)
    volumes = {"ct": scan.ct, "mask": scan.mask, "labels": scan.labels}
    volumes = {name: None if v is None else to_ras(v, scan.affine)[0] for name, v in volumes.items()}
    ras_affine = scan.affine @ _ras_index_map(orientation, scan.mr.shape)
    ras_shape = mr.shape
    shape = shape_at_spacing(ras_shape, ras_spacing, (spacing,) * 3)
    if np.max(np.abs(np.asarray(ras_spacing) - spacing)) > SPACING_TOLERANCE_MM:
        mr = resample(mr, shape)
        volumes["ct"] = resample(volumes["ct"], shape)
        for name in ("mask", "labels"):
            if volumes[name] is not None:
                volumes[name] = resample(volumes[name], shape, order=0)
        affine = resampled_affine(ras_affine, ras_shape, shape)
    else:
        affine = ras_affine
    ct_hu = np.clip(volumes["ct"], *CT_RANGE_HU).astype(np.float32)
    mask = volumes["mask"] > 0 if volumes["mask"] is not None else compute_mask(mr)
    mask_name = f"mask {scan.paths['mask']}" if volumes["mask"] is not None else f"the mask computed from {what}"
    if not mask.any():
        raise ValueError(f"{mask_name}: the mask is empty at {spacing} mm")
    try:
        mr, scale = normalise_mr(mr, mask)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    return PatientVolumes(id=scan.id, mr=mr, ct_hu=ct_hu, mask=mask, labels=volumes["labels"],
                          affine=affine, mr_scale=scale,
                          source={"orientation": orientation.tolist(), "ras_shape": list(ras_shape)})


def _ras_index_map(orientation, shape):
    """(4, 4) map from RAS-ordered voxel indices back to the file's voxel indices."""
    return orientations.inv_ornt_aff(orientation, shape)


# ---- cache --------------------------------------------------------------------------------------
def cache_key(paths, spacing):
    """Hex digest of the preprocessing version, the spacing and each file's path, size and mtime."""
    files = []
    for kind in sorted(paths):
        status = os.stat(paths[kind])
        files.append([kind, os.path.abspath(paths[kind]), status.st_size, status.st_mtime_ns])
    text = json.dumps({"version": PREPROCESS_VERSION, "spacing": float(spacing), "files": files})
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _write_entry(entry, patient):
    """Write a PatientVolumes into a temporary sibling of `entry`, meta.json (the completeness mark)
    last, then rename it to `entry`."""
    parent = os.path.dirname(entry)
    os.makedirs(parent, exist_ok=True)
    temporary = make_temporary_folder(parent, prefix=f".{os.path.basename(entry)}.")
    try:
        arrays = {"mr": patient.mr, "ct_hu": patient.ct_hu, "mask": patient.mask, "labels": patient.labels}
        files = {}
        for name, array in arrays.items():
            if array is not None:
                array = np.ascontiguousarray(array)
                np.save(os.path.join(temporary, f"{name}.npy"), array)
                files[name] = {"bytes": os.path.getsize(os.path.join(temporary, f"{name}.npy")),
                               "shape": list(array.shape), "dtype": array.dtype.str}
        meta = {"id": patient.id, "affine": patient.affine.tolist(), "mr_scale": patient.mr_scale,
                "source": patient.source, "files": files}
        with open(os.path.join(temporary, "meta.json"), "w") as file:
            json.dump(meta, file)
        try:
            os.rename(temporary, entry)
        except OSError:        # another process finished the same entry first: theirs is as good
            shutil.rmtree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _read_entry(entry):
    """PatientVolumes of a cache entry, or None (after a warning on stderr) if the entry does not
    match its completeness mark (module docstring)."""
    try:
        with open(os.path.join(entry, "meta.json")) as file:
            meta = json.load(file)
        arrays = dict.fromkeys(CACHE_FILES)
        missing = [name for name in CACHE_FILES[:3] if name not in meta["files"]]
        if missing or not set(meta["files"]) <= set(CACHE_FILES):
            raise ValueError(f"meta.json lists the files {sorted(meta['files'])}")
        for name, expected in meta["files"].items():
            path = os.path.join(entry, f"{name}.npy")
            if os.path.getsize(path) != expected["bytes"]:
                raise ValueError(f"{name}.npy has {os.path.getsize(path)} bytes, meta.json says {expected['bytes']}")
            arrays[name] = np.load(path, mmap_mode="r")
            if list(arrays[name].shape) != expected["shape"] or arrays[name].dtype.str != expected["dtype"]:
                raise ValueError(f"{name}.npy holds {arrays[name].dtype} {arrays[name].shape}, meta.json says "
                                 f"{expected['dtype']} {expected['shape']}")
        return PatientVolumes(id=meta["id"], mr=arrays["mr"], ct_hu=arrays["ct_hu"], mask=arrays["mask"],
                              labels=arrays["labels"], affine=np.asarray(meta["affine"], dtype=np.float64),
                              mr_scale=float(meta["mr_scale"]), source=meta["source"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        print(f"warning: cache entry {entry} is damaged ({reason}); building it again", file=sys.stderr,
              flush=True)
        return None


def cache_entry(folder, patient, spacing, cache_dir):
    """Path of the cache entry of one patient of a DataFolder at `spacing`."""
    return os.path.join(cache_dir, f"{patient}-{cache_key(folder.paths[patient], spacing)}")


def load_patient(folder, patient, spacing, cache_dir):
    """PatientVolumes of `patient` of a DataFolder at `spacing` mm: from the cache, or preprocessed and
    cached first (again, if the entry is damaged). The arrays are read-only memory maps."""
    entry = cache_entry(folder, patient, spacing, cache_dir)
    if os.path.isdir(entry):
        volumes = _read_entry(entry)
        if volumes is not None:
            return volumes
        shutil.rmtree(entry, ignore_errors=True)
    _write_entry(entry, preprocess(read_scan(folder, patient), spacing))
    volumes = _read_entry(entry)
    if volumes is None:
        raise OSError(f"cache entry {entry}: damaged as soon as it was written (is the disk full?)")
    return volumes
