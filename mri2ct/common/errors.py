"""How the commands end: every failure the user can cause is one line, never a traceback.

Each tool has a `main(argv=None)` that parses its flags and does the work, raising exceptions, and
ends with

    if __name__ == "__main__":
        errors.run(main)

`run` turns what reaches it into one line on stderr and an exit status:

    ValueError, OSError (bad files, missing folders,      "error: <message>"          exit 2, as bad flags
      mismatched checkpoints, FileNotFoundError, ...)                                  (common/flags.py)
    RunError (the run cannot go on: the folder is in      "error: <message>"          exit 1
      use, the model produced NaN, ...)
    a full disk or quota (OSError ENOSPC, EDQUOT)         "error: <file>: no space    exit 1
                                                            left on device ..."
    MemoryError                                           "error: out of memory ..."  exit 1
    Ctrl-C (SIGINT, or a KeyboardInterrupt raised)        "interrupted"               exit 130 (128 + SIGINT)
    kill, a scheduler's stop (SIGTERM)                    "terminated"                exit 143 (128 + SIGTERM)

Anything else is a bug and keeps its traceback. A signal ends the process at once, and with it the
worker processes it started (multiprocessing's, which say nothing themselves: one line).
"""
import ctypes
import errno
import multiprocessing
import os
import signal
import sys
import threading

USAGE_ERROR = 2
RUN_ERROR = 1
INTERRUPTED = 130
# The signals that end a command: its line and its exit status (128 + the signal's number).
EXIT_SIGNALS = {signal.SIGINT: ("interrupted", INTERRUPTED),
                signal.SIGTERM: ("terminated", 128 + signal.SIGTERM)}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside the code (not a bug): one line, exit status 1."""


def exit_on_signal(signal_number, frame):
    """SIGINT and SIGTERM handler: end the process at once, as kill does, with the signal's line and
    status. A KeyboardInterrupt raised at an arbitrary bytecode can land in a finaliser or a ctypes
    callback (Numba compiling), where Python prints it and carries on; exiting here cannot be
    swallowed. Nothing is lost: every file is written atomically, the folder lock is released by the
    kernel, and the next write removes the temporary file a write in progress leaves (atomic.py).
    The worker processes of a multiprocessing Pool are killed here, and they keep quiet themselves
    (quiet_worker_signals), so a Ctrl-C to the whole process group prints one line, the parent's."""
    line, status = EXIT_SIGNALS[signal_number]
    for child in multiprocessing.active_children():
        child.kill()
    os.write(sys.stderr.fileno(), f"\n{line}\n".encode())   # after any progress bar
    os._exit(status)


PR_SET_PDEATHSIG = 1        # Linux prctl(2): the signal a process gets when its parent ends


def quiet_worker_signals():
    """In a worker process (a Pool's initializer): ignore Ctrl-C, which a terminal sends to the
    parent too, and let SIGTERM end the worker without a word (Pool.terminate sends it); the parent
    prints the one line and ends its workers (exit_on_signal). On Linux the worker is also killed
    when its parent ends: a Pool replaces a killed worker from a thread of its own, and a
    replacement forked while the parent exits would otherwise run on alone and print a broken pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:   # the parent ended before the prctl
            os._exit(0)


def run(main, argv=None):
    """Call main(argv); return its result, or exit with one line on stderr (see the module docstring)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        previous = {number: signal.signal(number, exit_on_signal) for number in EXIT_SIGNALS}
    try:
        return main(argv)
    except (KeyboardInterrupt, ValueError, OSError, RunError, MemoryError) as error:
        raise SystemExit(report(error)) from None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def report(error):
    """Print the one line of an error the user can cause (the table of the module docstring) and
    return its exit status; None for anything else (a bug), printing nothing."""
    if isinstance(error, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        print(f"error: {disk_full_message(error)}", file=sys.stderr)
        return RUN_ERROR
    if isinstance(error, (ValueError, OSError)):
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if isinstance(error, RunError):
        print(f"error: {error}", file=sys.stderr)
        return RUN_ERROR
    if isinstance(error, MemoryError):
        print("error: out of memory (try a smaller input or fewer --threads)", file=sys.stderr)
        return RUN_ERROR
    return None


def disk_full_message(error):
    """'<file>: no space left on device ...' for an OSError ENOSPC or EDQUOT (its filename: the file
    being written, which common/atomic.py attaches)."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{os.strerror(error.errno).lower()}; free some space (or write elsewhere) and run again"
