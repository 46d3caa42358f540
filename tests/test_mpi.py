"""Data parallelism over MPI (mri2ct/common/distributed.py), run as a user runs it: `mpiexec -n N python -m
mri2ct.train ...` in subprocesses, 2 and 3 ranks oversubscribing the 2 cores, one thread each.

N ranks must end with the parameters of one process with --accumulate N (the same micro-batches,
summed in another order), through an epoch's last, smaller step; a run resumes only with its own N
and K; a rank killed with kill -9 ends the job within bounded time and --resume latest continues it;
cohort inference splits a folder over the ranks. Tiny: 11 patients of 16^3 at 10 mm (7 train / 2 val
/ 2 test), features 4 8 16 32. mpi4py and an MPI launcher (the mpich wheel) are required: without
them these tests fail, never skip (pip install -e '.[test]' brings both).
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import mpi4py  # noqa: F401  (a missing mpi4py must fail this module, not skip it)
import nibabel as nib
import numpy as np
import pytest

from mri2ct import train
from mri2ct.common import errors
from mri2ct.common.distributed import LAUNCHER_VARIABLES
from mri2ct.training.checkpoint import load_checkpoint
from mri2ct.data import generate_cohort, read_manifest

# --clip 1000: no clipping. Clipping rescales the gradient and AdamW's update is nearly blind to its
# scale, but the first moment m is linear in it: a wrong average (a sum, a wrong weight) shows there.
TINY = ["--features", "4", "8", "16", "32", "--threads", "1", "--clip", "1000"]
TIMEOUT = 300                 # seconds for any one command: a hang fails the test instead of blocking CI
DEAD_RANK_LIMIT = 60          # seconds within which the job must end after a rank is killed
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")


def mpiexec():
    """The launcher installed next to this interpreter (the mpich wheel's), else the one on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    path = local if os.access(local, os.X_OK) else shutil.which("mpiexec")
    assert path, "no mpiexec: install the test extra, pip install -e '.[test]' (mpi4py + mpich)"
    return path


def train_command(data, out, ranks, *flags):
    launcher = [mpiexec(), "-n", str(ranks)] if ranks > 1 else []
    return [*launcher, sys.executable, "-m", "mri2ct.train", "--data", data, "--out", out, *TINY, *flags]


def run(command):
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


def run_train(data, out, ranks, *flags):
    result = run(train_command(data, out, ranks, *flags))
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cohort") / "cohort")
    generate_cohort(root, patients=11, seed=0, shape=16, spacing=10.0, workers=1)
    assert len(read_manifest(root)["split"]["train"]) == 7          # 7 = 2 x 3 + 1 = 3 x 2 + 1: partial steps
    return root


# Each case: (ranks, flags). With 7 training samples, --batch-size 2 on 2 ranks gives steps of 4 and 3
# samples, the last dealt 2 + 1 (weights 2/3 and 1/3); batch 1 on 3 ranks gives 3 + 3 + 1, the last
# step on rank 0 alone (ranks 1 and 2 add zeros and wait).
CASES = {2: ["--batch-size", "2"], 3: []}


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory):
    """{ranks: (out of --accumulate ranks in one process, out of mpiexec -n ranks)}, 2 epochs each.
    The single-process run goes first, so that it compiles (or loads) the Numba cache for the ranks."""
    folders = {}
    for ranks, flags in CASES.items():
        single, parallel = (str(tmp_path_factory.mktemp(f"{kind}{ranks}")) for kind in ("accumulate", "mpi"))
        run_train(cohort, single, 1, "--epochs", "2", "--accumulate", str(ranks), *flags)
        result = run_train(cohort, parallel, ranks, "--epochs", "2", *flags)
        assert result.stdout.count("train loss") == 2                  # rank 0 alone prints...
        assert "epoch" not in result.stderr                            # ...and no rank draws a bar
        folders[ranks] = single, parallel
    return folders


