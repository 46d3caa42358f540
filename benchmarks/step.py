"""The whole training step and the eval forward pass of the default U-Net: nn3d vs PyTorch.

    python -m benchmarks.step [--sizes 64 96 128] [--threads 2] [--repeats 3]

A training step is exactly what `python -m mri2ct.train` does per batch, the same function
(mri2ct.training.step.train_step): forward, MSE, backward, gradient clipping at 1.0, AdamW and the
cosine schedule. PyTorch runs the same architecture
(benchmarks/torch_unet.py) with the same weights, in its default NCDHW format and in
channels_last_3d; the faster of the two is the reference. Times are medians of interleaved runs in
one process. Peak resident memory is measured separately, one fresh process per (framework, size,
pass), so one framework's allocations do not hide the other's.

Plain-script conditions by default: nn3d is imported and run with no setup call (no
`nn3d.set_num_threads`, which only changes Numba's thread count anyway), exactly as the README's loop in
a fresh script; `--threads N` below the core count calls it for both libraries.

Writes benchmarks/results/step.json and step.png.
"""
import argparse
import functools
import json
import os
import subprocess
import sys

import numpy as np

from .common import interleaved_medians, machine_info, set_threads, sgemm_gflops, write_json

RESULTS = os.path.join(os.path.dirname(__file__), "results")
LEARNING_RATE, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0


