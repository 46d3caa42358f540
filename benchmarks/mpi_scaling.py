"""Data-parallel training step over MPI: step time, the allreduce's share, and a model of larger runs.

    python -m benchmarks.mpi_scaling --threads 2                    # 1 rank x 2 threads
    mpiexec -n 2 python -m benchmarks.mpi_scaling --threads 1       # 2 ranks x 1 thread
    python -m benchmarks.mpi_scaling --model [--step 0.59]          # the model for 8-64 ranks

Each rank runs the training step of `python -m mri2ct.train` (mri2ct.training.step.accumulated_step,
default U-Net 16-32-64-128, one 64^3 sample per rank, AdamW, clipping) with the gradient sum of
mri2ct/common/distributed.py: one allreduce of one flat float32 buffer. After `--warmup` steps, `--steps`
steps are timed: the whole step, and the time spent in the gradient sum (which includes waiting for
the slowest rank). Then the allreduce alone is timed after a barrier (communication only). Medians;
rank 0 prints them and writes benchmarks/results/mpi_scaling_<ranks>x<threads>.json.

The model (--model): a ring allreduce of S bytes over N ranks sends and receives 2 (N - 1) / N x S
bytes per rank in 2 (N - 1) messages, so at a link bandwidth of L bit/s and a per-message latency a,
    t_allreduce = 2 (N - 1) / N x 8 S / L + 2 (N - 1) a
against the measured step time of one sample per rank; the ranks do not overlap communication with
backward, so the step takes t_step + t_allreduce.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np

from .common import machine_info, write_json

RESULTS = os.path.join(os.path.dirname(__file__), "results")
SIZE = 64
LATENCY_SECONDS = {"TCP over Ethernet": 30e-6, "RDMA (InfiniBand, RoCE)": 3e-6}
LINKS_GBIT = (10, 25, 100)
RANKS = (8, 16, 32, 64)


def measure(steps, warmup):
    """{step, sum, allreduce}: median seconds of this world's training step, of the gradient sum
    inside it, and of the allreduce of the same buffer alone."""
    import nn3d
    from mri2ct.common import distributed
    from mri2ct.model import UNet3D
    from mri2ct.training.step import accumulated_step

    world = distributed.world()
    nn3d.manual_seed(0)
    model = UNet3D().train()
    optimizer = nn3d.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=10 * (steps + warmup), eta_min=1e-6)
    rng = np.random.default_rng(world.rank)
    x, target = (rng.standard_normal((1, 1, SIZE, SIZE, SIZE)).astype(np.float32) for _ in range(2))
    sum_seconds = []

    def timed_sum(arrays):
        start = time.perf_counter()
        world.sum_arrays(arrays)
        sum_seconds.append(time.perf_counter() - start)

    reduce = timed_sum if world.size > 1 else None
    step_seconds = []
    for step in range(warmup + steps):
        world.barrier()
        start = time.perf_counter()
        accumulated_step(model, nn3d.MSELoss(), optimizer, scheduler, [(x, target, 1 / world.size)], 1.0,
                         micro_batch_count=world.size, reduce=reduce)
        step_seconds.append(time.perf_counter() - start)
    alone = []
    gradients = [param.grad for param in model.parameters()]
    for _ in range(steps if world.size > 1 else 0):
        world.barrier()
        start = time.perf_counter()
        world.sum_arrays(gradients)
        alone.append(time.perf_counter() - start)
    median = lambda values: statistics.median(values[-steps:]) if values else 0.0   # noqa: E731
    return world, model, {"step": median(step_seconds), "sum": median(sum_seconds), "allreduce": median(alone)}


def ring_allreduce_seconds(ranks, megabytes, gbit_per_second, latency):
    return 2 * (ranks - 1) / ranks * megabytes * 8e6 / (gbit_per_second * 1e9) + 2 * (ranks - 1) * latency


def print_model(megabytes, step_seconds):
    print(f"ring allreduce of {megabytes:.2f} MB per step against a {step_seconds:.2f} s step "
          f"(one sample per rank); efficiency = step / (step + allreduce)")
    for link, latency in LATENCY_SECONDS.items():
        print(f"\n{link}, {latency * 1e6:.0f} us per message")
        print("ranks | " + " | ".join(f"{gbit} Gbit/s" for gbit in LINKS_GBIT))
        for ranks in RANKS:
            cells = []
            for gbit in LINKS_GBIT:
                seconds = ring_allreduce_seconds(ranks, megabytes, gbit, latency)
                cells.append(f"{seconds * 1e3:5.1f} ms ({step_seconds / (step_seconds + seconds):.1%})")
            print(f"{ranks:5d} | " + " | ".join(cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="Numba threads per rank")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", action="store_true",
                        help="print the results of earlier runs and the scaling model")
    parser.add_argument("--step", type=float, metavar="SECONDS",
                        help="step time of the model (default: the shortest measured one-rank step)")
    args = parser.parse_args()
    if args.model:
        results = []
        for name in sorted(name for name in os.listdir(RESULTS) if name.startswith("mpi_scaling_")):
            with open(os.path.join(RESULTS, name)) as file:
                results.append(json.load(file))
            print(f"{name}: step {results[-1]['step']:.3f} s, gradient sum {results[-1]['sum'] * 1e3:.1f} ms "
                  f"({results[-1]['sum'] / results[-1]['step']:.1%} of the step), allreduce alone "
                  f"{results[-1]['allreduce'] * 1e3:.1f} ms")
        step = args.step or min(result["step"] for result in results if result["ranks"] == 1)
        print_model(results[0]["megabytes"], step)
        return

    import nn3d
    threads = nn3d.set_num_threads(args.threads)
    world, model, seconds = measure(args.steps, args.warmup)
    if world.is_root:
        megabytes = 4 * model.num_parameters() / 1e6
        result = {"ranks": world.size, "threads": threads, "size": SIZE, "steps": args.steps,
                  "parameters": model.num_parameters(), "megabytes": megabytes, **seconds,
                  "machine": machine_info(threads)}
        print(f"{world.size} rank(s) x {threads} thread(s), {SIZE}^3, one sample per rank: "
              f"step {seconds['step']:.3f} s, "
              f"gradient sum {seconds['sum'] * 1e3:.1f} ms ({seconds['sum'] / seconds['step']:.1%}), "
              f"allreduce alone {seconds['allreduce'] * 1e3:.1f} ms of {megabytes:.2f} MB")
        write_json(os.path.join(RESULTS, f"mpi_scaling_{world.size}x{threads}.json"), result)


if __name__ == "__main__":
    main()