def assert_same_run(single, parallel):
    """The two final checkpoints hold the same model, optimizer state and history.

    Tolerance: per tensor, max |difference| <= 1e-5 x max |value|. The runs differ only in the order in
    which the micro-batches' gradients (and running-statistic changes) are summed, float32 rounding of
    about 1e-7 relative. Clipping is linear and AdamW's step lr m/(sqrt(v) + eps) barely depends on it:
    for one gradient g, g / (|g| + eps) moves by at most delta / 4 when g moves by a relative delta,
    so every step moves each weight by at most ~lr x 1e-7 = 1e-11, far below a float32 ulp of the
    weights (~1e-8); over 8 steps the weights stay within a few ulps. Measured: parameters and
    optimizer moments bit for bit equal, running means within 1.2e-10 (3 ranks). A wrong micro-batch,
    weight or average moves weights by ~lr = 1e-4 per step, ~1e-3 of their size: 100x the tolerance.
    """
    a, b = (load_checkpoint(os.path.join(folder, "final.npz")) for folder in (single, parallel))
    pairs = [(f"model/{key}", a["model"][key], b["model"][key]) for key in a["model"]]
    for key in ("exp_avg", "exp_avg_sq"):
        pairs += [(f"{key}/{i}", x, y) for i, (x, y) in enumerate(zip(a["optimizer"][key], b["optimizer"][key]))]
    for name, x, y in pairs:
        scale = np.abs(y.astype(np.float64)).max()
        assert np.abs(x.astype(np.float64) - y).max() <= 1e-5 * scale, name
    assert a["optimizer"]["step"] == b["optimizer"]["step"] and a["scheduler"] == b["scheduler"]
    for key in ("train_loss", "lr"):                                 # float64 sums in another order
        np.testing.assert_allclose([r[key] for r in a["history"]], [r[key] for r in b["history"]], rtol=1e-9,
                                   err_msg=key)
    # Validation runs in eval mode on the running statistics, folded into the convolutions' float32
    # weights (nn3d/batchnorm_folding.py): their ~1e-10 relative difference flips a float32 rounding
    # here and there, which moves the validation metrics by about a float32 epsilon (measured 9e-8
    # relative); a wrong micro-batch or average moves them by ~1e-3.
    for key in ("val_loss", "val_mae_hu"):
        np.testing.assert_allclose([r[key] for r in a["history"]], [r[key] for r in b["history"]], rtol=1e-6,
                                   err_msg=key)


@pytest.mark.parametrize("ranks", sorted(CASES))
def test_ranks_equal_accumulation_in_one_process(runs, ranks):
    single, parallel = runs[ranks]
    assert_same_run(single, parallel)
    state = load_checkpoint(os.path.join(parallel, "final.npz"))
    assert state["config"]["ranks"] == ranks and state["config"]["accumulate"] == 1
    assert state["optimizer"]["step"] == 2 * {2: 2, 3: 3}[ranks]               # 2 epochs x ceil(7 / (B N))
    assert sorted(os.listdir(parallel)) == [".lock", "best.npz", "final.npz", "history.json", "latest.npz",
                                            "split.json", "training_curves.png"]


def test_resume_with_other_ranks_or_accumulation_is_refused(cohort, runs, capsys):
    """The trajectory depends on N and K: another N or K is one line, exit status 2."""
    for folder, flags, message in [(runs[2][1], ["--batch-size", "2"], "ranks = 2, this run has 1"),
                                   (runs[3][0], ["--accumulate", "2"], "accumulate = 3, this run has 2")]:
        with pytest.raises(SystemExit) as exit_info:
            errors.run(train.main, ["--data", cohort, "--out", folder, *TINY, "--epochs", "2", "--resume", "latest",
                                 *flags])
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and message in line


