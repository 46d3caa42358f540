"""Hostile files (issue 20, part 1): every file the commands read, and infer's outputs.

One table of cases (tests/hostile.py): scans with voxel types, affines, scalings and values that are
not an image's, crafted checkpoints, splits, damaged cache entries, implausible CTs and MRs, masks
of every dtype, and outputs infer must not replace. Each is refused with one line naming the file
(or the flag) and the cause, exit 2, with nothing written; or, where it is fine, accepted.

Everything is tiny: 24^3 scans at 6 mm, a U-Net of 4-8-16-32 features with a 16^3 window, made
once per session.
"""
import gzip
import io
import json
import os
import zipfile

import nibabel as nib
import numpy as np
import pytest

import nn3d
from hostile import Case, check_case
from mri2ct import __version__
from mri2ct.data.preprocess import cache_entry, load_patient
from mri2ct.data.folders import open_data_folder
from mri2ct.inference import sliding_window
from mri2ct.model import UNet3D
from mri2ct.training import checkpoint

SHAPE = (24, 24, 24)
SPACING = 6.0
AFFINE = np.diag([SPACING, SPACING, SPACING, 1.0])
CONFIG = {"features": [4, 8, 16, 32], "shape": 16, "spacing": SPACING}
PATIENTS = ("p1", "p2", "p3")


# ---- files ---------------------------------------------------------------------------------------
def head(seed=0):
    """(MR, CT in HU) of a ball-shaped head: dark air around, a bright brain in a dense skull."""
    rng = np.random.default_rng(seed)
    radius = np.sqrt(((np.indices(SHAPE) - (np.array(SHAPE)[:, None, None, None] - 1) / 2) ** 2).sum(0))
    mr = np.where(radius < 9, 100 + 10 * np.cos(radius), 0.0) + rng.random(SHAPE) * 3
    ct = np.where(radius < 9, 40.0, -1000.0) + rng.random(SHAPE) * 5
    ct[(radius >= 7) & (radius < 9)] = 1200
    return mr.astype(np.float32), ct.astype(np.float32)


def save(path, data, affine=AFFINE, edit_header=None):
    image = nib.Nifti1Image(data, affine)
    if edit_header:
        edit_header(image.header)
    nib.save(image, path)
    return path


def raw_nifti(path, data, edit):
    """A NIfTI written byte by byte, its header changed by `edit(header)` after nibabel
    is done with it (nibabel itself would repair what these cases break)."""
    image = nib.Nifti1Image(data, AFFINE)
    raw = image.to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    edit(header)
    raw = header.binaryblock + raw[len(header.binaryblock):]
    with open(path, "wb") as file:
        file.write(gzip.compress(raw) if path.endswith(".gz") else raw)


def scan(name, make):
    """A setup writing `make(mr)` (an array, or None when make writes the file itself) as {case}/name."""
    def setup(folder, files):
        mr, _ = head()
        path = os.path.join(folder, name)
        data = make(path, mr)
        if data is not None:
            save(path, data)
    return setup


def rgb(path, mr):
    data = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    data["R"] = mr.astype(np.uint8)
    return data


def pairs(folder, edit=None, mask=None):
    """A paired folder {folder}/pairs of PATIENTS (p1 edited by edit(patient folder)), and split files:
    train_split.json with p1 in train, eval_split.json with p1 in test."""
    root = os.path.join(folder, "pairs")
    for index, patient in enumerate(PATIENTS):
        os.makedirs(os.path.join(root, patient))
        mr, ct = head(index)
        save(os.path.join(root, patient, "mr.nii.gz"), mr)
        save(os.path.join(root, patient, "ct.nii.gz"), ct)
        if mask is not None:
            save(os.path.join(root, patient, "mask.nii.gz"), mask(ct))
    if edit:
        edit(os.path.join(root, "p1"))
    for name, order in (("train_split", ("p1", "p2", "p3")), ("eval_split", ("p2", "p3", "p1"))):
        with open(os.path.join(folder, f"{name}.json"), "w") as file:
            json.dump(dict(zip(("train", "val", "test"), ([id] for id in order))), file)


