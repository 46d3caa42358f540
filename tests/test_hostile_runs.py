"""Hostile runs (issue 20, second half): flags, run folders and resumes, data changed under a run,
data --overwrite, signals, a full disk, worker processes, permissions. Each case is a command as a
careless or hostile user types it, with the exit status and the one line it must give and the files
it must leave alone (tests/hostile.py). Tiny on purpose: 4 patients of 32^3 at 6 mm, features
4 8 16 32, one thread, runs of one epoch."""
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from hostile import Case, check_case
from mri2ct import train
from mri2ct.common import errors
from mri2ct.data import generate_cohort, load_patient, open_data_folder
from mri2ct.training.checkpoint import load_checkpoint, save_checkpoint

TINY = ["--features", "4", "8", "16", "32", "--threads", "1"]
RUN = ["--data", "{cohort}", *TINY, "--epochs", "1"]          # the flags of the shared runs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny cohort and two runs of it with the same flags (two runs, so two histories): run A keeps
    epoch_001.npz too."""
    root = tmp_path_factory.mktemp("hostile_runs")
    cohort = str(root / "cohort")
    generate_cohort(cohort, patients=4, seed=0, shape=32, spacing=6.0, workers=1)
    names = {"cohort": cohort, "run_a": str(root / "run_a"), "run_b": str(root / "run_b")}
    for run, extra in (("run_a", ["--checkpoint-every", "1"]), ("run_b", [])):
        argv = [part.format(**names) for part in RUN] + ["--out", names[run], *extra]
        errors.run(train.main, argv)
    return names


# ---- setups -----------------------------------------------------------------------------------
def copy_run_a(folder, names):
    shutil.copytree(names["run_a"], os.path.join(folder, "run"))


def changed_data(folder, names):
    """A copy of the cohort whose patient_000 CT is patient_001's: the same ids, other scans."""
    data = os.path.join(folder, "data")
    shutil.copytree(names["cohort"], data)
    shutil.copyfile(os.path.join(data, "patient_001", "ct.nii.gz"), os.path.join(data, "patient_000", "ct.nii.gz"))


def changed_data_and_run(folder, names):
    changed_data(folder, names)
    copy_run_a(folder, names)


def copied_data(folder, names):
    """The cohort copied file by file (new times, same bytes): the same data."""
    shutil.copytree(names["cohort"], os.path.join(folder, "data"), copy_function=shutil.copyfile)


def old_checkpoint(folder, names):
    """Run A's checkpoint as written before checkpoints recorded their data, next to changed data."""
    changed_data(folder, names)
    state = load_checkpoint(os.path.join(names["run_a"], "latest.npz"))
    del state["config"]["data_fingerprint"]
    save_checkpoint(os.path.join(folder, "old.npz"), state)


