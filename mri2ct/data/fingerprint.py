"""The fingerprint of a run's data: what a checkpoint records so that a resume or an evaluation can
tell the data it was trained on from other data under the same patient ids.

    fingerprint = data_fingerprint(folder, split)     # DataFolder, {"train": [ids], "val": ..., ...}

It covers the patients of the split (every part: train, val and test), and for each of them each
scan file's kind (mr, ct, mask, labels), its size in bytes and the SHA-256 of its first
HEAD_BYTES (the header and the first voxels, compressed or not). It is cheap (64 KiB read per file,
whatever the scans' size) and does not depend on where the folder is or on file times, so a copy of
the data, moved or on another machine, has the same fingerprint; a regenerated or edited scan
almost always changes its size or its first bytes. A patient of the split missing from the folder
counts as other data.

    check_same_data(trained, fingerprint, checkpoint, data, remedy)   # ValueError if they differ
"""
import hashlib
import json
import os

HEAD_BYTES = 64 * 1024


def file_digest(path):
    """[size in bytes, SHA-256 hex of the first HEAD_BYTES] of one file."""
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
    return [os.path.getsize(path), hashlib.sha256(head).hexdigest()]


def data_fingerprint(folder, split):
    """Hex digest (20 characters) of the scans of every patient of `split` in the DataFolder `folder`."""
    ids = sorted({id for part in split.values() for id in part})
    files = {id: {kind: file_digest(path) for kind, path in sorted(folder.paths[id].items())}
             if id in folder.paths else None for id in ids}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:20]


def check_same_data(trained, fingerprint, checkpoint, data, remedy):
    """ValueError naming the checkpoint and the data folder if the checkpoint's recorded fingerprint
    `trained` is not the folder's `fingerprint`; None (checkpoints older than the fingerprint) passes."""
    if trained is not None and trained != fingerprint:
        raise ValueError(f"{checkpoint}: trained on other data than {data} holds (the scans of its patients "
                         f"differ: data fingerprint {trained}, the folder's {fingerprint}); {remedy}")
