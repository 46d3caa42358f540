"""Data folders as people store them: one subfolder per patient with a paired MR and CT.

    DIR/1BA001/mr.nii.gz    T1 MRI, any dtype, any orientation, any spacing
              /ct.nii.gz    CT in HU (int16 with scale factors is common), same grid as the MR
              /mask.nii.gz  optional: the region to train and evaluate on (> 0 inside)
    DIR/1BA002/...

This is the SynthRAD2023 layout; `.nii` works as well as `.nii.gz`, and SynthRAD2025's MetaImage
`.mha` files are read with SimpleITK (optional extra `pip install -e '.[mha]'`). Other files are
ignored. A cohort written by `python -m mri2ct.data --out` is such a folder too, plus `manifest.json`
(with its split) and `labels.nii.gz` (tissue labels, for per-tissue errors).

    folder = open_data_folder("data/pairs")    # DataFolder: root, ids, paths, manifest or None
    scan = read_scan(folder, "1BA001")         # Scan: arrays in file order + the shared affine

Every problem is one line naming the folder or file: a subfolder without an MR or a CT, unreadable
files (every image is checked where it is read: nifti.py, and the same checks for `.mha`), an MR
that is not positive or a CT without air (normalise.check_mr, check_ct), an empty mask (a mask is
"> 0 inside", whatever its voxel type), grids that disagree, a folder with no patients at all, a
split that is not {"train", "val", "test"} lists of known, distinct patients (`check_split`).
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from mri2ct.data.normalise import check_ct, check_mr
from mri2ct.data.streams import SPLIT, generator
from mri2ct.data.nifti import check_geometry, check_same_grid, check_values, check_voxel_type, load_volume, open_image

MANIFEST = "manifest.json"
SCAN_SUFFIXES = (".nii.gz", ".nii", ".mha")
REQUIRED = ("mr", "ct")
OPTIONAL = ("mask", "labels")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # train gets the rest: 70/15/15
SPLIT_PARTS = ("train", "val", "test")          # a split has exactly these, each a list of patient ids
DEFAULT_SPACING_MM = 1.5   # training spacing when the scans are not all isotropic at one spacing
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK's world frame is LPS, NIfTI's (and ours) RAS


@dataclass
class DataFolder:
    root: str
    ids: list            # patient ids (subfolder names), sorted
    paths: dict          # {id: {"mr": path, "ct": path, "mask": path (optional), "labels": ...}}
    manifest: dict       # the cohort's manifest.json, or None for a plain paired folder


@dataclass
class Scan:
    """One patient as stored: arrays in the file's axis order (X, Y, Z), all on the MR's grid."""
    id: str
    mr: np.ndarray        # (X, Y, Z) float32, scanner units
    ct: np.ndarray        # (X, Y, Z) float32, HU (scale factors applied)
    mask: np.ndarray      # (X, Y, Z) uint8, 1 where the file is > 0; None when the folder has no mask
    labels: np.ndarray    # (X, Y, Z) uint8 or None (only synthetic cohorts have labels)
    affine: np.ndarray    # (4, 4) voxel -> RAS mm
    paths: dict           # {"mr": path, "ct": path, ...}: the files, for messages


def find_scan(folder, name):
    """Path of `name` + the first suffix of SCAN_SUFFIXES that exists in `folder`, else None."""
    for suffix in SCAN_SUFFIXES:
        path = os.path.join(folder, name + suffix)
        if os.path.isfile(path):
            return path
    return None


def read_manifest(root):
    """The cohort's manifest as a dict; one-line error if it is missing or unreadable."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{root}: no {MANIFEST} — not a cohort folder; create one with "
                                f"python -m mri2ct.data --out {root}")
    try:
        with open(path) as file:
            manifest = json.load(file)
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("split"), dict):
        raise ValueError(f"{path}: not a cohort manifest (no 'split' entry)")
    check_split(manifest["split"], f"{path} split")
    return manifest