def make_input(size, seed=0):
    """A (1, 1, S, S, S) MR-like input and CT-like target, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 1, size, size, size)).astype(np.float32)
    target = rng.standard_normal((1, 1, size, size, size)).astype(np.float32)
    return x, target


def ours_runner(size, mode):
    """A function running one nn3d training step (mode='train') or eval forward (mode='eval')."""
    import nn3d
    from mri2ct.model import UNet3D
    from mri2ct.training.step import train_step

    nn3d.manual_seed(0)
    model = UNet3D()
    x, target = make_input(size)
    criterion = nn3d.MSELoss()
    optimizer = nn3d.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=1000, eta_min=1e-6)

    def eval_forward():
        with nn3d.no_grad():              # as torch.no_grad in torch_runner: no backward caches
            model.forward(x)

    if mode == "train":
        model.train()
        return model, functools.partial(train_step, model, criterion, optimizer, scheduler, x, target, CLIP)
    model.eval()
    return model, eval_forward


def torch_runner(size, mode, channels_last, nn3d_model=None):
    """The same step in PyTorch; weights copied from `nn3d_model` when given."""
    import torch

    from .torch_unet import TorchUNet3D, torch_twin

    model = torch_twin(nn3d_model) if nn3d_model is not None else TorchUNet3D()
    x, target = (torch.from_numpy(a) for a in make_input(size))
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        target = target.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000, eta_min=1e-6)
    criterion = torch.nn.MSELoss()

    def train_step():
        loss = criterion(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()

    def eval_forward():
        with torch.no_grad():
            model(x)

    if mode == "train":
        model.train()
        return train_step
    model.eval()
    return eval_forward


def peak_memory_mb(framework, size, mode, threads):
    """Peak RSS of a fresh process that builds the model and runs two passes, and the RSS it had
    before the first pass (imports, model, data), in MB."""
    command = [sys.executable, "-m", "benchmarks.step", "--worker", framework, "--sizes", str(size),
               "--mode", mode, "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker(framework, size, mode, threads):
    """Runs inside the subprocess of `peak_memory_mb`: prints {"peak_mb", "baseline_mb"}."""
    if framework == "ours":
        import nn3d

        if threads != nn3d.get_num_threads():
            nn3d.set_num_threads(threads)
        _, run = ours_runner(size, mode)
    else:
        import torch

        torch.set_num_threads(threads)
        run = torch_runner(size, mode, channels_last=(framework == "torch_cl"))
    baseline = status_mb("VmRSS")
    run()
    run()
    print(json.dumps({"peak_mb": status_mb("VmHWM"), "baseline_mb": baseline}))


def status_mb(field):
    """VmRSS (now) or VmHWM (peak) of this process in MB, from /proc/self/status. Not
    getrusage's ru_maxrss: Linux keeps that across fork + exec, so a worker started by a big parent
    reports the parent's size (every worker showed the same 1426 MB)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(size, threads, repeats):
    """Median seconds of ours vs both PyTorch formats, train step and eval forward, one size."""
    row = {"size": size}
    for mode in ("train", "eval"):
        model, ours = ours_runner(size, mode)
        torch_default = torch_runner(size, mode, channels_last=False, nn3d_model=model)
        torch_cl = torch_runner(size, mode, channels_last=True, nn3d_model=model)
        seconds = interleaved_medians([ours, torch_default, torch_cl], repeats=repeats, warmup=1)
        row[mode] = {"ours_s": seconds[0], "torch_ncdhw_s": seconds[1],
                     "torch_channels_last_s": seconds[2]}
        row[mode]["torch_best_s"] = min(seconds[1], seconds[2])
        row[mode]["speedup"] = row[mode]["torch_best_s"] / seconds[0]
        print(f"  {size}^3 {mode:5s}: ours {seconds[0]:.3f} s | torch NCDHW {seconds[1]:.3f} s, "
              f"channels_last {seconds[2]:.3f} s | speed-up x{row[mode]['speedup']:.2f}", flush=True)
    for mode in ("train", "eval"):
        memory = {name: peak_memory_mb(name, size, mode, threads)
                  for name in ("ours", "torch", "torch_cl")}
        row[mode]["peak_mb"] = memory
        print(f"  {size}^3 {mode:5s} peak RSS: ours {memory['ours']['peak_mb']:.0f} MB | torch "
              f"{memory['torch']['peak_mb']:.0f} MB, channels_last {memory['torch_cl']['peak_mb']:.0f} MB",
              flush=True)
    return row


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    sizes = [f"{row['size']}³" for row in rows]
    positions = np.arange(len(rows))
    for axis, mode, title in ((axes[0], "train", "training step"), (axes[1], "eval", "eval forward")):
        ours = [row[mode]["ours_s"] for row in rows]
        reference = [row[mode]["torch_best_s"] for row in rows]
        axis.bar(positions - 0.2, ours, 0.4, label="nn3d")
        axis.bar(positions + 0.2, reference, 0.4, label="PyTorch (faster format)")
        for p, o, r in zip(positions, ours, reference):
            axis.text(p, max(o, r) * 1.02, f"×{r / o:.2f}", ha="center")
        axis.set_xticks(positions, sizes)
        axis.set_ylabel("median seconds")
        axis.set_title(title)
        axis.legend()
    ours_memory = [row["train"]["peak_mb"]["ours"]["peak_mb"] for row in rows]
    torch_memory = [min(row["train"]["peak_mb"]["torch"]["peak_mb"],
                        row["train"]["peak_mb"]["torch_cl"]["peak_mb"]) for row in rows]
    axes[2].bar(positions - 0.2, ours_memory, 0.4, label="nn3d")
    axes[2].bar(positions + 0.2, torch_memory, 0.4, label="PyTorch (lower format)")
    axes[2].set_xticks(positions, sizes)
    axes[2].set_ylabel("peak resident MB (training step)")
    axes[2].set_title("memory")
    axes[2].legend()
    figure.suptitle("U-Net 16-32-64-128, batch 1: nn3d vs PyTorch on this CPU")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128],
                        help="cubic input sizes (multiples of 8)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for nn3d and PyTorch (default: all cores, nn3d with no setup call)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "step.json"), help="JSON output path")
    parser.add_argument("--worker", choices=("ours", "torch", "torch_cl"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("train", "eval"), default="train", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.sizes[0], args.mode, args.threads)
        return 0

    set_threads(args.threads)
    sgemm = sgemm_gflops(args.threads)
    print(f"sgemm reference: {sgemm:.0f} GFLOP/s on {args.threads} threads", flush=True)
    rows = [measure(size, args.threads, args.repeats) for size in args.sizes]
    payload = {"machine": machine_info(args.threads), "sgemm_gflops": sgemm, "rows": rows}
    write_json(args.out, payload)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, png)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
