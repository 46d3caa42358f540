"""What the command-line tools share: a problem with the user's input is one line, not a traceback.

    with exit_on_user_error():
        run(args)

Bad files, missing folders and mismatched checkpoints raise ValueError or OSError (FileNotFoundError,
...) with a message naming the file and the problem; the tool prints `error: <message>` to stderr and
exits with status 2, as argparse does for bad flags.
"""
import contextlib
import sys

USAGE_ERROR = 2


@contextlib.contextmanager
def exit_on_user_error():
    try:
        yield
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
