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

A checkpoint may come from anywhere, so `load_checkpoint` checks it before anything large is
decompressed, reading only the zip's directory and each entry's few-byte `.npy` header:
    - the entries are `meta` (a string of at most MAX_META_BYTES, nested at most MAX_NESTING deep)
      and exactly the arrays it refers to, each of a real numeric dtype (no object, no complex),
      each as long in the zip as its header says;
    - the state has the fields of STATE_FIELDS (epoch, model and config required) and no others,
      its config the typed fields of CONFIG_FIELDS (features, shape and spacing required);
    - the model's entries are exactly those of UNet3D(config features), with their shapes; no other
      entry is larger than the model's largest parameter (a decompression bomb is refused unread);
then, decompressed, the model holds only finite values and non-negative BatchNorm variances.
"""
import json
import math
import os
import re
import zipfile

import numpy as np

from mri2ct.common.atomic import atomic_path
from mri2ct.data.folders import check_split
from mri2ct.data.nifti import REAL_KINDS, check_voxel_sizes
from mri2ct.model import UNet3D

FORMAT = "mri2ct-checkpoint-v1"
ZIP_MAGIC = b"PK\x03\x04"           # an .npz file is a zip archive
FILE_KINDS = {b"\x1f\x8b": "a gzip file (a .nii.gz image?)", b"\x93NUMPY": "a single .npy array"}
META = "meta"
MAX_META_BYTES = 64 * 2 ** 20      # the JSON document: config, history (~150 bytes an epoch), ...
MAX_NESTING = 16                   # mri2ct.train's checkpoints nest 4 deep
MAX_FEATURES = 512                 # channels of a U-Net level (default 128 at the bottleneck)
MAX_WINDOW = 512                   # training window side, voxels (nifti.MAX_VOXELS: 512^3)
NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value):
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


def _one_or_three(test):
    """A test passed by a value passing `test`, or by a list of three such."""
    return lambda value: (test(value) or isinstance(value, (list, tuple)) and len(value) == 3
                          and all(test(item) for item in value))


# The fields of a checkpoint's config: {name: (test, what a valid value is)}; null stands for an
# absent field. mri2ct.train writes them all (training/run_folder.run_config), other writers may
# write fewer; loading needs features, inference REQUIRED_CONFIG.
CONFIG_FIELDS = {
    "features": (lambda v: isinstance(v, (list, tuple)) and len(v) == 4
                 and all(_is_int(f) and 1 <= f <= MAX_FEATURES for f in v), f"four integers 1-{MAX_FEATURES}"),
    "shape": (_one_or_three(lambda n: _is_int(n) and 0 < n <= MAX_WINDOW and n % 8 == 0),
              f"a multiple of 8 up to {MAX_WINDOW}, or three"),
    "spacing": (_one_or_three(lambda s: _is_number(s) and s > 0), "a positive number of mm, or three"),
    "data": (lambda v: isinstance(v, str), "a folder name"),
    "loss": (lambda v: isinstance(v, str), "a text"),
    "data_fingerprint": (lambda v: isinstance(v, str), "a text"),
    "split": (lambda v: isinstance(v, dict), "a split"),   # and folders.check_split, in read_meta
    "patch": (lambda n: _is_int(n) and n > 0, "a positive integer or null"),
    **{name: (lambda n: _is_int(n) and n >= 0, "a non-negative integer")
       for name in ("epochs", "seed", "batch_size", "accumulate", "ranks")},
    **{name: (lambda x: _is_number(x) and x >= 0, "a non-negative number")
       for name in ("lr", "lr_min", "weight_decay", "clip")},
}
REQUIRED_CONFIG = ("features", "shape", "spacing")
# The fields of a checkpoint: {name: (test, what a valid value is)}; REQUIRED_STATE must be there.
STATE_FIELDS = {
    "format": (lambda v: v == FORMAT, FORMAT),
    "epoch": (lambda n: _is_int(n) and n >= 0, "a non-negative integer"),
    "model": (lambda v: isinstance(v, dict), "a state dict"),
    "config": (lambda v: isinstance(v, dict), "a JSON object"),
    "val_loss": (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool), "a number or null"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of epochs"),
    **{name: (lambda v: isinstance(v, dict), "a JSON object") for name in ("optimizer", "scheduler", "rng")},
}
REQUIRED_STATE = ("epoch", "model", "config")


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
    """Read a checkpoint written by `save_checkpoint`, checked as the module docstring says, before
    anything large is decompressed; CheckpointError if it is missing, broken or not what it claims."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as file:
        start = file.read(len(ZIP_MAGIC) + 4)
    if not start.startswith(ZIP_MAGIC):
        kind = next((kind for magic, kind in FILE_KINDS.items() if start.startswith(magic)), "another file")
        raise CheckpointError(f"{path}: not an mri2ct checkpoint (.npz), it is {kind}")
    try:
        with zipfile.ZipFile(path) as archive:
            headers = entry_headers(archive, path)
            meta = read_meta(archive, headers, path)
            check_entries(meta, headers, path)
            arrays = {name: np.lib.format.read_array(archive.open(f"{name}.npy"), allow_pickle=False)
                      for name in headers if name != META}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        if isinstance(error, CheckpointError):
            raise
        reason = " ".join(str(error).split()) or type(error).__name__
        raise CheckpointError(f"{path}: not a readable .npz checkpoint, the file is corrupt or "
                              f"truncated ({reason})") from None
    try:
        state = _decode(meta, arrays)
    except (ValueError, TypeError) as error:              # e.g. a malformed {"__items__": ...}
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({error})") from None
    check_model_values(state["model"], path)
    return state


