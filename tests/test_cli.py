"""What every command shares: errors.run's one-line errors and exit codes (Ctrl-C included), the run-folder
lock, and the removal of temporary files that killed writers left behind."""
import os
import signal
import subprocess
import sys
import time

import pytest

from mri2ct.common import atomic, errors
from mri2ct.training.checkpoint import load_checkpoint
from mri2ct.data import generate_cohort
from mri2ct.training.folder_lock import lock_folder


def exit_of(main, capsys):
    """(exit code, stderr lines) of errors.run(main)."""
    with pytest.raises(SystemExit) as exit_info:
        errors.run(main)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("error, code, line", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (ValueError("x.nii: bad"), 2, "error: x.nii: bad"),
    (FileNotFoundError("x.nii: no such file"), 2, "error: x.nii: no such file"),
    (errors.RunError("run is in use"), 1, "error: run is in use"),
    (MemoryError(), 1, "error: out of memory (try a smaller input or fewer --threads)"),
])
def test_user_errors_and_ctrl_c_are_one_line(error, code, line, capsys):
    def main(argv):
        raise error
    assert exit_of(main, capsys) == (code, [line])


def test_success_returns_and_bugs_keep_their_traceback():
    assert errors.run(lambda argv: argv, ["a"]) == ["a"]
    with pytest.raises(ZeroDivisionError):                     # a bug is not turned into one line
        errors.run(lambda argv: 1 / 0)


def test_ctrl_c_in_a_running_command_exits_130_without_traceback(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group) in the middle of a training run, while
    Numba compiles or runs: the signal handler ends the run, and no KeyboardInterrupt is swallowed."""
    cohort = str(tmp_path / "cohort")
    generate_cohort(cohort, patients=3, seed=0, shape=32, spacing=6.0, workers=1)
    command = [sys.executable, "-m", "mri2ct.train", "--data", cohort, "--out", str(tmp_path / "run"),
               "--features", "4", "8", "16", "32", "--threads", "1", "--epochs", "50"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline().startswith("UNet3D")     # training has started
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
    for name in os.listdir(tmp_path / "run"):                 # whatever was written is whole
        if name.endswith(".npz") and not atomic.TEMPORARY.fullmatch(name):
            load_checkpoint(tmp_path / "run" / name)


def test_cli_run_restores_the_sigint_handler():
    before = signal.getsignal(signal.SIGINT)
    assert errors.run(lambda argv: signal.getsignal(signal.SIGINT)) is errors.exit_on_signal
    assert signal.getsignal(signal.SIGINT) is before


# ---- the run-folder lock ------------------------------------------------------------------------
def test_second_owner_is_refused_naming_the_folder(tmp_path):
    folder = str(tmp_path / "run")
    with lock_folder(folder):
        with pytest.raises(errors.RunError, match=f"{folder} is in use by another run"):
            with lock_folder(folder):
                pass
    with lock_folder(folder):                                  # released when the block ends
        pass


def test_lock_is_released_by_kill_9(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mri2ct.training.folder_lock import "
                               "lock_folder\nwith lock_folder(sys.argv[1]):\n print('locked', flush=True)\n"
                               " time.sleep(600)", folder], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(errors.RunError):
        with lock_folder(folder):
            pass
    holder.kill()                                              # SIGKILL: no clean-up code runs
    holder.wait(timeout=30)
    with lock_folder(folder):                                  # no stale lock
        pass


# ---- stray temporaries --------------------------------------------------------------------------
def test_atomic_write_removes_strays_of_dead_writers_only(tmp_path, dead_pid):
    stray = tmp_path / f".latest.npz.{dead_pid}.k2j4_x9q.tmp-latest.npz"
    live = tmp_path / f".best.npz.{os.getpid()}.abcd1234.tmp-best.npz"    # a writer still at work
    user = tmp_path / ".notes.tmp-mine"                                  # not ours: never touched
    for path in (stray, live, user):
        path.write_bytes(b"")
    atomic.write_text(tmp_path / "history.json", "[]\n")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, user.name, "history.json"])


def test_temporary_names_carry_the_writer_pid(tmp_path):
    with atomic.atomic_path(tmp_path / "sct.nii.gz") as temporary:
        match = atomic.TEMPORARY.fullmatch(os.path.basename(temporary))
        assert match and match["name"] == "sct.nii.gz" and int(match["pid"]) == os.getpid()
        assert temporary.endswith(".nii.gz")                   # writers that pick the format by name
