"""What every stage and command shares; it imports nothing else of mri2ct.

    errors.py        the one-line errors and exit statuses of every command, and `run(main)`
    flags.py         the command-line flags several commands share (--threads, --cache)
    atomic.py        files written whole or not at all (temporary file + rename)
    distributed.py   the ranks an MPI launcher started, or one process alone
    drawing.py       radiological slices, the CT window and picture files for every figure
"""
