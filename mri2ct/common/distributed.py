"""Data parallelism over MPI: which process this is, and the few collective operations that training
and cohort inference need.

    world = distributed.world()      # OneProcess(), or MPIWorld when started by mpiexec / srun
    world.size, world.rank           # N processes ("ranks"), this one's number 0..N-1
    world.share(count)               # the items of this rank: rank, rank + N, ... < count
    world.sum_arrays(arrays)         # every rank's arrays summed, in place: one allreduce of one
                                     # flat float32 buffer (the gradients of a step)
    world.sum(array)                 # one contiguous array summed in place (epoch-level numbers)
    world.broadcast(value)           # rank 0's value on every rank (the starting state)
    world.collect(value)             # [every rank's value] on every rank
    world.barrier()                  # wait until every rank is here
    world.check_identical(arrays, moment)   # RunError if the ranks hold different arrays
    with world.stop_all_on_error():  # an error on one rank ends the whole job
        ...

In one process (a plain `python -m mri2ct.train`) every operation is the identity and mpi4py is
never imported: MPI is needed only when a launcher started several processes. A launcher announces
itself in the environment of the processes it starts (LAUNCHER_VARIABLES: MPICH's and Intel MPI's
hydra set PMI_SIZE, Open MPI OMPI_COMM_WORLD_SIZE, Slurm's srun SLURM_STEP_NUM_TASKS, a PMIx
launcher PMIX_RANK); only then is mpi4py imported (`pip install -e '.[mpi]'` brings it with a pip
MPI). If the launcher says N processes and MPI sees another number, mpi4py was built for another MPI
library than the launcher's, and every process would train alone into the same folder: a RunError.

Failures. A Python error on one rank would leave the others waiting forever in their next
collective, so under MPI `stop_all_on_error` prints the error's one line (errors.report) and calls
MPI_Abort, which ends every rank (MPICH adds a line of its own naming the rank). A rank killed
outright (kill -9, out of memory) is noticed by the launcher, which ends the others (hydra, Open
MPI's mpirun and srun all do). In case a launcher does not, no rank waits in a collective for more
than WAIT_LIMIT_SECONDS, then it stops the job. The per-step gradient sum is a blocking Allreduce
(MPICH's non-blocking Iallreduce took 3x as long for this buffer, 19 against 6 ms on 2 ranks here),
watched by a thread that calls MPI_Abort when it lasts too long. The epoch-level waits are started
non-blocking and polled with a sleep between polls, so that a rank waiting while rank 0 writes
checkpoints leaves the cores to the others, and raise RunError when they last too long. Only the
start waits without a limit: rank 0 may spend hours preprocessing a large data set first.
"""
import contextlib
import hashlib
import os
import sys
import threading
import time
import traceback
import warnings

import numpy as np

from mri2ct.common import errors
from mri2ct.common.errors import RunError

# Environment variables by which launchers tell a process it is one of several; those with a size.
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "MV2_COMM_WORLD_SIZE",
                      "PMIX_RANK")
SIZE_VARIABLES = LAUNCHER_VARIABLES[:-1]
WAIT_LIMIT_SECONDS = 600.0      # longest legitimate wait in a collective: a slow rank's step or validation
EPOCH_POLL_SECONDS = 0.01       # sleep between polls in epoch-level waits
WATCHDOG_PERIOD_SECONDS = 0.5   # how often the watchdog looks at the gradient sum


def launcher_size():
    """(variable, N) of the first launcher variable set in the environment, N None for PMIX_RANK
    (no size); None when no launcher started this process."""
    for name in LAUNCHER_VARIABLES:
        value = os.environ.get(name)
        if value:
            return name, (int(value) if name in SIZE_VARIABLES else None)
    return None


def world():
    """OneProcess(), or MPIWorld(MPI.COMM_WORLD) when a launcher started more than one process."""
    launcher = launcher_size()
    if launcher is None or launcher[1] == 1:
        return OneProcess()
    name, size = launcher
    try:
        with warnings.catch_warnings():       # mpi4py's own multi-line warning about a mismatch: ours is below
            warnings.simplefilter("ignore", RuntimeWarning)
            from mpi4py import MPI
    except ImportError:
        raise RunError(f"started by an MPI launcher ({name}={os.environ[name]}) but mpi4py is not installed: "
                       f"pip install -e '.[mpi]'") from None
    communicator = MPI.COMM_WORLD
    if size is not None and communicator.Get_size() != size:
        raise RunError(f"the launcher started {size} processes ({name}) but MPI sees {communicator.Get_size()}: "
                       f"mpi4py was built for another MPI library than this launcher's (see "
                       f"python -c 'from mpi4py import MPI; print(MPI.Get_library_version())')")
    return OneProcess() if communicator.Get_size() == 1 else MPIWorld(communicator)