def newer_format(folder, names):
    """Run A's checkpoint as a later version of mri2ct would write it (another format tag)."""
    with np.load(os.path.join(names["run_a"], "latest.npz"), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta["format"] = "mri2ct-checkpoint-v2"
    np.savez(os.path.join(folder, "new.npz"), meta=np.array(json.dumps(meta)), **arrays)


def a_file(folder, names):
    with open(os.path.join(folder, "file"), "w") as file:
        file.write("not a folder\n")


def users_folder(folder, names):
    """A folder of the user's own files, one of them a manifest.json another tool wrote."""
    os.makedirs(os.path.join(folder, "mine", "notes"))
    for name, text in (("thesis.tex", "\\documentclass{article}\n"), ("notes/todo.txt", "everything\n"),
                       ("manifest.json", '{"split": {"train": []}}\n')):
        with open(os.path.join(folder, "mine", name), "w") as file:
            file.write(text)


def own_cohort(folder, names):
    generate_cohort(os.path.join(folder, "cohort"), patients=1, seed=0, shape=16, spacing=6.0, workers=1)


def checkpoints_whole(names):
    """Every checkpoint a signalled run left in {case}/run loads."""
    run = os.path.join(names["case"], "run")
    written = [name for name in os.listdir(run) if name.endswith(".npz") and not name.startswith(".")]
    assert "latest.npz" in written
    for name in written:
        load_checkpoint(os.path.join(run, name))


# ---- the table ---------------------------------------------------------------------------------
def flag_case(module, flags, says, **extra):
    """A bad flag: exit 2 at parse time, one line naming the flag, nothing written."""
    return Case(f"{module} {' '.join(flags)}", [f"mri2ct.{module}", *flags], exit=2, says=says,
                absent=["{case}/out"], **extra)


TRAIN = ["--data", "{cohort}", "--out", "{case}/out", *TINY]
EVALUATE = ["mri2ct.evaluate", "--checkpoint", "{run_a}/latest.npz", "--out", "{case}/metrics.csv", "--threads", "1"]
DATA = ["mri2ct.data", "--patients", "2", "--shape", "16", "--spacing", "6"]
RUN_A_FILES = ["{run_a}/latest.npz", "{run_a}/best.npz", "{run_a}/history.json", "{run_a}/training_curves.png",
               "{run_a}/split.json"]

CASES = [
    # flags: every value checked at parse time, its flag named
    flag_case("train", [*TRAIN, "--seed", "-1"], r"argument --seed: must be between 0 and"),
    flag_case("train", [*TRAIN, "--lr", "inf"], r"argument --lr: must be a finite number in \(0, 1\], got inf"),
    flag_case("train", [*TRAIN, "--lr", "1e30"], r"argument --lr: .*got 1e30"),
    flag_case("train", [*TRAIN, "--lr", "nan"], r"argument --lr: .*got nan"),
    flag_case("train", [*TRAIN, "--clip", "nan"], r"argument --clip: .*got nan"),
    flag_case("train", [*TRAIN, "--weight-decay", "-0.1"], r"argument --weight-decay: .*got -0.1"),
    flag_case("train", [*TRAIN, "--lr", "1e-4", "--lr-min", "1e-3"], r"argument --lr-min: must be at most --lr"),
    flag_case("train", [*TRAIN, "--patch", "8"], r"argument --patch: must be a multiple of 8 of at least 16, got 8"),
    flag_case("train", [*TRAIN, "--patch", "20"], r"argument --patch: .*got 20"),
    flag_case("train", [*TRAIN, "--threads", "0"], r"argument --threads: must be between 1 and \d+, got 0"),
    flag_case("train", [*TRAIN, "--epochs", "0"], r"argument --epochs: must be at least 1, got 0"),
    flag_case("train", [*TRAIN, "--batch-size", "-1"], r"argument --batch-size: must be at least 1, got -1"),
    flag_case("train", [*TRAIN, "--accumulate", "0"], r"argument --accumulate: must be at least 1"),
    flag_case("train", [*TRAIN, "--val-every", "0"], r"argument --val-every: must be at least 1"),
    flag_case("train", [*TRAIN, "--checkpoint-every", "-1"], r"argument --checkpoint-every: must be at least 0"),
    flag_case("train", [*TRAIN, "--spacing", "0"], r"argument --spacing: .*got 0"),
    flag_case("train", ["--data", "{cohort}", "--out", "{case}/out", "--features", "4", "8", "x", "32"],
              r"argument --features: must be a whole number, got 'x'"),
    flag_case("evaluate", [*EVALUATE[1:], "--data", "{cohort}", "--threads", "0"], r"argument --threads"),
    flag_case("infer", ["--checkpoint", "{run_a}/latest.npz", "--input", "{cohort}/patient_000/mr.nii.gz",
                        "--output", "{case}/out", "--threads", "999"], r"argument --threads: .*got 999"),
    flag_case("inspect", ["--checkpoint", "{run_a}/latest.npz", "--data", "{cohort}", "--patient", "-1",
                          "--out", "{case}/out"], r"argument --patient: must be at least 0, got -1"),
    flag_case("data", [*DATA[1:], "--out", "{case}/out", "--workers", "0"], r"argument --workers: must be at least 1"),
    flag_case("data", [*DATA[1:], "--out", "{case}/out", "--seed", "-1"], r"argument --seed"),
    flag_case("data", [*DATA[1:], "--out", "{case}/out", "--patients", "0"], r"argument --patients"),
    flag_case("data", [*DATA[1:], "--out", "{case}/out", "--spacing", "nan"], r"argument --spacing: .*got nan"),
    flag_case("data", [*DATA[1:], "--out", "{case}/out", "--supersample", "0"], r"argument --supersample"),
    flag_case("data", [*DATA[1:], "--out", "{case}/out", "--shape", "4"], r"argument --shape: .*got 4"),

    # run folders: one run per folder
    Case("fresh start into a folder holding a run", ["mri2ct.train", *RUN, "--out", "{run_a}"], exit=2,
         says=r"run_a already holds a run", unchanged=RUN_A_FILES),
    Case("--resume of another run into a folder holding a run",
         ["mri2ct.train", *RUN, "--out", "{run_a}", "--resume", "{run_b}/latest.npz"], exit=2,
         says=r"run_a already holds another run .*run_b/latest.npz", unchanged=RUN_A_FILES),
    Case("--resume of another run into a new folder continues it",
         ["mri2ct.train", *RUN, "--out", "{case}/run", "--resume", "{run_b}/latest.npz"], exit=0),
    Case("--resume of an earlier checkpoint of the folder's own run",
         ["mri2ct.train", *RUN, "--out", "{case}/run", "--resume", "{case}/run/epoch_001.npz"], exit=0,
         setup=copy_run_a),
    Case("--resume of a checkpoint that does not exist",
         ["mri2ct.train", *RUN, "--out", "{case}/run", "--resume", "{case}/nothing.npz"], exit=2,
         says=r"nothing.npz: no such checkpoint file"),
    Case("--resume of a checkpoint of a newer format",
         ["mri2ct.train", *RUN, "--out", "{case}/run", "--resume", "{case}/new.npz"], exit=2,
         says=r"new.npz: .*format", setup=newer_format, absent=["{case}/run/latest.npz"]),
    Case("--out is a file", ["mri2ct.train", *RUN, "--out", "{case}/file"], exit=2,
         says=r"--out .*file: exists and is not a folder", setup=a_file, unchanged=["{case}/file"]),

    # data that changed under the run: the checkpoint's data fingerprint
    Case("--resume latest on data changed under the same patient ids",
         ["mri2ct.train", "--data", "{case}/data", *TINY, "--epochs", "1", "--out", "{case}/run", "--resume", "latest"],
         exit=2, says=r"run/latest.npz: trained on other data than .*data holds .*resume on the run's own data",
         setup=changed_data_and_run, unchanged=["{case}/run"]),
    Case("evaluate on data the checkpoint was not trained on",
         [*EVALUATE, "--data", "{case}/data"], exit=2,
         says=r"run_a/latest.npz: trained on other data than .*data holds.*--other-data",
         setup=changed_data, absent=["{case}/metrics.csv"]),
    Case("evaluate --other-data on data the checkpoint was not trained on",
         [*EVALUATE, "--data", "{case}/data", "--other-data"], exit=0, setup=changed_data),
    Case("evaluate on a copy of its own data (new times, same bytes)",
         [*EVALUATE, "--data", "{case}/data"], exit=0, setup=copied_data),
    Case("evaluate a checkpoint older than the data fingerprint",
         ["mri2ct.evaluate", "--checkpoint", "{case}/old.npz", "--data", "{case}/data", "--threads", "1",
          "--out", "{case}/metrics.csv"], exit=0, setup=old_checkpoint),

    # data --out: never replaces what it did not write; workers bounded
    Case("data --overwrite of a folder of the user's files",
         [*DATA, "--out", "{case}/mine", "--overwrite"], exit=2,
         says=r"mine: folder is not empty and holds no cohort folder this command wrote", setup=users_folder,
         unchanged=["{case}/mine"]),
    Case("data --overwrite of a cohort it wrote replaces it",
         [*DATA, "--out", "{case}/cohort", "--overwrite", "--workers", "1"], exit=0, setup=own_cohort),
    Case("data --out is a file", [*DATA, "--out", "{case}/file"], exit=2, says=r"file: exists and is not a folder",
         setup=a_file, unchanged=["{case}/file"]),
    Case("data --workers 999 for 2 patients", [*DATA, "--out", "{case}/cohort", "--workers", "999"], exit=0,
         process=True, timeout=40),

    # signals: one line, the status of the signal, nothing left behind
    Case("SIGTERM during training",
         ["mri2ct.train", "--data", "{cohort}", *TINY, "--epochs", "50", "--out", "{case}/run"], exit=143,
         says=r"^terminated$", signal=(signal.SIGTERM, "{case}/run/latest.npz"), after=checkpoints_whole,
         timeout=120),
    Case("Ctrl-C to the process group of mri2ct.data",
         ["mri2ct.data", "--out", "{case}/cohort", "--patients", "8", "--shape", "48", "--spacing", "4",
          "--workers", "2"], exit=130, says=r"^interrupted$",
         signal=(signal.SIGINT, "{case}/.cohort.tmp-*/patient_00*/*.nii.gz"), absent=["{case}/cohort"], timeout=120),
    Case("Ctrl-C to mri2ct.data alone (kill -INT PID): its workers end with it",
         ["mri2ct.data", "--out", "{case}/cohort", "--patients", "8", "--shape", "48", "--spacing", "4",
          "--workers", "2"], exit=130, says=r"^interrupted$", signal_group=False,
         signal=(signal.SIGINT, "{case}/.cohort.tmp-*/patient_00*/*.nii.gz"), absent=["{case}/cohort"], timeout=120),
    Case("SIGTERM to the process group of mri2ct.data",
         ["mri2ct.data", "--out", "{case}/cohort", "--patients", "8", "--shape", "48", "--spacing", "4",
          "--workers", "2"], exit=143, says=r"^terminated$",
         signal=(signal.SIGTERM, "{case}/.cohort.tmp-*/patient_00*/*.nii.gz"), absent=["{case}/cohort"], timeout=120),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_run(case, files, tmp_path):
    check_case(case, tmp_path, files)


# ---- a full disk --------------------------------------------------------------------------------
@pytest.mark.parametrize("number, case", [
    (errno.ENOSPC, Case("train on a full disk", ["mri2ct.train", *RUN, "--out", "{case}/run"], exit=1,
                        says=r"run/split.json: no space left on device; free some space")),
    (errno.EDQUOT, Case("evaluate over its quota", [*EVALUATE, "--data", "{cohort}"], exit=1,
                        says=r"metrics.csv: disk quota exceeded", absent=["{case}/metrics.csv"])),
], ids=["ENOSPC", "EDQUOT"])
def test_disk_full_is_one_line_naming_the_file(number, case, files, tmp_path, monkeypatch):
    """Every write fails for want of space (fsync raises, as a full disk does, naming no file): exit 1,
    the file named."""
    def no_space(descriptor):
        raise OSError(number, os.strerror(number))
    monkeypatch.setattr(os, "fsync", no_space)
    check_case(case, tmp_path, files)


@pytest.fixture
def small_file_system(tmp_path):
    """A 64 KiB tmpfs at tmp_path/small and a read-only one at tmp_path/read_only (root only)."""
    mounted = []
    for name, options in (("small", "size=64k"), ("read_only", "ro,size=64k")):
        os.makedirs(tmp_path / name)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(tmp_path / name)],
                          capture_output=True).returncode != 0:
            break
        mounted.append(tmp_path / name)
    try:
        if len(mounted) < 2:
            pytest.skip("needs root to mount a small tmpfs")
        yield tmp_path
    finally:
        for path in mounted:
            subprocess.run(["umount", str(path)], check=True)


