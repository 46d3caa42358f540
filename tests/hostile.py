"""The harness of the hostile-input suites (tests/test_hostile_*.py): a table of cases, each a command
as a careless or hostile user types it, the exit status it must end with, what its one line on stderr
must say, and which files must be byte-for-byte unchanged afterwards.

    Case("rgb24 MR to infer",
         ["mri2ct.infer", "--checkpoint", "{checkpoint}", "--input", "{case}/rgb.nii.gz",
          "--output", "{case}/sct.nii.gz"],
         exit=2, says=r"rgb\\.nii\\.gz.*RGB", unchanged=["{case}/rgb.nii.gz"], absent=["{case}/sct.nii.gz"],
         setup=write_rgb24)

`{case}` is the case's own empty folder; `setup(folder, files)` writes what the case needs into it and
may add names for the command's template (`files` holds the shared ones, e.g. `{checkpoint}`, made
once per session by the suite's fixtures). A case runs in-process (the module's `main` through
mri2ct.common.errors.run, as `python -m` would: fast, no interpreter start-up per case) unless
`process=True`, which runs `python -m` in a subprocess (signals, memory limits, process groups).
A case with `signal=(number, glob)` runs in a subprocess of its own process group and gets the signal
once a file matches `glob` (templated), sent to the whole group as a terminal's Ctrl-C is (or with
`signal_group=False` to the command's process alone, as `kill PID` does); then no process of the
group may be left.
"""
import contextlib
import glob
import hashlib
import importlib
import io
import os
import re
import signal as signals
import subprocess
import sys
import time
from dataclasses import dataclass, field

from mri2ct.common import errors


@dataclass
class Case:
    name: str
    command: list                       # ["mri2ct.X", flags...]: the module and its argv, templated
    exit: int                           # the exit status it must end with (0, 1, 2, 130, 143)
    says: str = ""                      # a regex the stderr line must match (the file or flag and the cause);
                                        # with exit 0, a regex some stderr line (a warning) must match
    unchanged: list = field(default_factory=list)   # paths whose bytes must not change
    absent: list = field(default_factory=list)      # paths that must not exist afterwards
    present: list = field(default_factory=list)     # paths that must exist afterwards (e.g. the other scans' outputs)
    setup: object = None                # setup(folder, files) -> dict of extra template names, or None
    process: bool = False               # run `python -m` in a subprocess
    timeout: float = 300
    signal: tuple = None                # (signal number, glob): send it to the process group once the glob matches
    signal_group: bool = True           # False: send it to the command's process alone
    after: object = None                # after(names): more assertions once the command has ended

    def __str__(self):
        return self.name


def fingerprint(path):
    """The bytes of a file (sha256), or of every file below a folder, or None if it does not exist."""
    if os.path.isdir(path):
        return {os.path.relpath(os.path.join(root, name), path): fingerprint(os.path.join(root, name))
                for root, _, names in os.walk(path) for name in names}
    if not os.path.exists(path):
        return None
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def run_in_process(module, argv):
    """(exit status, stderr) of `python -m module argv...` run in this process."""
    main = importlib.import_module(module if not module.endswith(".data") else module + ".__main__").main
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            errors.run(main, argv)
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return status, stderr.getvalue()


def run_in_subprocess(module, argv, timeout):
    result = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    return result.returncode, result.stderr


def group_members(group):
    """Ids of the live processes of process group `group` (zombies excluded)."""
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(pid))
    return members


def run_and_signal(module, argv, number, pattern, group, timeout):
    """(exit status, stderr) of `python -m module argv...` in a new process group, sent signal
    `number` (to the group, or to the process alone) once a file matches `pattern`; asserts that the
    group is empty after."""
    process = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    while not glob.glob(pattern) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"{module} ended before {pattern} appeared:\n{process.stderr.read()}"
    (os.killpg if group else os.kill)(process.pid, number)
    _, stderr = process.communicate(timeout=timeout)
    time.sleep(0.2)
    left = group_members(process.pid)
    for pid in left:
        os.kill(pid, signals.SIGKILL)
    assert not left, f"{module}: processes {left} of its group outlived it"
    return process.returncode, stderr


def check_case(case, folder, files):
    """Run `case` in `folder` (empty) with the shared `files` and assert everything it promises."""
    names = dict(files, case=str(folder))
    if case.setup is not None:
        names.update(case.setup(str(folder), names) or {})
    module, *argv = [part.format(**names) for part in case.command]
    watched = {path.format(**names): None for path in case.unchanged}
    for path in watched:
        watched[path] = fingerprint(path)
    if case.signal:
        number, pattern = case.signal
        status, stderr = run_and_signal(module, argv, number, pattern.format(**names), case.signal_group,
                                        case.timeout)
    elif case.process:
        status, stderr = run_in_subprocess(module, argv, case.timeout)
    else:
        status, stderr = run_in_process(module, argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == case.exit, f"{case.name}: exit {status}, expected {case.exit}; stderr:\n{stderr}"
    if case.exit != 0:
        assert "Traceback" not in stderr, f"{case.name}: a traceback:\n{stderr}"
        error_lines = [line for line in lines if line.startswith(("error:", "interrupted", "terminated"))]
        assert len(error_lines) == 1, f"{case.name}: expected one error line, got:\n{stderr}"
        assert re.search(case.says, error_lines[0]), \
            f"{case.name}: {error_lines[0]!r} does not match {case.says!r}"
    elif case.says:
        assert any(re.search(case.says, line) for line in lines), \
            f"{case.name}: no stderr line matches {case.says!r}:\n{stderr}"
    for path, before in watched.items():
        assert fingerprint(path) == before, f"{case.name}: {path} changed"
    for path in case.absent:
        assert not os.path.exists(path.format(**names)), f"{case.name}: {path.format(**names)} was written"
    for path in case.present:
        assert os.path.exists(path.format(**names)), f"{case.name}: {path.format(**names)} is missing"
    if case.after is not None:
        case.after(names)
