"""The command-line flags of every command: one parser, the types that check each value, and the
flags several commands share, defined once so they read alike everywhere.

    parser = flags.Parser(prog="python -m mri2ct.train", description="...")
    parser.add_argument("--lr", type=flags.number(0, 1, low_open=True), default=1e-4)
    parser.add_argument("--patch", type=flags.multiple_of(8, at_least=16))

Every value is checked when the flags are read, and a bad one is one line naming its flag, exit
status 2, before any work: "error: argument --lr: must be a finite number in (0, 1], got inf".
"""
import argparse
import math
import sys

from mri2ct.common.errors import USAGE_ERROR


class Parser(argparse.ArgumentParser):
    """argparse's parser with the one-line error of every command (common/errors.py) instead of
    the usage block; `--help` shows the usage."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def integer(low=None, high=None):
    """An argparse type: an int in [low, high] (either bound may be None: unbounded)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bounds_text(low, high)}, got {value}")
        return value
    return parse


def bounds_text(low, high):
    """'at least 1', 'at most 9' or 'between 1 and 9': the range of `integer` in its message."""
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"between {low} and {high}"


def number(low, high, low_open=False):
    """An argparse type: a finite float in [low, high], or (low, high] with low_open (nan, inf and
    overflowing values are refused)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {'(' if low_open else '['}{low:g}, {high:g}], got {text}")
        return value
    return parse


def multiple_of(factor, at_least):
    """An argparse type: an int that is a multiple of `factor` and at least `at_least`."""
    def parse(text):
        value = integer()(text)
        if value < at_least or value % factor:
            raise argparse.ArgumentTypeError(f"must be a multiple of {factor} of at least {at_least}, "
                                             f"got {value}")
        return value
    return parse


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
SEED = integer(0, 2**32 - 1)            # numpy refuses negative seeds; 32 bits are plenty


def add_threads_argument(parser, note=""):
    """The shared --threads flag (Numba threads; nn3d.set_num_threads(args.threads) applies it), at
    most Numba's thread count (the cores, or $NUMBA_NUM_THREADS)."""
    import numba          # here, not above: the commands without --threads do not need it
    most = numba.config.NUMBA_NUM_THREADS
    parser.add_argument("--threads", type=integer(1, most), default=None,
                        help=f"Numba threads, 1 to {most} (default: all cores)" + (f"; {note}" if note else ""))


def add_cache_argument(parser):
    """The shared --cache flag: where preprocessed scans are kept (mri2ct/data/preprocess.py)."""
    parser.add_argument("--cache", metavar="DIR",
                        help="folder for the preprocessed scans (default: $MRI2CT_CACHE or ~/.cache/mri2ct)")


def add_seed_argument(parser, help):
    """The shared --seed flag: a non-negative 32-bit integer."""
    parser.add_argument("--seed", type=SEED, default=0, help=help)