def entry_headers(archive, path):
    """{entry name: (shape, dtype)} of an .npz's entries from their .npy headers (a few bytes each);
    CheckpointError for a member that is not an .npy array, of a dtype that is not a real number (the
    meta string excepted), or whose length in the zip is not what its header says."""
    headers = {}
    for info in archive.infolist():
        name = info.filename[:-len(".npy")]
        if not info.filename.endswith(".npy") or name in headers:
            raise CheckpointError(f"{path}: unexpected entry {info.filename!r} (an mri2ct checkpoint holds "
                                  f".npy arrays, each once)")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in NPY_HEADERS:
                raise CheckpointError(f"{path}: entry {name!r} has .npy format version {version}")
            shape, _, dtype = NPY_HEADERS[version](member)
            header_bytes = member.tell()
        if dtype.kind not in REAL_KINDS and not (name == META and dtype.kind == "U"):
            raise CheckpointError(f"{path}: entry {name!r} holds {dtype} values; a checkpoint holds real "
                                  f"numbers only")
        size = header_bytes + math.prod(shape) * dtype.itemsize
        if info.file_size != size:
            raise CheckpointError(f"{path}: entry {name!r} is {info.file_size:,} bytes in the zip, its "
                                  f"header says {size:,}")
        headers[name] = (shape, dtype)
    if META not in headers:
        raise CheckpointError(f"{path}: not an mri2ct checkpoint (no '{META}' entry)")
    return headers


