"""Independent random streams derived from one seed: every random choice of the data pipeline.

    generator(seed, PATIENT, i)              the synthetic patient i
    generator(seed, SPLIT)                   the train/val/test split
    generator(seed, EPOCH, epoch)            the epoch's order and flips
    generator(seed, PATCH, epoch, step, j)   the centre of sample j of a step's batch
    generator(seed, FIELD_OF_VIEW, i)        the grid of patient i in a paired folder

NumPy's SeedSequence turns (seed, spawn key) into statistically independent generators, so a run
resumed at epoch e (or a process that handles only sample j of a step) draws exactly what the
uninterrupted single process would have drawn.
"""
import numpy as np

PATIENT, SPLIT, EPOCH, PATCH, FIELD_OF_VIEW = 0, 1, 2, 3, 4


def generator(seed, *key):
    """numpy Generator of the stream `key` (a tuple of non-negative ints) of `seed`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
