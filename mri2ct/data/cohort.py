"""Write synthetic patients (phantom.py) to disk, in one of two layouts.

layout "cohort" (`python -m mri2ct.data --out DIR`): the project's own training set

    DIR/manifest.json              generator version and parameters, seed, split {train, val, test}
    DIR/patient_000/mr.nii.gz      T1 signal, float32, arbitrary scanner units
                   /ct.nii.gz      Hounsfield units, int16
                   /mask.nii.gz    head mask (dilated), uint8
                   /labels.nii.gz  tissue labels (phantom.py constants), uint8
    all four with the same RAS affine, shape^3 voxels of `spacing` mm.

layout "paired" (`--layout paired`): what a real paired data set looks like (SynthRAD2023), to test
the reader and the preprocessing on

    DIR/patient_000/mr.nii.gz, ct.nii.gz, mask.nii.gz (not for every patient), no labels, no manifest
    DIR/phantom.json               the generator's parameters (ignored by the reader)
    - each patient has its own non-cubic field of view: each of the three --shape sizes times a
      factor drawn from [FOV_SHRINK, 1] (1 mm voxels by default);
    - every third patient (1, 4, 7, ...) is stored in LPS order (axes 0 and 1 reversed in the file);
    - CT dtypes cycle int16 / uint16 with an intercept (scale factors) / float32, MR float32 / uint16
      with a slope; every fourth patient (3, 7, ...) has no mask.nii.gz.

Patient i is drawn from its own random stream (seed, i): the same seed gives the same patient,
whatever the number of patients or workers (at most one per patient and per core; they ignore
Ctrl-C, which ends the parent, and the parent ends them: common/errors.py). The folder is
written into a temporary sibling and renamed when complete: an interrupted run leaves no half cohort
and the old one intact. An existing non-empty folder is refused unless it holds what this command
would write (then nothing is done) or `overwrite` is set and its record (manifest.json or
phantom.json) says this command wrote it: a folder it did not write is never deleted.
"""
import json
import os
import shutil
import tempfile
from multiprocessing import Pool

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mri2ct.common.atomic import make_temporary_folder, write_text
from mri2ct.common.errors import quiet_worker_signals
from mri2ct.data import phantom, streams
from mri2ct.data.folders import MANIFEST, split_ids
from mri2ct.data.nifti import save_volume

VOLUME_FILES = ("mr", "ct", "mask", "labels")
LAYOUTS = ("cohort", "paired")
PAIRED_RECORD = "phantom.json"
GENERATOR = "mri2ct.phantom"      # the "generator" of every record this module writes
MIN_SIZE = 8                      # voxels per axis
FOV_SHRINK = 0.85
SPACING_RANGE_MM = (0.1, 10.0)    # voxel sizes the generator (and the preprocessing) accepts
MAX_VOXELS = 512**3               # per patient
MAX_SUPERSAMPLE = 8
CT_DTYPES = (np.int16, np.uint16, np.float32)
MR_DTYPES = (np.float32, np.uint16)
LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def patient_id(index):
    return f"patient_{index:03d}"


def split_patients(patients, seed):
    """Seeded 70/15/15 split of `patients` patient ids: {"train": [...], "val": [...], "test": [...]};
    42/9/9 for 60 (folders.split_ids)."""
    return split_ids([patient_id(i) for i in range(patients)], seed)


def check_parameters(patients, shape, spacing, supersample):
    """ValueError naming the first argument out of range; shape: an int or three sizes."""
    if patients < 1:
        raise ValueError(f"--patients must be at least 1, got {patients}")
    sizes = np.atleast_1d(shape)
    if len(sizes) not in (1, 3) or sizes.min() < MIN_SIZE:
        raise ValueError(f"--shape must be one or three sizes of at least {MIN_SIZE} voxels, "
                         f"got {' '.join(map(str, sizes))}")
    if int(np.prod(np.broadcast_to(sizes, (3,)), dtype=np.int64)) > MAX_VOXELS:
        raise ValueError(f"--shape {' '.join(map(str, sizes))} exceeds {MAX_VOXELS} voxels per patient")
    if not SPACING_RANGE_MM[0] <= spacing <= SPACING_RANGE_MM[1]:   # also false for nan
        raise ValueError(f"--spacing must be between {SPACING_RANGE_MM[0]} and {SPACING_RANGE_MM[1]} mm, "
                         f"got {spacing}")
    if not 1 <= supersample <= MAX_SUPERSAMPLE:
        raise ValueError(f"--supersample must be between 1 and {MAX_SUPERSAMPLE}, got {supersample}")


def patient_shape(layout, shape, seed, index):
    """(3,) grid of patient `index`: `shape` for a cohort, shrunk per axis for a paired folder."""
    if layout == "cohort":
        return tuple(shape)
    factors = streams.generator(seed, streams.FIELD_OF_VIEW, index).uniform(FOV_SHRINK, 1.0, 3)
    return tuple(max(8, int(round(n * f))) for n, f in zip(shape, factors))