def nesting(text):
    """How deep the JSON document `text` nests its lists and objects (strings do not count)."""
    brackets = np.frombuffer(JSON_STRING.sub('""', text).encode(), np.uint8)
    steps = np.isin(brackets, (ord("["), ord("{"))).astype(np.int64) - np.isin(brackets, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def read_meta(archive, headers, path):
    """The meta JSON document (not decoded: arrays are still references), its size and nesting bounded
    before it is parsed."""
    shape, dtype = headers[META]
    if shape != () or dtype.itemsize > MAX_META_BYTES:
        raise CheckpointError(f"{path}: the '{META}' entry is {dtype.itemsize:,} bytes of shape {shape}, "
                              f"expected one text of at most {MAX_META_BYTES:,}")
    text = str(np.lib.format.read_array(archive.open(f"{META}.npy"), allow_pickle=False))
    depth = nesting(text)
    if depth > MAX_NESTING:
        raise CheckpointError(f"{path}: damaged checkpoint metadata (nested {depth:,} deep, at most "
                              f"{MAX_NESTING})")
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mri2ct checkpoint (expected format {FORMAT})")
    check_fields(meta, STATE_FIELDS, REQUIRED_STATE, "checkpoint", path)
    check_fields(meta["config"], CONFIG_FIELDS, ("features",), "checkpoint config", path)
    if meta["config"].get("split") is not None:
        try:
            check_split(meta["config"]["split"], f"{path}: checkpoint config split")
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    return meta


def check_fields(document, fields, required, what, path):
    """CheckpointError naming `path` unless `document` has the `required` fields, no field outside
    `fields`, and each value other than null (an absent value) passes its test."""
    for name in required:
        if document.get(name) is None:
            raise CheckpointError(f"{path}: {what} has no '{name}' entry")
    for name, value in document.items():
        if name not in fields:
            raise CheckpointError(f"{path}: {what} has an unknown field {name!r}")
        if value is None:
            continue
        test, expected = fields[name]
        if not test(value):
            raise CheckpointError(f"{path}: {what} field {name!r} is {json.dumps(value)[:60]}, expected {expected}")


def references(value):
    """The entry names a meta document refers to ({"__array__": name}, {"__scalar__": name})."""
    if isinstance(value, list):
        return [name for item in value for name in references(item)]
    if not isinstance(value, dict):
        return []
    own = [value[tag] for tag in ("__array__", "__scalar__") if tag in value]
    if not all(isinstance(name, str) for name in own):
        raise CheckpointError(f"damaged checkpoint metadata (an array reference {own!r})")
    return own + [name for item in value.values() for name in references(item)]


def check_entries(meta, headers, path):
    """CheckpointError unless the entries are exactly the meta document's references, the model's are
    those of UNet3D(config features) with their shapes and kinds, and no other is larger than the
    model's largest parameter."""
    try:
        named = references(meta)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    absent = sorted(set(named) - set(headers))
    extra = sorted(set(headers) - set(named) - {META})
    if absent or extra:
        raise CheckpointError(f"{path}: " + (f"the metadata refers to an entry {absent[0]!r} the file does not "
                                             f"hold" if absent else f"unexpected entry {extra[0]!r}"))
    model_state = UNet3D(features=meta["config"]["features"]).state_dict()
    expected = {f"model/{key}": value for key, value in model_state.items()}
    model = {(f"model/{key}" if isinstance(key, str) else key): value for key, value in meta["model"].items()}
    if set(model) != set(expected):
        different = sorted(set(model) ^ set(expected))[0]
        raise CheckpointError(f"{path}: {different} is {'missing' if different in expected else 'not a weight'} "
                              f"of UNet3D with the config's features {meta['config']['features']}")
    for name, value in model.items():
        if value != {"__array__": name}:
            raise CheckpointError(f"{path}: {name} is not an array entry")
        shape, dtype = headers[name]
        if shape != expected[name].shape or dtype.kind != expected[name].dtype.kind:
            raise CheckpointError(f"{path}: {name} holds {dtype} {shape}, UNet3D with the config's features "
                                  f"needs {expected[name].dtype} {expected[name].shape}")
    largest = max(value.size for value in expected.values())
    for name, (shape, dtype) in headers.items():
        if name != META and name not in model and math.prod(shape) > largest:
            raise CheckpointError(f"{path}: entry {name!r} holds {math.prod(shape):,} values, more than the "
                                  f"model's largest parameter ({largest:,})")


def check_model_values(model_state, path):
    """CheckpointError naming the first weight or BatchNorm statistic holding NaN or infinity (the
    run that wrote it diverged: such a model can only predict garbage), or a negative variance."""
    for name, value in model_state.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CheckpointError(f"{path}: model/{name} holds NaN or infinite values; the run that "
                                  f"wrote it diverged, use an earlier checkpoint")
        if name.endswith("running_var") and (value < 0).any():
            raise CheckpointError(f"{path}: model/{name} holds negative values, and a variance cannot be "
                                  f"negative; the checkpoint is damaged")


def training_frame(state, path):
    """(window (3,) voxels, spacing (3,) mm) the model was trained on, from the checkpoint's config
    (load_checkpoint checked its fields). CheckpointError if the spacing is outside what a scan may
    have (nifti.check_voxel_sizes)."""
    config = state["config"]
    missing = [key for key in REQUIRED_CONFIG if config.get(key) is None]
    if missing:
        raise CheckpointError(f"{path}: checkpoint config has no {', '.join(missing)}; it cannot be used "
                              f"for prediction")
    window = tuple(int(n) for n in np.broadcast_to(np.asarray(config["shape"]), (3,)))
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(config["spacing"], float), (3,)))
    try:
        check_voxel_sizes(spacing, "checkpoint config spacing")
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
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

    The architecture comes from the checkpoint's own config (load_checkpoint checked that the weights
    fit it); the config must be complete (`training_frame`).
    """
    state = load_checkpoint(path)
    training_frame(state, path)
    model = UNet3D(features=state["config"]["features"])
    load_model_state(model, state, path)
    return model.eval(), state