def checksum(arrays):
    """Hex digest of the bytes of `arrays` (any dtypes), in order."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return digest.hexdigest()


class OneProcess:
    """The world of a plain `python -m ...`: one rank, and every collective is the identity."""
    size = 1
    rank = 0
    is_root = True

    def share(self, count):
        return range(count)

    def sum_arrays(self, arrays):
        return arrays

    def sum(self, array):
        return array

    def broadcast(self, value):
        return value

    def barrier(self, limit=None):
        pass

    def collect(self, value, limit=None):
        return [value]

    def check_identical(self, arrays, moment):
        pass

    def default_threads(self):
        """None: all cores (nn3d.set_num_threads)."""
        return None

    def stop_all_on_error(self):
        return contextlib.nullcontext()


class MPIWorld:
    """The processes an MPI launcher started, over an mpi4py communicator (see the module docstring)."""

    def __init__(self, communicator, wait_limit=WAIT_LIMIT_SECONDS):
        from mpi4py import MPI
        self.MPI = MPI
        self.communicator = communicator
        self.size = communicator.Get_size()
        self.rank = communicator.Get_rank()
        self.is_root = self.rank == 0
        self.wait_limit = wait_limit
        self.local_size = communicator.Split_type(MPI.COMM_TYPE_SHARED).Get_size()   # ranks on this machine
        self._flat = None                  # the preallocated float32 buffer of sum_arrays
        self._watched = None               # (what, deadline) of the blocking collective under way
        self._watchdog = None

    def share(self, count):
        return range(self.rank, count, self.size)

    def sum_arrays(self, arrays):
        """Sum each array over the ranks, in place: pack all into one contiguous float32 buffer,
        one allreduce, unpack. Returns `arrays`."""
        total = sum(array.size for array in arrays)
        if self._flat is None or self._flat.size != total:
            self._flat = np.empty(total, np.float32)
        offset = 0
        for array in arrays:                                       # pack
            self._flat[offset:offset + array.size] = array.reshape(-1)
            offset += array.size
        with self._watch("the gradient sum"):
            self.communicator.Allreduce(self.MPI.IN_PLACE, self._flat, op=self.MPI.SUM)
        offset = 0
        for array in arrays:                                       # unpack
            array[...] = self._flat[offset:offset + array.size].reshape(array.shape)
            offset += array.size
        return arrays

    def sum(self, array):
        """Sum one contiguous array (any dtype) over the ranks, in place; returns it."""
        request = self.communicator.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        self._wait(request, "a sum over the ranks", EPOCH_POLL_SECONDS, self.wait_limit)
        return array

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every rank. Waits without a limit: the start."""
        self.barrier(limit=None)
        return self.communicator.bcast(value, root=0)

    def barrier(self, limit=WAIT_LIMIT_SECONDS):
        self._wait(self.communicator.Ibarrier(), "a barrier", EPOCH_POLL_SECONDS, limit)

    def collect(self, value, limit=WAIT_LIMIT_SECONDS):
        """[rank 0's value, rank 1's, ...] (picklable values) on every rank."""
        self.barrier(limit)
        return self.communicator.allgather(value)

    def check_identical(self, arrays, moment):
        """RunError on every rank if the ranks' `arrays` are not bit for bit the same."""
        digests = self.collect(checksum(arrays))
        differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differing:
            raise RunError(f"the ranks hold different parameters {moment} (rank {differing[0]} differs from "
                           f"rank 0): the data-parallel run has diverged and stops; its last checkpoint is "
                           f"the one before")

    def default_threads(self):
        """The cores of this machine shared among its ranks (at least 1 each)."""
        import numba
        return max(1, numba.config.NUMBA_NUM_THREADS // self.local_size)

    @contextlib.contextmanager
    def stop_all_on_error(self):
        """Inside the block, an exception on this rank prints its one line (or its traceback, for a
        bug) and ends every rank with MPI_Abort, with the exit status errors.run would give."""
        try:
            yield
        except BaseException as error:       # noqa: B036 - any way out of this rank must end the job
            status = errors.report(error)
            if status is None:
                status = error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1
                if not isinstance(error, SystemExit):
                    traceback.print_exc()
            if status == 0:
                raise
            sys.stdout.flush()
            sys.stderr.flush()
            self.communicator.Abort(status)

    def _too_long(self, what, limit):
        return (f"rank {self.rank} of {self.size} waited {limit:.0f} s for the others at {what}: one of them "
                f"has died or hangs; stopping the job")

    def _wait(self, request, what, poll_seconds, limit):
        """Poll `request` until it completes; RunError after `limit` seconds (None: no limit)."""
        deadline = None if limit is None else time.monotonic() + limit
        while not request.Test():
            if deadline is not None and time.monotonic() > deadline:
                raise RunError(self._too_long(what, limit))
            time.sleep(poll_seconds)

    @contextlib.contextmanager
    def _watch(self, what):
        """Inside the block (a blocking collective, which releases the GIL), the watchdog thread ends
        the job if the block lasts more than wait_limit seconds."""
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch_loop, name="mpi-watchdog", daemon=True)
            self._watchdog.start()
        self._watched = (what, time.monotonic() + self.wait_limit)
        try:
            yield
        finally:
            self._watched = None

    def _watch_loop(self):
        while True:
            time.sleep(WATCHDOG_PERIOD_SECONDS)
            watched = self._watched
            if watched is not None and time.monotonic() > watched[1]:
                print(f"error: {self._too_long(watched[0], self.wait_limit)}", file=sys.stderr, flush=True)
                self.communicator.Abort(errors.RUN_ERROR)
