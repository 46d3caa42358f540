"""nn3d.warm_up: after it, the U-Net's training step and its eval forward need no kernel signature
it did not already load or compile (so the first step of a cold run waits for no further
compilation); its shares cover every task once and balance; an interrupted warm-up leaves no worker.

The check runs in a fresh process (in this one, earlier tests have loaded kernels already) and
counts the compiled signatures of every Numba dispatcher in nn3d before and after a 64^3 step and
a sliding-window prediction. Counting signatures, not "numba:compile" events, also catches a
signature the warm-up missed but the cache (filled by the rest of the suite) holds: loading it
announces nothing. With a warm cache the warm-up only loads, and starts no worker process.
"""
import os
import subprocess
import sys

import pytest

from nn3d import warm_up

PROBE = '''
import sys
import numpy as np
from numba.core.dispatcher import Dispatcher

import nn3d
from nn3d.warm_up import warm_up
from mri2ct.inference.sliding_window import predict_sliding_window
from mri2ct.model import UNet3D
from mri2ct.training.step import train_step


def signatures():
    """{module.name: its compiled signatures} for every Numba dispatcher in nn3d's loaded modules."""
    return {f"{name}.{attribute}": {str(s) for s in value.signatures}
            for name, module in list(sys.modules.items()) if name.split(".")[0] == "nn3d"
            for attribute, value in vars(module).items() if isinstance(value, Dispatcher)}


warm_up(np.float32, processes=1)                           # what the trainer runs before its first step
before = signatures()
nn3d.manual_seed(0)
model = UNet3D()
criterion = nn3d.MSELoss()
optimizer = nn3d.AdamW(model.parameters(), lr=1e-4)
scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=2)
rng = np.random.default_rng(0)
x, target = (rng.standard_normal((1, 1, 64, 64, 64)).astype(np.float32) for _ in range(2))
train_step(model, criterion, optimizer, scheduler, x, target, 1.0)
after = signatures()
for name in sorted(after):
    for signature in sorted(after[name] - before.get(name, set())):
        print("NEW in the step", name, signature)
before = signatures()
model.eval()
predict_sliding_window(model, x[0, 0], (64, 64, 64))
after = signatures()
for name in sorted(after):
    for signature in sorted(after[name] - before.get(name, set())):
        print("NEW in the prediction", name, signature)
'''


def test_unet_step_and_eval_need_nothing_the_warm_up_did_not_compile():
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [repository, *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment,
                            timeout=1200)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("NEW")] == []
    assert "NEW" not in result.stdout


@pytest.mark.parametrize("processes", [1, 2, 3, 7])
def test_shares_hold_every_task_once(processes):
    parts = warm_up.shares(processes)
    assert sorted(name for names in parts for name in names) == sorted(warm_up.TASKS)
    assert 1 <= len(parts) <= processes
    longest = max(warm_up.TASKS, key=warm_up.COMPILE_SECONDS.get)
    assert longest in parts[0]                              # this process's share


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_two_shares_are_balanced(isa, monkeypatch):
    monkeypatch.setattr(warm_up, "COMPILE_SECONDS", warm_up.COMPILE_SECONDS_BY_ISA[isa])
    loads = [sum(warm_up.COMPILE_SECONDS[name] for name in names) for names in warm_up.shares(2)]
    assert max(loads) <= 1.2 * min(loads)


def test_an_interrupted_warm_up_leaves_no_worker_running(monkeypatch):
    """Ctrl-C or SIGTERM (the trainer raises) while this process compiles its share: the workers it
    started are killed, not left compiling after the trainer has gone."""
    import numba

    started = []

    def sleeping_worker(names, dtype):
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return started[-1]

    def compile_then_interrupt(names, dtype):
        numba.njit(lambda value: value + 1)(1)            # a compilation: the listener starts the workers
        raise KeyboardInterrupt

    monkeypatch.setattr(warm_up, "start_worker", sleeping_worker)
    monkeypatch.setattr(warm_up, "run_tasks", compile_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        warm_up.warm_up(processes=2)
    assert len(started) == 1
    assert started[0].poll() is not None                 # killed and reaped
