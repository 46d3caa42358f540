"""The synthetic cohort on disk, and the dataset the trainer reads from it.

Cohort folder (written by `generate_cohort`, CLI `python -m mri2ct.data --out DIR`):

    DIR/manifest.json          generator version and parameters, seed, split {train, val, test}
    DIR/patient_000/mr.nii.gz      T1 signal, float32, arbitrary scanner units
                   /ct.nii.gz      Hounsfield units, int16
                   /mask.nii.gz    head mask (dilated), uint8
                   /labels.nii.gz  tissue labels (mri2ct.phantom constants), uint8
    all four with the same RAS affine and the true voxel spacing.

Normalisation (what the network sees), both invertible:
    MR:  mr / s, with s the 99th percentile of the MR inside the head mask (per volume;
         MRI is not quantitative, so only relative intensity means anything).
    CT:  x = hu / 1000  (hu_to_net), hu = 1000 x (net_to_hu): -1000..+1000 HU -> -1..1, no clipping.
         Bone up to ~1800 HU maps to 1.8; a linear map keeps the MSE proportional to HU^2 everywhere.

Order and augmentation of an epoch, a pure function of (seed, epoch):
    dataset = CohortDataset(root, "train", augment=True, seed=0)
    for mr, ct in dataset.iterate(epoch):      # each (1, 1, D, H, W) float32
        ...
`epoch_plan(epoch)` gives the same sequence as a list of (index, flips): a shuffled order and, with
augment=True, a flip of each axis with probability 0.5, applied to MR and CT together. The plan is drawn
from a generator seeded by (seed, epoch) alone, so a run resumed at epoch e sees exactly the sequence
the uninterrupted run would have seen.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mri2ct import phantom
from mri2ct.nifti import check_same_grid, load_volume, save_volume

MANIFEST = "manifest.json"
VOLUME_FILES = ("mr", "ct", "mask", "labels")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # train gets the rest: 70/15/15
MR_PERCENTILE = 99.0
HU_SCALE = 1000.0

# Independent random streams derived from one seed (numpy SeedSequence spawn keys).
_PATIENT_STREAM, _SPLIT_STREAM, _EPOCH_STREAM = 0, 1, 2


def hu_to_net(hu):
    """CT in Hounsfield units -> network range: x = hu / 1000 (float32, no clipping)."""
    return (np.asarray(hu, dtype=np.float32) / np.float32(HU_SCALE)).astype(np.float32)


def net_to_hu(x):
    """Network output -> Hounsfield units: hu = 1000 x, the inverse of hu_to_net."""
    return (np.asarray(x, dtype=np.float32) * np.float32(HU_SCALE)).astype(np.float32)


def normalise_mr(mr, mask=None):
    """Divide an MR volume by its 99th percentile inside the mask (whole volume if mask is None).

    Returns (mr / s as float32, s). Raises ValueError if s is not positive (an empty image).
    """
    inside = mr[mask > 0] if mask is not None else mr.ravel()
    if inside.size == 0:
        raise ValueError("MR normalisation: the mask is empty")
    scale = float(np.percentile(inside, MR_PERCENTILE))
    if not scale > 0:
        raise ValueError(f"MR normalisation: 99th percentile is {scale}, the image is empty")
    return (mr / np.float32(scale)).astype(np.float32), scale


def patient_id(index):
    return f"patient_{index:03d}"


def split_patients(patients, seed):
    """Seeded 70/15/15 split of `patients` patient ids: {"train": [...], "val": [...], "test": [...]}.

    val and test get round(0.15 n) patients each (at least one when n >= 3), train the rest;
    42/9/9 for 60. Ids are sorted within each split.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_STREAM,)))
    order = rng.permutation(patients)
    sizes = {name: max(int(round(fraction * patients)), 1 if patients >= 3 else 0)
             for name, fraction in SPLIT_FRACTIONS.items()}
    test = order[:sizes["test"]]
    val = order[sizes["test"]:sizes["test"] + sizes["val"]]
    train = order[sizes["test"] + sizes["val"]:]
    return {name: [patient_id(i) for i in sorted(part)]
            for name, part in (("train", train), ("val", val), ("test", test))}


def _write_patient(task):
    """Generate patient `index` and write its four files; returns (id, drawn parameters)."""
    out_dir, index, seed, shape, spacing, supersample = task
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PATIENT_STREAM, index)))
    patient = phantom.generate_patient(rng, shape, spacing, supersample)
    folder = os.path.join(out_dir, patient_id(index))
    os.makedirs(folder, exist_ok=True)
    for name in VOLUME_FILES:
        save_volume(os.path.join(folder, f"{name}.nii.gz"), getattr(patient, name), patient.affine)
    return patient_id(index), patient.params


def _limit_threads():
    threadpool_limits(1)  # one BLAS thread per worker process: the workers already fill the cores


