"""One owner per run folder: an exclusive lock on `<folder>/.lock`, held for the whole run.

    with lock_folder("checkpoints/run"):
        ...train, writing into the folder...

The lock is `fcntl.flock` on an open file. The kernel releases it when the file is closed, which
happens when the process ends in any way (exit, exception, Ctrl-C, kill -9), so a dead run never
leaves a stale lock behind and no one ever has to delete `.lock` by hand. A second process asking for
the same folder gets RunError at once instead of waiting: two trainers writing one folder would end
with best.npz from one run and latest.npz from the other. (flock is POSIX; on network file systems
it is only as reliable as the file system's own locking.)
"""
import contextlib
import fcntl
import os

from mri2ct.common.errors import RunError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def lock_folder(folder):
    """Create `folder` if needed and hold its lock inside the block; RunError if another process has it,
    ValueError if `folder` is a file."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"--out {folder}: exists and is not a folder; choose a folder for the run")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{folder} is in use by another run (it holds the lock {LOCK_FILE}); wait for "
                           f"it to finish or choose another --out") from None
        yield