def open_data_folder(root):
    """A cohort (with manifest.json) or a paired folder: its patients and their files.

    Hidden entries and plain files are ignored; a subfolder with neither an MR nor a CT is ignored
    too (e.g. `overview/`), one with only one of the two is an error naming it.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such folder")
    manifest = read_manifest(root) if os.path.isfile(os.path.join(root, MANIFEST)) else None
    paths = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        found = {kind: find_scan(folder, kind) for kind in REQUIRED + OPTIONAL}
        missing = [kind for kind in REQUIRED if found[kind] is None]
        if len(missing) == len(REQUIRED):
            continue
        if missing:
            raise FileNotFoundError(f"{folder}: no {missing[0]}.nii.gz, {missing[0]}.nii or "
                                    f"{missing[0]}.mha (every patient folder needs mr and ct)")
        paths[name] = {kind: path for kind, path in found.items() if path is not None}
    if not paths:
        raise FileNotFoundError(f"{root}: no patient folders (subfolders with mr.nii.gz and ct.nii.gz); "
                                f"create a synthetic set with python -m mri2ct.data --out {root}")
    if manifest is not None:
        listed = sorted(id for split in manifest["split"].values() for id in split)
        absent = [id for id in listed if id not in paths]
        if absent:
            raise FileNotFoundError(f"{root}: {MANIFEST} lists {absent[0]} but there is no "
                                    f"{os.path.join(root, absent[0])} with mr and ct")
    return DataFolder(root=root, ids=sorted(paths), paths=paths, manifest=manifest)


def simpleitk(path):
    """The SimpleITK module (an optional dependency), or a one-line error naming the file that needs it."""
    try:
        import SimpleITK
    except ImportError:
        raise ValueError(f"{path}: reading .mha files needs SimpleITK: pip install -e '.[mha]'") from None
    return SimpleITK


def read_image(path, name, dtype=np.float32):
    """(array (X, Y, Z) of dtype, affine (4, 4) voxel -> RAS mm) of a NIfTI or MetaImage file, checked
    as nifti.py checks every image."""
    if not path.endswith(".mha"):
        return load_volume(path, name, dtype)
    what = f"{name} {path}"
    sitk = simpleitk(path)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as error:
        raise ValueError(f"{what}: not a readable MetaImage file ({str(error).strip().splitlines()[-1]})") \
            from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what}: {image.GetDimension()}-D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} components, expected a 3-D volume")
    # ITK: world_LPS = origin + direction @ diag(spacing) @ index; NIfTI wants world_RAS.
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    affine = LPS_TO_RAS @ affine_lps
    check_geometry(affine, what)
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)         # ITK arrays are (Z, Y, X)
    check_voxel_type(data.dtype, image.GetPixelIDTypeAsString(), what)
    check_values(data, what)
    return data.astype(dtype, copy=False), affine


def read_scan(folder, patient):
    """Scan of one patient of a DataFolder: the files read, checked (plausible MR and CT, a mask that
    is not empty) and checked to share one grid."""
    paths = folder.paths[patient]
    mr, affine = read_image(paths["mr"], "MR")
    check_mr(mr, f"MR {paths['mr']}")
    ct, ct_affine = read_image(paths["ct"], "CT")
    check_ct(ct, f"CT {paths['ct']}")
    grid = [(paths["mr"], mr, affine), (paths["ct"], ct, ct_affine)]
    extra = {}
    if "mask" in paths:
        mask, mask_affine = read_image(paths["mask"], "mask")
        extra["mask"] = (mask > 0).astype(np.uint8)                 # inside: > 0, whatever the dtype
        grid.append((paths["mask"], extra["mask"], mask_affine))
        if not extra["mask"].any():
            raise ValueError(f"mask {paths['mask']}: the mask is empty (no voxel > 0; values from "
                             f"{mask.min():.4g} to {mask.max():.4g})")
    if "labels" in paths:
        extra["labels"], labels_affine = read_image(paths["labels"], "labels", dtype=np.uint8)
        grid.append((paths["labels"], extra["labels"], labels_affine))
    check_same_grid(grid)
    return Scan(id=patient, mr=mr, ct=ct, mask=extra.get("mask"), labels=extra.get("labels"), affine=affine,
                paths=paths)


def split_ids(ids, seed, fractions=SPLIT_FRACTIONS):
    """Seeded split of `ids` into {"train", "val", "test"}; fractions: {"val": f, "test": f}.

    val and test get round(f n) patients each (at least one when n >= 3), train the rest; each part
    sorted. The permutation of n ids depends only on (seed, n), so sorted ids give a reproducible split.
    """
    ids = sorted(ids)
    order = generator(seed, SPLIT).permutation(len(ids))
    sizes = {name: max(int(round(fraction * len(ids))), 1 if len(ids) >= 3 else 0)
             for name, fraction in fractions.items()}
    test = order[:sizes["test"]]
    val = order[sizes["test"]:sizes["test"] + sizes["val"]]
    train = order[sizes["test"] + sizes["val"]:]
    return {name: [ids[i] for i in sorted(part)] for name, part in (("train", train), ("val", val),
                                                                    ("test", test))}


def check_split(split, what, folder=None):
    """ValueError naming `what` unless `split` is {"train": [ids], "val": [ids], "test": [ids]}: exactly
    those three, lists of distinct strings, no patient in two parts, and (given a DataFolder) every
    id one of its patients."""
    if not isinstance(split, dict) or sorted(split) != sorted(SPLIT_PARTS):
        found = ", ".join(map(repr, split)) if isinstance(split, dict) else f"a JSON {type(split).__name__}"
        raise ValueError(f"{what}: expected exactly {{\"train\": [ids], \"val\": [ids], \"test\": [ids]}}, "
                         f"found {found or 'nothing'}")
    seen = {}
    for name in SPLIT_PARTS:
        ids = split[name]
        if not isinstance(ids, list) or not all(isinstance(id, str) for id in ids):
            raise ValueError(f"{what}: {name} must be a list of patient ids (strings), found {ids!r:.60}")
        for id in ids:
            if id in seen:
                raise ValueError(f"{what}: patient {id!r} is in {seen[id]}" +
                                 (" twice" if seen[id] == name else f" and in {name}; the parts must be disjoint"))
            seen[id] = name
            if folder is not None and id not in folder.paths:
                raise ValueError(f"{what}: {name} patient {id!r} is not a patient folder of {folder.root}")


def read_split(path, folder, flag="--split"):
    """{"train": [...], "val": [...], "test": [...]} from a split.json (check_split, its ids in
    `folder`); messages name the file as the flag that gave it."""
    what = f"{flag} {path}"
    try:
        with open(path) as file:
            split = json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{what}: is a folder, not a split.json file") from None
    except RecursionError:
        raise ValueError(f"{what}: not valid JSON (nested too deep)") from None
    except ValueError as error:
        raise ValueError(f"{what}: not valid JSON ({error})") from None
    check_split(split, what, folder)
    return {name: list(split[name]) for name in SPLIT_PARTS}


def choose_split(folder, seed, split_file=None, flag="--split"):
    """The split to use: `split_file` if given (named `flag` in messages), else the cohort manifest's,
    else split_ids(ids, seed)."""
    if split_file:
        return read_split(split_file, folder, flag)
    if folder.manifest is not None:
        return {name: list(ids) for name, ids in folder.manifest["split"].items()}
    return split_ids(folder.ids, seed)


def voxel_sizes(path):
    """(3,) voxel size in mm from a scan's header, without reading its data."""
    if path.endswith(".mha"):
        reader = simpleitk(path).ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        return np.asarray(reader.GetSpacing(), float)
    return np.sqrt((open_image(path, "MR").affine[:3, :3] ** 2).sum(axis=0))


def native_spacing(folder):
    """The MRs' own voxel size when every one is isotropic at the same size (within 1 %), else
    DEFAULT_SPACING_MM: the default training spacing."""
    sizes = np.array([voxel_sizes(folder.paths[id]["mr"]) for id in folder.ids])  # (patients, 3)
    if np.all(np.abs(sizes / sizes[0, 0] - 1) < 0.01):
        return float(round(sizes[0, 0], 4))
    return DEFAULT_SPACING_MM