def paired(edit=None, mask=None):
    return lambda folder, files: pairs(folder, edit, mask)


def patient_file(name, make):
    """An edit of a patient folder: `name` rewritten as make(path, mr, ct)."""
    def edit(patient):
        mr, ct = head()
        make(os.path.join(patient, name), mr, ct)
    return edit


def split(document):
    def setup(folder, files):
        pairs(folder)
        with open(os.path.join(folder, "bad_split.json"), "w") as file:
            file.write(document if isinstance(document, str) else json.dumps(document))
    return setup


# ---- checkpoints ---------------------------------------------------------------------------------
def model_state():
    nn3d.manual_seed(0)
    return UNet3D(features=CONFIG["features"]).state_dict()


def write_npz(path, members):
    """An .npz written member by member: {name: array (name.npy) or bytes (name as is)}."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in members.items():
            if isinstance(value, bytes):
                archive.writestr(name, value)
                continue
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=True)


def crafted(edit_state=None, meta_text=None, extra=None):
    """A setup writing {case}/model.npz: the tiny model's checkpoint, its state changed by
    edit_state(state), its meta replaced by meta_text(meta JSON), members added from `extra`."""
    def setup(folder, files):
        state = {"epoch": 1, "model": model_state(), "config": dict(CONFIG)}
        if edit_state:
            edit_state(state)
        arrays = {}
        meta = json.dumps(checkpoint._encode(dict(state, format=checkpoint.FORMAT), "", arrays))
        if meta_text:
            meta = meta_text(meta)
        write_npz(os.path.join(folder, "model.npz"), {"meta": np.array(meta), **arrays, **(extra or {})})
    return setup


def absurd_header():
    """The bytes of an .npy entry whose header claims 10^12 float32 values and holds none."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)})
    return buffer.getvalue()


def set_model(name, value):
    return lambda state: state["model"].__setitem__(name, value)


def infer_with(model="{case}/model.npz", scan_path="{scan}", out="{case}/sct.nii.gz", *extra):
    return ["mri2ct.infer", "--checkpoint", model, "--input", scan_path, "--output", out, "--threads", "1", *extra]


INFER = infer_with("{checkpoint}", "{case}/mr.nii.gz")
TRAIN = ["mri2ct.train", "--data", "{case}/pairs", "--out", "{case}/run", "--split", "{case}/train_split.json",
         "--cache", "{case}/cache", "--epochs", "1", "--patch", "16", "--threads", "1"]
EVALUATE = ["mri2ct.evaluate", "--checkpoint", "{checkpoint}", "--data", "{case}/pairs", "--split-file",
            "{case}/eval_split.json", "--cache", "{case}/cache", "--out", "{case}/metrics.csv", "--threads", "1"]

BAD_SPLIT_TRAIN = [part.replace("train_split", "bad_split") for part in TRAIN]
BAD_SPLIT_EVALUATE = [part.replace("eval_split", "bad_split") for part in EVALUATE]


def cached(damage):
    """A paired folder whose p1 (the test patient of eval_split.json) is in the cache, then damaged."""
    def setup(folder, files):
        pairs(folder)
        data = open_data_folder(os.path.join(folder, "pairs"))
        cache = os.path.join(folder, "cache")
        load_patient(data, "p1", SPACING, cache)
        damage(cache_entry(data, "p1", SPACING, cache))
    return setup


def truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


def foreign_output(folder, files):
    """{case}/mr.nii.gz to predict and {case}/sct.nii.gz, a CT that infer did not write."""
    mr, ct = head()
    save(os.path.join(folder, "mr.nii.gz"), mr)
    save(os.path.join(folder, "sct.nii.gz"), ct)


def own_output(folder, files):
    mr, ct = head()
    save(os.path.join(folder, "mr.nii.gz"), mr)
    save(os.path.join(folder, "sct.nii.gz"), ct,
         edit_header=lambda header: header.__setitem__("descrip", f"mri2ct.infer {__version__}".encode()))


