"""How the commands end: every failure the user can cause is one line, never a traceback.

Each tool has a `main(argv=None)` that parses its flags and does the work, raising exceptions, and
ends with

    if __name__ == "__main__":
        errors.run(main)

`run` turns what reaches it into one line on stderr and an exit status:

    ValueError, OSError (bad files, missing folders,      "error: <message>"          exit 2, as argparse
      mismatched checkpoints, FileNotFoundError, ...)                                  does for bad flags
    RunError (the run cannot go on: the folder is in      "error: <message>"          exit 1
      use, the model produced NaN, ...)
    MemoryError                                           "error: out of memory ..."  exit 1
    Ctrl-C (SIGINT, or a KeyboardInterrupt raised)        "interrupted"               exit 130 (128 + SIGINT)

Anything else is a bug and keeps its traceback.
"""
import os
import signal
import sys
import threading

USAGE_ERROR = 2
RUN_ERROR = 1
INTERRUPTED = 130


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside the code (not a bug): one line, exit status 1."""


def exit_on_sigint(signal_number, frame):
    """SIGINT handler: end the process at once, as kill does. A KeyboardInterrupt raised at an
    arbitrary bytecode can land in a finaliser or a ctypes callback (Numba compiling), where Python
    prints it and carries on; exiting here cannot be swallowed. Nothing is lost: every file is
    written atomically, the folder lock is released by the kernel, and the next write removes the
    temporary file a write in progress leaves (atomic.py)."""
    os.write(sys.stderr.fileno(), b"\ninterrupted\n")      # async-signal-safe, after any progress bar
    os._exit(INTERRUPTED)


def run(main, argv=None):
    """Call main(argv); return its result, or exit with one line on stderr (see the module docstring)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, exit_on_sigint) if in_main_thread else None
    try:
        return main(argv)
    except (KeyboardInterrupt, ValueError, OSError, RunError, MemoryError) as error:
        raise SystemExit(report(error)) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


def report(error):
    """Print the one line of an error the user can cause (the table of the module docstring) and
    return its exit status; None for anything else (a bug), printing nothing."""
    if isinstance(error, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
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