def test_a_really_full_disk_and_a_read_only_one(files, small_file_system):
    """The checkpoint does not fit in 64 KiB: exit 1, latest.npz named, no temporary left; a run
    folder on a read-only file system is refused as bad input."""
    check_case(Case("train into a full file system", ["mri2ct.train", *RUN, "--out", "{case}/small/run"], exit=1,
                    says=r"small/run/\w+.npz: no space left on device", process=True), small_file_system, files)
    assert sorted(os.listdir(small_file_system / "small" / "run")) == [".lock", "split.json"]
    check_case(Case("train into a read-only file system", ["mri2ct.train", *RUN, "--out", "{case}/read_only/run"],
                    exit=2, says=r"Read-only file system: .*read_only/run"), small_file_system, files)


# ---- permissions --------------------------------------------------------------------------------
def test_cohort_folders_and_cache_entries_honour_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        generate_cohort(str(tmp_path / "cohort"), patients=1, seed=0, shape=16, spacing=6.0, workers=1)
        load_patient(open_data_folder(str(tmp_path / "cohort")), "patient_000", 6.0, str(tmp_path / "cache"))
    finally:
        os.umask(previous)
    (entry,) = (tmp_path / "cache").iterdir()
    for folder in (tmp_path / "cohort", tmp_path / "cohort" / "patient_000", entry):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755, folder
    assert stat.S_IMODE(os.stat(tmp_path / "cohort" / "manifest.json").st_mode) == 0o644


BUSY_WORKER_OF_A_DYING_PARENT = """
import os, time
from multiprocessing import Pool
from mri2ct.common.errors import quiet_worker_signals
pool = Pool(1, initializer=quiet_worker_signals)
print(pool.apply(os.getpid), flush=True)
pool.apply_async(time.sleep, (60,))
time.sleep(0.5)                                  # the worker is busy
os._exit(0)                                      # the parent ends, as exit_on_signal ends it
"""


def test_a_pool_worker_ends_with_its_parent():
    """A worker busy when its parent ends (a Ctrl-C's exit_on_signal, or a replacement the Pool forked
    meanwhile) is killed with it, instead of finishing its task alone and printing a broken pipe."""
    parent = subprocess.Popen([sys.executable, "-c", BUSY_WORKER_OF_A_DYING_PARENT], stdout=subprocess.PIPE,
                              text=True)
    worker = int(parent.stdout.readline())
    parent.wait(timeout=60)
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{worker}/stat") as process_status:
                if process_status.read().split(")")[-1].split()[0] in ("Z", "X"):   # dead, not yet reaped
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"pool worker {worker} still running 10 s after its parent ended")
