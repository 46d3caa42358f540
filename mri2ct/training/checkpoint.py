"""Checkpoints: a training state saved as one NumPy `.npz` file, readable with `allow_pickle=False`.

A checkpoint is a nested structure of dicts, lists, numbers, strings and NumPy arrays:

    {"epoch": 12, "val_loss": 0.0071,
     "model": {"enc1.conv1.weight": array, ...},              # UNet3D.state_dict()
     "optimizer": {...}, "scheduler": {...},                  # their state_dict()s
     "history": [{"epoch": 1, "train_loss": ...}, ...],
     "config": {"features": [16, 32, 64, 128], ...}, "rng": {...}}

On disk every array becomes its own `.npz` entry named by its path in the structure
(`model/enc1.conv1.weight`, `optimizer/exp_avg/0`, ...), and everything else is one JSON document in
the entry `meta`, where each array is replaced by {"__array__": "<entry name>"}. No pickle is involved,
so a checkpoint from an untrusted source cannot run code, and plain NumPy reads it:

    np.load("best.npz")["model/head.weight"]

JSON has no tuples, no non-string dict keys and no NumPy scalars; those get tags too
({"__tuple__": [...]}, {"__items__": [[key, value], ...]}, {"__scalar__": entry}) so that loading
gives back exactly what was saved. Files are written atomically (see `common/atomic.py`).
"""
import json
import math
import os
import zipfile

import numpy as np

from mri2ct.common.atomic import atomic_path
from mri2ct.model import UNet3D

FORMAT = "mri2ct-checkpoint-v1"
ZIP_MAGIC = b"PK\x03\x04"           # an .npz file is a zip archive
FILE_KINDS = {b"\x1f\x8b": "a gzip file (a .nii.gz image?)", b"\x93NUMPY": "a single .npy array"}
# What inference needs from a checkpoint's config (mri2ct.train writes all three).
REQUIRED_CONFIG = ("features", "shape", "spacing")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file and the problem."""


# ---- nested structure <-> (JSON-able structure, arrays) ----------------------------------------
def _join(name, key):
    """Entry name of `key` inside `name`: 'model' + 'head.bias' -> 'model/head.bias'."""
    return f"{name}/{key}" if name else str(key)


def _encode(value, name, arrays):
    """Replace each array in `value` by a reference to `arrays[name]`; return a JSON-able structure."""
    if isinstance(value, np.ndarray):
        arrays[name] = value
        return {"__array__": name}
    if isinstance(value, np.generic):
        arrays[name] = np.asarray(value)
        return {"__scalar__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, _join(name, index), arrays) for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, _join(name, index), arrays) for index, item in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: _encode(item, _join(name, key), arrays) for key, item in value.items()}
        return {"__items__": [[key, _encode(item, _join(name, key), arrays)] for key, item in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} at '{name}' in a checkpoint")


def _decode(value, arrays):
    """Inverse of `_encode`."""
    if isinstance(value, list):
        return [_decode(item, arrays) for item in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return arrays[value["__array__"]]
    if "__scalar__" in value:
        return arrays[value["__scalar__"]][()]
    if "__tuple__" in value:
        return tuple(_decode(item, arrays) for item in value["__tuple__"])
    if "__items__" in value:
        return {key: _decode(item, arrays) for key, item in value["__items__"]}
    return {key: _decode(item, arrays) for key, item in value.items()}


# ---- files --------------------------------------------------------------------------------------
def save_checkpoint(path, state):
    """Write the nested dict `state` to `path` (.npz) atomically."""
    arrays = {}
    meta = _encode(dict(state, format=FORMAT), "", arrays)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            np.savez(file, meta=np.array(json.dumps(meta)), **arrays)


def load_checkpoint(path):
    """Read a checkpoint written by `save_checkpoint`; CheckpointError if it is missing or broken."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as file:
        start = file.read(len(ZIP_MAGIC) + 4)
    if not start.startswith(ZIP_MAGIC):
        kind = next((kind for magic, kind in FILE_KINDS.items() if start.startswith(magic)), "another file")
        raise CheckpointError(f"{path}: not an mri2ct checkpoint (.npz), it is {kind}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise CheckpointError(f"{path}: not a readable .npz checkpoint, the file is corrupt or "
                              f"truncated ({reason})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not an mri2ct checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
        state = _decode(meta, arrays)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mri2ct checkpoint (expected format {FORMAT})")
    for key in ("epoch", "model", "config"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry")
    check_finite(state["model"], path)
    return state


def check_finite(model_state, path):
    """CheckpointError naming the first weight or BatchNorm statistic holding NaN or infinity: such a
    model can only predict garbage (an all-NaN sCT)."""
    if not isinstance(model_state, dict):
        raise CheckpointError(f"{path}: checkpoint 'model' entry is not a state dict")
    for name, value in model_state.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CheckpointError(f"{path}: model/{name} holds NaN or infinite values; the run that "
                                  f"wrote it diverged, use an earlier checkpoint")


def training_frame(state, path):
    """(window (3,) voxels, spacing (3,) mm) the model was trained on, from the checkpoint's config.

    config "shape" is an int (a cube) or three ints, multiples of 8 (the U-Net pools three times);
    "spacing" a positive number or three. CheckpointError if the config is incomplete or invalid.
    """
    config = state["config"]
    missing = [key for key in REQUIRED_CONFIG if config.get(key) is None]
    if missing:
        raise CheckpointError(f"{path}: checkpoint config has no {', '.join(missing)}; it cannot be used "
                              f"for prediction")
    try:
        window = tuple(int(n) for n in np.broadcast_to(np.asarray(config["shape"]), (3,)))
        spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(config["spacing"], float), (3,)))
    except (TypeError, ValueError):
        window, spacing = (0,), (0.0,)
    if not (len(window) == 3 and all(n > 0 and n % 8 == 0 for n in window)
            and all(math.isfinite(s) and s > 0 for s in spacing)):
        raise CheckpointError(f"{path}: checkpoint config has an invalid training shape {config['shape']!r} "
                              f"or spacing {config['spacing']!r}")
    return window, spacing


# ---- models -------------------------------------------------------------------------------------
def load_model_state(model, state, path):
    """Copy the checkpoint's weights into `model`; CheckpointError naming the file if they do not fit."""
    try:
        model.load_state_dict(state["model"])
    except ValueError as error:
        features = " ".join(str(f) for f in state["config"].get("features", []))
        raise CheckpointError(f"{path}: does not fit this model ({error}); the checkpoint was trained "
                              f"with --features {features}") from None


def model_from_checkpoint(path):
    """(UNet3D in eval mode with the checkpoint's weights, checkpoint state) for evaluation/inference.

    The architecture comes from the checkpoint's own config, so it always fits; the config must be
    complete (`training_frame`).
    """
    state = load_checkpoint(path)
    training_frame(state, path)
    try:
        model = UNet3D(features=state["config"]["features"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: checkpoint config has no valid 'features' ({error})") from None
    load_model_state(model, state, path)
    return model.eval(), state