def rank_pid(out, rank):
    """Process id of rank `rank` of the trainer writing into `out` (read from /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                command = file.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as file:
                environment = set(file.read().split(b"\0"))
        except OSError:
            continue
        if b"mri2ct.train" in command and out.encode() in command and \
                any(f"{name}={rank}".encode() in environment for name in RANK_VARIABLES):
            return int(pid)
    return None


def test_a_killed_rank_ends_the_job_and_resume_continues(cohort, tmp_path):
    """kill -9 of rank 1 during epoch 2..4: the job ends within DEAD_RANK_LIMIT s with an error; then
    `mpiexec -n 2 ... --resume latest` (every rank starts from rank 0's checkpoint) ends where one
    process with --accumulate 2 ends."""
    out, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
    run_train(cohort, reference, 1, "--epochs", "4", "--accumulate", "2")
    process = subprocess.Popen(train_command(cohort, out, 2, "--epochs", "4"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(os.path.join(out, "latest.npz")) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.01)
        victim = rank_pid(out, 1)
        assert victim, "rank 1 of the run is not among the processes"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        status = process.wait(timeout=DEAD_RANK_LIMIT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert status != 0 and time.monotonic() - killed_at < DEAD_RANK_LIMIT
    interrupted_at = load_checkpoint(os.path.join(out, "latest.npz"))["epoch"]
    assert 1 <= interrupted_at < 4, "the kill must land before the run ends"

    result = run_train(cohort, out, 2, "--epochs", "4", "--resume", "latest")
    assert f"resuming {os.path.join(out, 'latest.npz')}: {interrupted_at} of 4 epochs done" in result.stdout
    assert_same_run(reference, out)


DISTRIBUTED_SCRIPT = """
import sys, time
import numpy as np
from mpi4py import MPI
from mri2ct.common import errors
from mri2ct.common.distributed import MPIWorld
world = MPIWorld(MPI.COMM_WORLD, wait_limit=2.0)
with world.stop_all_on_error():
    if sys.argv[1] == "checksum":
        world.check_identical([np.full(3, float(world.rank == 1), np.float32)], "after epoch 7")
    elif world.rank == 1:
        time.sleep(60)            # alive but silent: rank 0 must give up after its wait limit
    else:
        world.sum_arrays([np.ones(4, np.float32)])
"""


@pytest.mark.parametrize("case, message", [
    ("checksum", "error: the ranks hold different parameters after epoch 7 (rank 1 differs from rank 0)"),
    ("silent rank", "error: rank 0 of 2 waited 2 s for the others at the gradient sum: one of them has died or "
                    "hangs; stopping the job")])
def test_diverged_or_silent_ranks_stop_the_job(case, message):
    start = time.monotonic()
    result = run([mpiexec(), "-n", "2", sys.executable, "-c", DISTRIBUTED_SCRIPT, case])
    assert result.returncode == 1 and time.monotonic() - start < 30
    assert message in result.stderr and "Traceback" not in result.stderr


def test_one_process_needs_no_mpi_and_a_mismatched_mpi_is_one_line():
    """A plain run never imports mpi4py. A launcher that says 2 processes where MPI sees 1 (mpi4py
    built for another MPI library) is refused before anything runs."""
    environment = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    check = "import sys; from mri2ct import infer, train; from mri2ct.common import distributed; " \
            "distributed.world(); assert 'mpi4py' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check], env=environment, timeout=TIMEOUT).returncode == 0
    result = subprocess.run([sys.executable, "-m", "mri2ct.train", "--data", "nowhere"], capture_output=True,
                            text=True, env=dict(environment, OMPI_COMM_WORLD_SIZE="2"), timeout=TIMEOUT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the launcher started 2 processes (OMPI_COMM_WORLD_SIZE) but MPI sees 1: mpi4py was built for "
        "another MPI library than this launcher's (see python -c 'from mpi4py import MPI; "
        "print(MPI.Get_library_version())')"]


def test_cohort_inference_over_ranks(cohort, runs, tmp_path):
    """`mpiexec -n 2 python -m mri2ct.infer --input-dir`: each scan written once, bit for bit as one
    process writes it; the bad file is reported by its rank and skipped, the rest predicted."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for patient in read_manifest(cohort)["split"]["test"] + read_manifest(cohort)["split"]["val"]:
        shutil.copy(os.path.join(cohort, patient, "mr.nii.gz"), scans / f"{patient}.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    checkpoint = os.path.join(runs[2][1], "final.npz")
    outputs = {}
    for ranks in (1, 2):
        launcher = [mpiexec(), "-n", str(ranks)] if ranks > 1 else []
        out = tmp_path / f"sct{ranks}"
        result = run([*launcher, sys.executable, "-m", "mri2ct.infer", "--checkpoint", checkpoint, "--input-dir",
                      str(scans), "--output-dir", str(out), "--threads", "1"])
        assert result.returncode == 2
        (line,) = [line for line in result.stderr.splitlines() if "broken.nii.gz" in line]
        assert line.startswith(f"error: input MR {scans / 'broken.nii.gz'}: not a readable NIfTI file")
        assert line.endswith("(skipped)")
        assert result.stdout.strip().splitlines()[-1] == (
            f"4 of 5 scans predicted into {out}{' on 2 ranks' if ranks > 1 else ''}, 0 kept, 1 skipped: broken.nii.gz")
        outputs[ranks] = {name: nib.load(out / name).get_fdata() for name in sorted(os.listdir(out))}
    assert len(outputs[1]) == 4 and outputs[1].keys() == outputs[2].keys()
    for name, volume in outputs[1].items():
        np.testing.assert_array_equal(outputs[2][name], volume, err_msg=name)