def generate_cohort(out_dir, patients=60, seed=0, shape=64, spacing=3.0, supersample=2, workers=None):
    """Write a cohort of `patients` synthetic patients and its manifest to `out_dir`; returns the manifest.

    Patient i is drawn from its own random stream (seed, i): the same seed gives the same files,
    whatever the number of patients or workers. workers: processes (default: up to 2 CPUs).
    """
    workers = workers or min(2, os.cpu_count() or 1)
    os.makedirs(out_dir, exist_ok=True)
    tasks = [(out_dir, i, seed, shape, spacing, supersample) for i in range(patients)]
    progress = dict(total=patients, desc="patients", unit="patient")
    if workers == 1:
        results = [_write_patient(task) for task in tqdm(tasks, **progress)]
    else:
        with Pool(workers, initializer=_limit_threads) as pool:
            results = list(tqdm(pool.imap(_write_patient, tasks), **progress))
    manifest = {
        "generator": "mri2ct.phantom",
        "version": phantom.GENERATOR_VERSION,
        "parameters": {"patients": patients, "seed": seed, "shape": shape, "spacing": spacing,
                       "supersample": supersample},
        "labels": {str(label): name for label, name in phantom.LABEL_NAMES.items()},
        "split": split_patients(patients, seed),
        "patients": dict(results),
    }
    temporary = os.path.join(out_dir, f".{MANIFEST}.tmp")
    with open(temporary, "w") as file:
        json.dump(manifest, file, indent=1)
    os.replace(temporary, os.path.join(out_dir, MANIFEST))  # written last: a cohort is complete
    return manifest


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
    return manifest


@dataclass
class PatientVolumes:
    """One patient as loaded: network-ready MR, CT in HU, and what evaluation needs."""
    id: str
    mr: np.ndarray       # (D, H, W) float32, normalised (divided by mr_scale)
    ct_hu: np.ndarray    # (D, H, W) float32, Hounsfield units
    mask: np.ndarray     # (D, H, W) bool, head
    labels: np.ndarray   # (D, H, W) uint8, tissue labels
    affine: np.ndarray   # (4, 4) RAS affine shared by the four files
    mr_scale: float      # the MR normalisation divisor (99th percentile inside the mask)


def load_patient(folder, patient=None):
    """Load and validate one patient folder (mr, ct, mask, labels .nii.gz); returns PatientVolumes."""
    paths = {name: os.path.join(folder, f"{name}.nii.gz") for name in VOLUME_FILES}
    mr, affine = load_volume(paths["mr"], "MR")
    ct, ct_affine = load_volume(paths["ct"], "CT")
    mask, mask_affine = load_volume(paths["mask"], "mask", dtype=np.uint8)
    labels, labels_affine = load_volume(paths["labels"], "labels", dtype=np.uint8)
    check_same_grid([(paths["mr"], mr, affine), (paths["ct"], ct, ct_affine),
                     (paths["mask"], mask, mask_affine), (paths["labels"], labels, labels_affine)])
    mask = mask > 0
    if not mask.any():
        raise ValueError(f"{paths['mask']}: the head mask is empty")
    mr, scale = normalise_mr(mr, mask)
    return PatientVolumes(id=patient or os.path.basename(os.path.normpath(folder)), mr=mr, ct_hu=ct,
                          mask=mask, labels=labels, affine=affine, mr_scale=scale)


def apply_flips(volume, flips):
    """Flip the last three axes of `volume` (..., D, H, W) where flips[axis] is True; a contiguous copy."""
    axes = tuple(volume.ndim - 3 + axis for axis in range(3) if flips[axis])
    return np.ascontiguousarray(np.flip(volume, axis=axes) if axes else volume)


class CohortDataset:
    """The (MR, CT) pairs of one split of a cohort folder, loaded on first use and kept in memory.

    dataset[i]          -> (mr, ct): (1, 1, D, H, W) float32 each, normalised, never flipped
    dataset.patient(i)  -> PatientVolumes: id, MR, CT in HU, mask, labels, affine
    dataset.epoch_plan(epoch, shuffle=True) -> [(index, flips (3,) bool), ...]
    dataset.iterate(epoch, shuffle=True)    -> yields (mr, ct) following epoch_plan
    """

    def __init__(self, root, split, augment=False, seed=0):
        self.root = root
        self.manifest = read_manifest(root)
        if split not in self.manifest["split"]:
            raise ValueError(f"{root}: no split {split!r} in {MANIFEST} "
                             f"(has {', '.join(self.manifest['split'])})")
        self.split = split
        self.ids = list(self.manifest["split"][split])
        self.augment = augment
        self.seed = seed
        self._cache = {}

    def __len__(self):
        return len(self.ids)

    def patient(self, index):
        """PatientVolumes of patient `index` of this split (loaded once, then cached)."""
        if index not in self._cache:
            patient = self.ids[index]
            self._cache[index] = load_patient(os.path.join(self.root, patient), patient)
        return self._cache[index]

    def __getitem__(self, index):
        patient = self.patient(index)
        return patient.mr[None, None], hu_to_net(patient.ct_hu)[None, None]

    def epoch_plan(self, epoch, shuffle=True):
        """[(index, flips)] for one epoch: a pure function of (seed, epoch, shuffle, augment, len).

        flips is a (3,) bool array, one per spatial axis, each True with probability 0.5 when
        augment is on, all False otherwise.
        """
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_EPOCH_STREAM, epoch)))
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        flips = rng.random((len(self), 3)) < 0.5
        if not self.augment:
            flips[:] = False
        return [(int(index), flip) for index, flip in zip(order, flips)]

    def iterate(self, epoch, shuffle=True):
        """Yield (mr, ct), each (1, 1, D, H, W) float32, in epoch_plan order, flipped together."""
        for index, flips in self.epoch_plan(epoch, shuffle):
            mr, ct = self[index]
            yield apply_flips(mr, flips), apply_flips(ct, flips)