def _write_patient(task):
    """Generate patient `index` and write its files; returns (id, drawn parameters)."""
    out_dir, layout, index, seed, shape, spacing, supersample = task
    grid = patient_shape(layout, shape, seed, index)
    patient = phantom.generate_patient(streams.generator(seed, streams.PATIENT, index), grid, spacing,
                                       supersample)
    folder = os.path.join(out_dir, patient_id(index))
    os.makedirs(folder, exist_ok=True)
    if layout == "cohort":
        for name in VOLUME_FILES:
            save_volume(os.path.join(folder, f"{name}.nii.gz"), getattr(patient, name), patient.affine)
        return patient_id(index), patient.params
    volumes, affine = {"mr": patient.mr, "ct": patient.ct, "mask": patient.mask}, patient.affine
    if index % 3 == 1:                                    # stored as LPS: reverse axes 0 and 1
        volumes = {name: np.ascontiguousarray(v[::-1, ::-1]) for name, v in volumes.items()}
        flip = np.eye(4)
        flip[:2, :2] = -np.eye(2)
        flip[:2, 3] = np.array(grid[:2]) - 1
        affine = affine @ flip
    dtypes = {"mr": MR_DTYPES[index % 2], "ct": CT_DTYPES[index % 3], "mask": np.uint8}
    for name, volume in volumes.items():
        if name == "mask" and index % 4 == 3:
            continue
        save_volume(os.path.join(folder, f"{name}.nii.gz"), volume.astype(np.float32), affine,
                    dtype=dtypes[name])
    return patient_id(index), {**patient.params, "shape": list(grid)}


def _start_worker():
    threadpool_limits(1)  # one BLAS thread per worker process: the workers already fill the cores
    quiet_worker_signals()


def _parameters(layout, patients, seed, shape, spacing, supersample):
    return {"layout": layout, "patients": patients, "seed": seed,
            "shape": shape[0] if layout == "cohort" and len(set(shape)) == 1 else list(shape),
            "spacing": spacing, "supersample": supersample}


def _record(out_dir, layout):
    """The record (manifest.json or phantom.json) this command wrote into `out_dir`, or None."""
    try:
        with open(os.path.join(out_dir, MANIFEST if layout == "cohort" else PAIRED_RECORD)) as file:
            written = json.load(file)
    except (OSError, ValueError):
        return None
    return written if isinstance(written, dict) and written.get("generator") == GENERATOR else None


def _existing_parameters(out_dir, layout):
    """The generator parameters recorded in `out_dir` (manifest or phantom.json), or None."""
    written = _record(out_dir, layout)
    if written is None or written.get("version") != phantom.GENERATOR_VERSION:
        return None
    parameters = dict(written.get("parameters", {}))
    parameters.setdefault("layout", "cohort")
    complete = all(os.path.isfile(os.path.join(out_dir, patient_id(i), "mr.nii.gz"))
                   for i in range(parameters.get("patients", 0)))
    return parameters if complete else None


def generate_cohort(out_dir, patients=60, seed=0, shape=64, spacing=3.0, supersample=2, workers=None,
                    layout="cohort", overwrite=False):
    """Write `patients` synthetic patients to `out_dir` in `layout`; returns the record (manifest).

    shape: an int or three sizes. workers: processes (default: 2), at most one per patient and per
    CPU. Returns None when `out_dir` already holds exactly this cohort (nothing is written).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    check_parameters(patients, shape, spacing, supersample)
    shape = tuple(int(n) for n in np.broadcast_to(np.asarray(shape), (3,)))
    parameters = _parameters(layout, patients, seed, shape, spacing, supersample)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite and _existing_parameters(out_dir, layout) == parameters:
            return None
        if _record(out_dir, layout) is None:
            record = MANIFEST if layout == "cohort" else PAIRED_RECORD
            raise ValueError(f"--out {out_dir}: folder is not empty and holds no {layout} folder this command "
                             f"wrote (no {record} of {GENERATOR}); it is never replaced: choose an empty or "
                             f"new folder")
        if not overwrite:
            raise ValueError(f"--out {out_dir}: folder holds another {layout} folder; choose an empty or new "
                             f"folder, or add --overwrite to replace it")
    workers = min(workers or 2, patients, os.cpu_count() or 1)
    parent, name = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    for stale in os.listdir(parent):                    # left by a killed run of this command
        if stale.startswith(f".{name}.tmp-"):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    building = make_temporary_folder(parent, prefix=f".{name}.tmp-")
    try:
        tasks = [(building, layout, i, seed, shape, spacing, supersample) for i in range(patients)]
        progress = dict(total=patients, desc="patients", unit="patient")
        if workers == 1:
            with threadpool_limits(1):                  # one BLAS thread, as in the workers: same files
                results = [_write_patient(task) for task in tqdm(tasks, **progress)]
        else:
            with Pool(workers, initializer=_start_worker) as pool:
                results = list(tqdm(pool.imap(_write_patient, tasks), **progress))
        record = {"generator": GENERATOR, "version": phantom.GENERATOR_VERSION,
                  "parameters": parameters}
        if layout == "cohort":
            record["labels"] = {str(label): name for label, name in phantom.LABEL_NAMES.items()}
            record["split"] = split_patients(patients, seed)
        record["patients"] = dict(results)
        write_text(os.path.join(building, MANIFEST if layout == "cohort" else PAIRED_RECORD),
                   json.dumps(record, indent=1))
        _replace_folder(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return record


def _replace_folder(new, target):
    """Put the complete folder `new` at `target`; an existing `target` is moved aside, then deleted."""
    if not os.path.exists(target):
        os.rename(new, target)
        return
    parent, name = os.path.split(os.path.abspath(target))
    old = tempfile.mkdtemp(prefix=f".{name}.tmp-old-", dir=parent)
    os.rmdir(old)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old)
