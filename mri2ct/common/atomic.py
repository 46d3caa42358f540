"""Atomic file writes: a reader (or a crash) never sees a half-written file.

The file is written under a temporary name in the same folder, flushed to disk, then renamed over the
target with `os.replace`, which is atomic on POSIX and Windows when both names are on one filesystem.
A process killed at any moment leaves either the old file or the new one, plus at worst a stray
temporary file, never a truncated checkpoint. The temporary's name holds the writer's process id,
`.<name>.<pid>.<random>.tmp-<name>`, so the next atomic write into that folder can tell a stray
(its process is gone) from a file another live process is still writing, and deletes the strays.

    with atomic_path("run/latest.npz") as temporary:
        write_something(temporary)            # renamed to run/latest.npz only if this succeeds

A write that fails for want of space (ENOSPC, EDQUOT) is reported under the target's name, whatever
the writer's own error named (often nothing), so the one line of common/errors.py names the file.
Files and folders made here get the permissions the umask gives (tempfile's are private: 0600, 0700).
"""
import contextlib
import os
import re
import tempfile

from mri2ct.common.errors import DISK_FULL

TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp-(?P=name)")


def process_alive(pid):
    """True if a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by another user
        return True
    return True


def remove_stray_temporaries(folder):
    """Delete the temporaries that killed writers left in `folder`; returns their names."""
    removed = []
    for name in os.listdir(folder):
        match = TEMPORARY.fullmatch(name)
        if match and not process_alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success rename it to `path`, on error delete it.

    The temporary name keeps `path`'s suffixes (e.g. `.nii.gz`), since some writers choose the
    format from the file name.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stray_temporaries(folder)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=f".tmp-{name}",
                                             dir=folder)
    os.close(descriptor)
    os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp creates 0600; give the usual permissions
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise OSError(error.errno, os.strerror(error.errno), path) from None
        raise


def current_umask():
    """The process's umask (read by setting it and putting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_temporary_folder(parent, prefix):
    """A new empty folder in `parent` (tempfile.mkdtemp) with the permissions the umask gives a
    folder (mkdtemp's are 0700), for a folder built under a temporary name and renamed when complete."""
    folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(folder, 0o777 & ~current_umask())
    return folder


def write_text(path, text):
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
