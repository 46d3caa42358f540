"""The patients of one split, and the seeded plan of what each training step reads from them.

    dataset = PatientSet(folder, ids, spacing, cache_dir, augment=True, seed=0)
    for step in dataset.batch_plan(epoch, batch_size=2, patch=64):   # [[Sample, Sample], ...]
        mr, ct = dataset.batch(step, patch=64)                         # (2, 1, 64, 64, 64) each

An epoch is every training patient once: the order and each sample's flips are drawn from
(seed, epoch) (`epoch_plan`), then cut into steps of `batch_size` samples (the last step may be
smaller). With --patch N a sample is an N^3 cube whose centre is a voxel of the patient's mask, drawn
from (seed, epoch, step, j) for sample j of the step; without, it is the whole volume (every volume
must then have the same shape, as in a cohort). The plan is a pure function of those numbers, so a run
resumed at epoch e reads exactly what the uninterrupted run would have read, and a process that
handles only some samples of a step (data-parallel training: sample r, r + N, ... on rank r) can draw
its own without drawing the others.

Flips: each spatial axis is flipped with probability 0.5 when augment is on, MR and CT together.
"""
from dataclasses import dataclass

import numpy as np

from mri2ct.data import streams
from mri2ct.data.folders import choose_split, native_spacing, open_data_folder
from mri2ct.data.normalise import hu_to_net
from mri2ct.data.preprocess import CT_RANGE_HU, default_cache_dir, load_patient

MAX_CENTRE_DRAWS = 1000  # rejection sampling of a mask voxel; a mask this sparse falls back to a list


@dataclass(frozen=True)
class Sample:
    index: int            # patient index in the PatientSet
    flips: tuple          # (3,) bool, flip of each spatial axis
    corner: tuple         # (3,) int, first voxel of the patch; None for the whole volume


def apply_flips(volume, flips):
    """Flip the last three axes of `volume` (..., X, Y, Z) where flips[axis] is True; a contiguous copy."""
    axes = tuple(volume.ndim - 3 + axis for axis in range(3) if flips[axis])
    return np.ascontiguousarray(np.flip(volume, axis=axes) if axes else volume)


def extract_patch(volume, corner, patch, fill):
    """(patch, patch, patch) float32 copy of `volume` (X, Y, Z) from `corner`; where the volume is
    smaller than the patch, the rest is `fill`."""
    out = np.full((patch,) * 3, fill, np.float32)
    source = tuple(slice(c, min(c + patch, n)) for c, n in zip(corner, volume.shape))
    out[tuple(slice(0, s.stop - s.start) for s in source)] = volume[source]
    return out


def draw_corner(mask, patch, rng):
    """Corner of a patch centred on a random voxel of `mask` (X, Y, Z), kept inside the volume."""
    shape = np.array(mask.shape)
    for _ in range(MAX_CENTRE_DRAWS):
        centre = rng.integers(0, shape)
        if mask[tuple(centre)]:
            break
    else:
        inside = np.flatnonzero(mask)
        centre = np.array(np.unravel_index(inside[rng.integers(len(inside))], mask.shape))
    corner = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
    return tuple(int(c) for c in corner)


class PatientSet:
    """The (MR, CT) pairs of some patients of a DataFolder, preprocessed at `spacing` (cached).

    dataset[i]          -> (mr, ct): (1, 1, X, Y, Z) float32 each, normalised, never flipped
    dataset.patient(i)  -> PatientVolumes (preprocess.py), loaded on first use and kept
    """

    def __init__(self, folder, ids, spacing, cache_dir, augment=False, seed=0):
        self.folder = folder
        self.ids = list(ids)
        self.spacing = spacing
        self.cache_dir = cache_dir
        self.augment = augment
        self.seed = seed
        self._loaded = {}

    def __len__(self):
        return len(self.ids)

    def patient(self, index):
        if index not in self._loaded:
            self._loaded[index] = load_patient(self.folder, self.ids[index], self.spacing, self.cache_dir)
        return self._loaded[index]

    def __getitem__(self, index):
        patient = self.patient(index)
        return np.array(patient.mr)[None, None], hu_to_net(patient.ct_hu)[None, None]

    def epoch_plan(self, epoch, shuffle=True):
        """[(index, flips)] for one epoch: a pure function of (seed, epoch, shuffle, augment, len)."""
        rng = streams.generator(self.seed, streams.EPOCH, epoch)
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        flips = rng.random((len(self), 3)) < 0.5
        if not self.augment:
            flips[:] = False
        return [(int(index), flip) for index, flip in zip(order, flips)]

    def batch_plan(self, epoch, batch_size=1, patch=None, shuffle=True):
        """[[Sample, ...], ...]: the epoch's steps, each of up to batch_size samples (see module doc)."""
        plan = self.epoch_plan(epoch, shuffle)
        steps = []
        for step, start in enumerate(range(0, len(plan), batch_size)):
            samples = []
            for j, (index, flips) in enumerate(plan[start:start + batch_size]):
                corner = None
                if patch is not None:
                    rng = streams.generator(self.seed, streams.PATCH, epoch, step, j)
                    corner = draw_corner(self.patient(index).mask, patch, rng)
                samples.append(Sample(index, tuple(bool(f) for f in flips), corner))
            steps.append(samples)
        return steps

    def sample(self, sample, patch=None):
        """(mr, ct) of one Sample, each (1, X, Y, Z) float32 (X = Y = Z = patch with a patch), flipped."""
        patient = self.patient(sample.index)
        if sample.corner is None:
            mr, ct_hu = patient.mr, patient.ct_hu
        else:
            mr = extract_patch(patient.mr, sample.corner, patch, 0.0)
            ct_hu = extract_patch(patient.ct_hu, sample.corner, patch, CT_RANGE_HU[0])
        return apply_flips(mr[None], sample.flips), apply_flips(hu_to_net(ct_hu)[None], sample.flips)

    def iterate(self, epoch, batch_size=1, patch=None, shuffle=True):
        """Yield (mr, ct), each (B, 1, X, Y, Z) float32, step by step following batch_plan."""
        for samples in self.batch_plan(epoch, batch_size, patch, shuffle):
            yield self.batch(samples, patch)

    def batch(self, samples, patch=None):
        """(mr, ct) of one step, each (B, 1, X, Y, Z) float32."""
        pairs = [self.sample(sample, patch) for sample in samples]
        shapes = {mr.shape for mr, _ in pairs}
        if len(shapes) > 1:
            raise ValueError(f"{self.folder.root}: whole volumes of different shapes {sorted(shapes)} cannot "
                             f"be stacked into a batch; train on patches (--patch N)")
        return np.stack([mr for mr, _ in pairs]), np.stack([ct for _, ct in pairs])


def open_split(root, split, seed=0, augment=False, spacing=None, cache_dir=None, split_file=None):
    """PatientSet of one split ("train", "val", "test") of a cohort or paired folder.

    spacing: training voxel size in mm (default: folders.native_spacing); cache_dir: default
    preprocess.default_cache_dir(); split_file: a split.json (default: the cohort's manifest, or a
    seeded 70/15/15 split of a paired folder, folders.choose_split).
    """
    folder = open_data_folder(root)
    splits = choose_split(folder, seed, split_file)
    if split not in splits:
        raise ValueError(f"{root}: no split {split!r} (has {', '.join(splits)})")
    return PatientSet(folder, splits[split], spacing or native_spacing(folder), cache_dir or default_cache_dir(),
                      augment=augment, seed=seed)
