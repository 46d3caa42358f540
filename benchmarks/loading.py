"""Data loading against the training step: patch plan, extraction and flips at --patch N.

    python -m benchmarks.loading [--patch 96] [--batch-size 1] [--shape 176 208 176] [--steps 20]

Writes a paired folder of `--patients` phantom heads at 1 mm into a temporary folder (cost not
counted), preprocesses them into a temporary cache (not counted), then times what each training step
adds before the network runs: `PatientSet.batch_plan` (centre draws) and `PatientSet.batch` (patch
copies out of the memory-mapped cache, flips, HU -> network scale), with the page cache warm (a
second epoch) and cold (just after the cache was written, as far as the OS allows without root).
The share is reported against the step time of benchmarks/results/step.json at the same size.
"""
import argparse
import json
import os
import tempfile
import time

from mri2ct.data import PatientSet, generate_cohort, open_data_folder

STEP_RESULTS = os.path.join(os.path.dirname(__file__), "results", "step.json")


def step_seconds(size):
    """Our measured training-step time at size^3 (benchmarks/results/step.json), or None."""
    with open(STEP_RESULTS) as file:
        rows = json.load(file)["rows"]
    return next((row["train"]["ours_s"] for row in rows if row["size"] == size), None)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loading", description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[176, 208, 176])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root, cache = os.path.join(scratch, "pairs"), os.path.join(scratch, "cache")
        generate_cohort(root, args.patients, seed=0, shape=args.shape, spacing=1.0, supersample=1,
                        layout="paired", workers=1)
        folder = open_data_folder(root)
        dataset = PatientSet(folder, folder.ids, 1.0, cache, augment=True)
        for index in range(len(dataset)):
            dataset.patient(index)                                  # preprocess + cache: not timed
        per_step = []
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            steps = dataset.batch_plan(epoch, args.batch_size, args.patch)
            for samples in steps:
                x, target = dataset.batch(samples, args.patch)
            per_step.append((time.perf_counter() - start) / len(steps))
    step = step_seconds(args.patch)
    print(f"patch {args.patch}^3, batch {args.batch_size}, {args.patients} scans of "
          f"{' x '.join(map(str, args.shape))} at 1 mm")
    for epoch, seconds in enumerate(per_step, 1):
        share = f", {100 * seconds / (step * args.batch_size):.2f} % of the {step:.2f} s training step " \
                f"(benchmarks/results/step.json, batch 1)" if step else ""
        print(f"epoch {epoch} ({'cold' if epoch == 1 else 'warm'} page cache): plan + batch "
              f"{1000 * seconds:.1f} ms per step{share}")
    return per_step


if __name__ == "__main__":
    main()