def scans_folder(bad=None, existing=None):
    """{case}/scans: a.nii.gz, c.nii.gz good, b.nii.gz written by bad(path, mr) if given;
    {case}/out/a.nii.gz written by existing(path) if given."""
    def setup(folder, files):
        os.makedirs(os.path.join(folder, "scans"))
        mr, ct = head()
        for name in ("a", "c"):
            save(os.path.join(folder, "scans", f"{name}.nii.gz"), mr)
        if bad:
            data = bad(os.path.join(folder, "scans", "b.nii.gz"), mr)
            if data is not None:
                save(os.path.join(folder, "scans", "b.nii.gz"), data)
        if existing:
            os.makedirs(os.path.join(folder, "out"))
            existing(os.path.join(folder, "out", "a.nii.gz"), ct)
    return setup


INFER_DIR = ["mri2ct.infer", "--checkpoint", "{checkpoint}", "--input-dir", "{case}/scans", "--output-dir",
             "{case}/out", "--threads", "1"]


def with_complex(path, mr):
    return mr.astype(np.complex64) + 1j


def with_voxel(value):
    def make(path, mr):
        mr = mr.copy()
        mr[3, 4, 5] = value
        return mr
    return make


CASES = [
    # ---- scans, read by infer ----
    Case("rgb24 MR", INFER, exit=2, says=r"mr\.nii\.gz: voxel type RGB", setup=scan("mr.nii.gz", rgb),
         absent=["{case}/sct.nii.gz"]),
    Case("complex MR", INFER, exit=2, says=r"mr\.nii\.gz: voxel type complex64 \(complex values\)",
         setup=scan("mr.nii.gz", with_complex), absent=["{case}/sct.nii.gz"]),
    Case("NaN in the affine's translation", INFER, exit=2, says=r"mr\.nii\.gz: the affine .*NaN",
         setup=scan("mr.nii.gz", lambda path, mr: save(path, mr, np.array(
             [[6, 0, 0, np.nan], [0, 6, 0, 0], [0, 0, 6, 0], [0, 0, 0, 1.0]])) and None),
         absent=["{case}/sct.nii.gz"]),
    Case("zero voxel sizes, qform and sform codes 0", INFER, exit=2,
         says=r"mr\.nii\.gz: voxel size 0 x 0 x 0 mm is outside the supported 0\.1-10\.0 mm",
         setup=scan("mr.nii.gz", lambda path, mr: raw_nifti(path, mr, lambda h: (
             h["pixdim"].__setitem__(slice(1, 4), 0), h.__setitem__("qform_code", 0),
             h.__setitem__("sform_code", 0)))), absent=["{case}/sct.nii.gz"]),
    Case("voxel size 20 mm", INFER, exit=2, says=r"mr\.nii\.gz: voxel size 20 x 20 x 20 mm is outside",
         setup=scan("mr.nii.gz", lambda path, mr: save(path, mr, np.diag([20.0, 20, 20, 1])) and None)),
    Case("parallel axes", INFER, exit=2, says=r"mr\.nii\.gz: degenerate affine",
         setup=scan("mr.nii.gz", lambda path, mr: save(path, mr, np.array(
             [[6, 6, 0, 0], [0, 0, 0, 0.0], [0, 0, 6, 0], [0, 0, 0, 1]]) + np.diag([0, 1e-9, 0, 0])) and None)),
    Case("scl_slope 1e38 overflows float32", INFER, exit=2,
         says=r"mr\.nii\.gz: overflow: values up to .*scl_slope 1e\+38",
         setup=scan("mr.nii.gz", lambda path, mr: save(path, (mr * 100).astype(np.int16), edit_header=lambda h:
                                                       h.set_slope_inter(1e38, 0)) and None)),
    Case("float64 values times scl_slope 1e30 overflow float64", INFER, exit=2,
         says=r"mr\.nii\.gz: overflow: \d+ voxels become infinite after the header's scaling \(scl_slope 1e\+30",
         setup=scan("mr.nii.gz", lambda path, mr: save(path, mr.astype(np.float64) * 1e300, edit_header=lambda h:
                                                       h.set_slope_inter(1e30, 0)) and None)),
    Case("float64 values near 1e302", INFER, exit=2,
         says=r"mr\.nii\.gz: overflow: values up to 1\.1\d*e\+302 exceed float32",
         setup=scan("mr.nii.gz", lambda path, mr: mr.astype(np.float64) * 1e300)),
    Case("NaN voxel", INFER, exit=2, says=r"mr\.nii\.gz: 1 NaN or infinite voxels",
         setup=scan("mr.nii.gz", with_voxel(np.nan))),
    Case("infinite voxel", INFER, exit=2, says=r"mr\.nii\.gz: 1 NaN or infinite voxels",
         setup=scan("mr.nii.gz", with_voxel(np.inf))),
    Case("all-negative MR", INFER, exit=2, says=r"mr\.nii\.gz: values from .* none positive",
         setup=scan("mr.nii.gz", lambda path, mr: mr - 1000)),
    Case("constant MR", INFER, exit=2, says=r"mr\.nii\.gz: empty image \(every voxel has the same value",
         setup=scan("mr.nii.gz", lambda path, mr: np.full(SHAPE, 7, np.float32))),
    Case("real 4th axis", INFER, exit=2, says=r"mr\.nii\.gz: 4-D image of shape \(24, 24, 24, 2\)",
         setup=scan("mr.nii.gz", lambda path, mr: np.stack([mr, mr], -1))),
    Case("singleton 4th axis is 3-D", INFER, exit=0, setup=scan("mr.nii.gz", lambda path, mr: mr[..., None]),
         present=["{case}/sct.nii.gz"]),
    Case("big-endian float32", INFER, exit=0, setup=scan("mr.nii.gz", lambda path, mr: mr.astype(">f4")),
         present=["{case}/sct.nii.gz"]),
    Case("int64 with extremes", INFER, exit=0, present=["{case}/sct.nii.gz"], setup=scan(
        "mr.nii.gz", lambda path, mr: nib.save(nib.Nifti1Image(np.where(
            np.arange(mr.size).reshape(SHAPE) == 0, np.iinfo(np.int64).max, (mr * 10).astype(np.int64)), AFFINE,
            dtype=np.int64), path))),
    Case(".nii.gz that is not gzip", INFER, exit=2, says=r"mr\.nii\.gz: not a readable NIfTI file",
         setup=scan("mr.nii.gz", lambda path, mr: open(path, "wb").write(nib.Nifti1Image(mr, AFFINE).to_bytes())
                    and None)),
    Case("header claims more data than the file holds", INFER, exit=2,
         says=r"mr\.nii\.gz: file is truncated, the header promises",
         setup=scan("mr.nii.gz", lambda path, mr: open(path, "wb").write(
             gzip.compress(nib.Nifti1Image(mr, AFFINE).to_bytes()[:20000])) and None)),
    Case("a folder as --input", infer_with("{checkpoint}", "{case}"), exit=2, says=r"is a folder, not a NIfTI file"),
    Case("missing --input", INFER, exit=2, says=r"mr\.nii\.gz: no such file"),
    # ---- infer's outputs ----
    Case("--output is a CT infer did not write", INFER, exit=2,
         says=r"--output .*sct\.nii\.gz: exists and was not written by mri2ct\.infer", setup=foreign_output,
         unchanged=["{case}/sct.nii.gz"]),
    Case("--output that infer wrote is replaced", INFER, exit=0, setup=own_output, present=["{case}/sct.nii.gz"]),
    Case("--overwrite replaces a foreign --output", INFER + ["--overwrite"], exit=0, setup=foreign_output),
    Case("--input-dir: a bad scan is reported, the others predicted", INFER_DIR, exit=2,
         says=r"b\.nii\.gz: voxel type RGB", setup=scans_folder(bad=rgb),
         present=["{case}/out/a.nii.gz", "{case}/out/c.nii.gz"], absent=["{case}/out/b.nii.gz"]),
    Case("--input-dir: a foreign file in --output-dir is kept and reported", INFER_DIR, exit=2,
         says=r"a\.nii\.gz: exists and was not written by mri2ct\.infer",
         setup=scans_folder(existing=lambda path, ct: save(path, ct)),
         unchanged=["{case}/out/a.nii.gz"], present=["{case}/out/c.nii.gz"]),
    Case("--input-dir: infer's own output is kept", INFER_DIR, exit=0,
         setup=scans_folder(existing=lambda path, ct: save(path, ct, edit_header=lambda h: h.__setitem__(
             "descrip", b"mri2ct.infer 0.0.1"))), unchanged=["{case}/out/a.nii.gz"], present=["{case}/out/c.nii.gz"]),
    # ---- checkpoints ----
    Case("config is a JSON list", infer_with(), exit=2,
         says=r"model\.npz: checkpoint field 'config' is \[", setup=crafted(lambda s: s.__setitem__("config", [1, 2]))),
    Case("meta nested 100 000 deep", infer_with(), exit=2,
         says=r"model\.npz: damaged checkpoint metadata \(nested 100,00",
         setup=crafted(meta_text=lambda meta: meta[:-1] + ', "history": ' + "[" * 100000 + "]" * 100000 + "}")),
    Case("a decompression bomb (64 MB of zeros for the 3 GB one)", infer_with(), exit=2,
         says=r"model\.npz: entry 'optimizer/exp_avg/0' holds 16,777,216 values, more than the model's largest",
         setup=crafted(lambda s: s.__setitem__("optimizer", {"exp_avg": [np.zeros(2 ** 24, np.float32)]}))),
    Case("an entry's header claims 10^12 values", infer_with(), exit=2,
         says=r"model\.npz: entry 'model/head\.bias' is .* bytes in the zip, its header says 4,000,000,000,",
         setup=crafted(extra={"model/head.bias.npy": absurd_header()},
                       edit_state=lambda s: s["model"].pop("head.bias") is None or None,
                       meta_text=lambda m: m.replace(
                           '"model": {', '"model": {"head.bias": {"__array__": "model/head.bias"}, '))),
    Case("a 256^3 window for a 24^3 scan", infer_with("{case}/model.npz", "{scan}"), exit=0,
         setup=crafted(lambda s: s["config"].__setitem__("shape", 256)), present=["{case}/sct.nii.gz"]),
    Case("negative BatchNorm variance", infer_with(), exit=2,
         says=r"model\.npz: model/enc1\.bn1\.running_var holds negative values",
         setup=crafted(lambda s: s["model"]["enc1.bn1.running_var"].__setitem__(0, -1.0))),
    Case("complex weight", infer_with(), exit=2, says=r"model\.npz: entry 'model/head\.weight' holds complex64 values",
         setup=crafted(lambda s: s["model"].__setitem__("head.weight",
                                                        s["model"]["head.weight"].astype(np.complex64)))),
    Case("object entry", infer_with(), exit=2, says=r"model\.npz: entry 'model/head\.bias' holds object values",
         setup=crafted(lambda s: s["model"].__setitem__("head.bias", np.array([{"a": 1}], dtype=object)))),
    Case("NaN weight", infer_with(), exit=2, says=r"model/head\.weight holds NaN or infinite values",
         setup=crafted(lambda s: s["model"]["head.weight"].fill(np.nan))),
    Case("a zip with an extra member", infer_with(), exit=2, says=r"model\.npz: unexpected entry 'README\.txt'",
         setup=crafted(extra={"README.txt": b"hello"})),
    Case("an array the metadata does not name", infer_with(), exit=2, says=r"model\.npz: unexpected entry 'extra'",
         setup=crafted(extra={"extra": np.zeros(3, np.float32)})),
    Case("weights of other features", infer_with(), exit=2,
         says=r"model\.npz: model/enc1\.conv1\.weight holds float32 \(8, 1, 3, 3, 3\), UNet3D .* needs",
         setup=crafted(lambda s: s["model"].__setitem__("enc1.conv1.weight", np.zeros((8, 1, 3, 3, 3), np.float32)))),
    Case("features given as text", infer_with(), exit=2, says=r"model\.npz: checkpoint config field 'features' is",
         setup=crafted(lambda s: s["config"].__setitem__("features", "4 8 16 32"))),
    Case("an unknown config field", infer_with(), exit=2,
         says=r"model\.npz: checkpoint config has an unknown field 'colour'",
         setup=crafted(lambda s: s["config"].__setitem__("colour", "blue"))),
    Case("a data fingerprint is accepted", infer_with(), exit=0, present=["{case}/sct.nii.gz"],
         setup=crafted(lambda s: s["config"].__setitem__("data_fingerprint", "sha256:0123"))),
    Case("a malformed tag in the metadata", infer_with(), exit=2, says=r"model\.npz: damaged checkpoint metadata",
         setup=crafted(lambda s: s.__setitem__("optimizer", {"by_index": {1: 2}}),
                       meta_text=lambda m: m.replace('"__items__": [[1, 2]]', '"__items__": 5'))),
    Case("no meta entry", infer_with(), exit=2, says=r"model\.npz: not an mri2ct checkpoint \(no 'meta' entry\)",
         setup=lambda folder, files: write_npz(os.path.join(folder, "model.npz"), {"weights": np.zeros(3)})),
    # ---- splits ----
    Case("split with an extra entry that is not a list", BAD_SPLIT_TRAIN,
         exit=2, says=r"--split .*bad_split\.json: expected exactly .*'extra'",
         setup=split({"train": ["p1"], "val": ["p2"], "test": ["p3"], "extra": 3}), absent=["{case}/run/latest.npz"]),
    Case("the same patient in train, val and test", BAD_SPLIT_TRAIN,
         exit=2, says=r"--split .*bad_split\.json: patient 'p1' is in train and in val; the parts must be disjoint",
         setup=split({"train": ["p1", "p2"], "val": ["p1"], "test": ["p1"]})),
    Case("split naming an unknown patient", BAD_SPLIT_TRAIN,
         exit=2, says=r"--split .*bad_split\.json: val patient 'p9' is not a patient folder",
         setup=split({"train": ["p1"], "val": ["p9"], "test": []})),
    Case("split without test", BAD_SPLIT_TRAIN,
         exit=2, says=r"--split .*: expected exactly", setup=split({"train": ["p1"], "val": ["p2"]})),
    Case("split nested 100 000 deep", BAD_SPLIT_TRAIN, exit=2, says=r"--split .*: not valid JSON \(nested too deep\)",
         setup=split("[" * 100000 + "]" * 100000)),
    Case("evaluate --split-file names its flag", BAD_SPLIT_EVALUATE,
         exit=2, says=r"^error: --split-file .*bad_split\.json: train must be a list",
         setup=split({"train": "p1", "val": ["p2"], "test": ["p3"]})),
    Case("evaluate with a checkpoint that has a data fingerprint and no split",
         [part.replace("{checkpoint}", "{case}/model.npz") for part in EVALUATE], exit=2,
         says=r"model\.npz: trained on other data than .*pairs holds",
         setup=lambda folder, files: (pairs(folder), crafted(lambda s: s["config"].__setitem__(
             "data_fingerprint", "0123456789abcdef0123"))(folder, files)) and None),
    # ---- the cache ----
    Case("cache entry without mr.npy is rebuilt", EVALUATE, exit=0, says=r"^warning: cache entry .*p1-.* is damaged",
         setup=cached(lambda entry: os.remove(os.path.join(entry, "mr.npy"))), present=["{case}/metrics.csv"]),
    Case("cache entry with a cut ct_hu.npy is rebuilt", EVALUATE, exit=0,
         says=r"^warning: cache entry .*p1-.* is damaged \(ct_hu\.npy has",
         setup=cached(lambda entry: truncate(os.path.join(entry, "ct_hu.npy")))),
    Case("cache entry without meta.json is rebuilt", EVALUATE, exit=0, says=r"^warning: cache entry .* is damaged",
         setup=cached(lambda entry: os.remove(os.path.join(entry, "meta.json")))),
    # ---- paired folders: CT, MR and mask plausibility ----
    Case("CT stored as 0..4000", TRAIN, exit=2, says=r"CT .*p1/ct\.nii\.gz: values from \d+ to \d+, no air",
         setup=paired(patient_file("ct.nii.gz", lambda path, mr, ct: save(path, np.clip(ct + 1024, 0, 4000))))),
    Case("complex MR in a paired folder", TRAIN, exit=2, says=r"p1/mr\.nii\.gz: voxel type complex64",
         setup=paired(patient_file("mr.nii.gz", lambda path, mr, ct: save(path, mr.astype(np.complex64))))),
    Case("rgb24 CT in a paired folder", TRAIN, exit=2, says=r"p1/ct\.nii\.gz: voxel type RGB",
         setup=paired(patient_file("ct.nii.gz", lambda path, mr, ct: save(path, rgb(path, mr))))),
    Case("float mask of 0 and 0.9", EVALUATE, exit=0, present=["{case}/metrics.csv"],
         setup=paired(mask=lambda ct: (ct > -500) * np.float32(0.9))),
    Case("int16 mask of 256", EVALUATE, exit=0, present=["{case}/metrics.csv"],
         setup=paired(mask=lambda ct: ((ct > -500) * 256).astype(np.int16))),
    Case("an empty mask", EVALUATE, exit=2, says=r"mask .*p1/mask\.nii\.gz: the mask is empty",
         setup=paired(mask=lambda ct: np.zeros(SHAPE, np.int16))),
    Case("all-negative MR in a paired folder", EVALUATE, exit=2,
         says=r"MR .*p1/mr\.nii\.gz: values from .* none positive",
         setup=paired(patient_file("mr.nii.gz", lambda path, mr, ct: save(path, mr - 500)))),
    # ---- visualize ----
    Case("visualize an rgb24 sCT", ["mri2ct.visualize", "--mri", "{scan}", "--pred", "{case}/mr.nii.gz", "--out",
                                    "{case}/fig.png"], exit=2, says=r"sCT .*mr\.nii\.gz: voxel type RGB",
         setup=scan("mr.nii.gz", rgb), absent=["{case}/fig.png"]),
    Case("visualize a CT with a NaN affine", ["mri2ct.visualize", "--mri", "{scan}", "--pred", "{scan}", "--ct",
                                              "{case}/mr.nii.gz", "--out", "{case}/fig.png"], exit=2,
         says=r"CT .*mr\.nii\.gz: the affine .*NaN", absent=["{case}/fig.png"],
         setup=scan("mr.nii.gz", lambda path, mr: save(path, mr, np.array(
             [[6, 0, 0, 0], [0, 6, 0, np.inf], [0, 0, 6, 0], [0, 0, 0, 1.0]])) and None)),
]


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """The session's files: the tiny checkpoint and a good scan."""
    folder = tmp_path_factory.mktemp("shared")
    path = str(folder / "best.npz")
    checkpoint.save_checkpoint(path, {"epoch": 1, "model": model_state(), "config": dict(CONFIG)})
    mr, _ = head()
    return {"checkpoint": path, "scan": save(str(folder / "mr.nii.gz"), mr)}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_file(case, shared, tmp_path):
    check_case(case, tmp_path, shared)


def test_a_window_larger_than_the_scan_is_cut_to_it():
    """A checkpoint's 256^3 window on a small scan: the network sees windows of the scan's size rounded
    up to a multiple of 8, never a 256^3 one (4 GB of activations for the default U-Net)."""
    seen = []

    class Recorder:
        def forward(self, x):
            seen.append(x.shape)
            return x

    volume = np.random.default_rng(0).random((24, 20, 30), dtype=np.float32)
    prediction = sliding_window.predict_sliding_window(Recorder(), volume, (256, 256, 16))
    assert set(seen) == {(1, 1, 24, 24, 16)}
    np.testing.assert_allclose(prediction, volume, rtol=1e-5)