def _interior(labels):
    """(D, H, W) bool: voxels whose six face neighbours carry the same label (no partial volume)."""
    same = np.ones(labels.shape, bool)
    for axis in range(3):
        for step in (1, -1):
            same &= labels == np.roll(labels, step, axis=axis)
    return same


def tissue_statistics(root):
    """Per-label statistics over all patients of a cohort.

    Returns {label: {"voxels", "hu_mean", "hu_std", "mr_mean", "interior_voxels", "interior_hu_mean",
    "interior_mr_mean"}}; MR is relative to each patient's median white-matter signal. Interior voxels
    are those whose six neighbours share the label, so partial volume does not blur their mean.
    """
    manifest = read_manifest(root)
    ids = sorted(id for split in manifest["split"].values() for id in split)
    sums = np.zeros((phantom.N_LABELS, 7))  # n, sum hu, sum hu^2, sum mr; interior: n, sum hu, sum mr
    for patient in ids:
        volumes = load_patient(os.path.join(root, patient), patient)
        labels, interior = volumes.labels, _interior(volumes.labels)
        white = volumes.mr[(labels == phantom.WHITE_MATTER) & interior]
        mr = volumes.mr / np.median(white if white.size else volumes.mr[labels == phantom.WHITE_MATTER])
        hu = volumes.ct_hu.astype(np.float64)
        for label in range(phantom.N_LABELS):
            voxels, core = labels == label, (labels == label) & interior
            sums[label] += (voxels.sum(), hu[voxels].sum(), (hu[voxels] ** 2).sum(), mr[voxels].sum(),
                                core.sum(), hu[core].sum(), mr[core].sum())
    table = {}
    for label in range(phantom.N_LABELS):
        n, hu_sum, hu_square, mr_sum, n_core, core_hu, core_mr = sums[label]
        mean = hu_sum / n if n else float("nan")
        table[label] = {
            "voxels": int(n), "hu_mean": mean,
            "hu_std": float(np.sqrt(max(hu_square / n - mean**2, 0))) if n else float("nan"),
            "mr_mean": mr_sum / n if n else float("nan"), "interior_voxels": int(n_core),
            "interior_hu_mean": core_hu / n_core if n_core else float("nan"),
            "interior_mr_mean": core_mr / n_core if n_core else float("nan"),
        }
    return table


def format_statistics(table):
    """The tissue statistics as a Markdown table."""
    lines = ["| label | tissue | voxels | HU mean | HU std | MR/WM | interior voxels | interior HU | "
             "interior MR/WM |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in table.items():
        lines.append(f"| {label} | {phantom.LABEL_NAMES[label]} | {row['voxels']} | {row['hu_mean']:.0f} | "
                     f"{row['hu_std']:.0f} | {row['mr_mean']:.2f} | {row['interior_voxels']} | "
                     f"{row['interior_hu_mean']:.0f} | {row['interior_mr_mean']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mri2ct.data",
                                     description="Generate a synthetic brain MRI-CT cohort, or report "
                                                 "tissue statistics of one.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", help="cohort folder to write")
    action.add_argument("--stats", metavar="DIR", help="cohort folder to report mean HU and MR per label")
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, default=64, help="voxels per axis (cubic grid)")
    parser.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm")
    parser.add_argument("--supersample", type=int, default=2, help="partial-volume supersampling factor")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    args = parser.parse_args(argv)
    try:
        if args.stats:
            print(format_statistics(tissue_statistics(args.stats)))
            return
        start = time.perf_counter()
        manifest = generate_cohort(args.out, args.patients, args.seed, args.shape, args.spacing,
                                   args.supersample, args.workers)
    except (OSError, ValueError) as error:
        sys.exit(f"{parser.prog}: {error}")  # one line, no traceback
    sizes = "/".join(str(len(manifest["split"][name])) for name in ("train", "val", "test"))
    print(f"{args.out}: {args.patients} patients ({sizes} train/val/test) at {args.shape}^3 x "
          f"{args.spacing} mm in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
