"""The command-line flags several commands share, defined once so they read alike everywhere."""


def add_threads_argument(parser, note=""):
    """The shared --threads flag (Numba threads; nn3d.set_num_threads(args.threads) applies it)."""
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba threads (default: all cores)" + (f"; {note}" if note else ""))


def add_cache_argument(parser):
    """The shared --cache flag: where preprocessed scans are kept (mri2ct/data/preprocess.py)."""
    parser.add_argument("--cache", metavar="DIR",
                        help="folder for the preprocessed scans (default: $MRI2CT_CACHE or ~/.cache/mri2ct)")
