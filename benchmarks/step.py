"""The whole training step and the eval forward pass of the default U-Net: nn3d vs the other engines.

    python -m benchmarks.step [--sizes 64 96 128] [--threads 2] [--repeats 3] [--engines NAME ...]

A training step is exactly what `python -m mri2ct.train` does per batch, the same function
(mri2ct.training.step.train_step): forward, MSE, backward, gradient clipping at 1.0, AdamW and the
cosine schedule. It is compared with PyTorch eager and `torch.compile`, each in NCDHW and in
channels_last_3d; the eval forward with PyTorch eager in both formats, ONNX Runtime and OpenVINO
(benchmarks/engines.py). Every engine runs the same architecture (benchmarks/torch_unet.py) with
nn3d's weights, and its first call's output (the loss of a training step, the eval forward's
output) is checked against nn3d's: the largest absolute difference is printed and stored. That first
call is the warm-up, timed apart (for torch.compile it is the compile time); the times are medians
of `repeats` interleaved runs in one process, all on the same threads. The ratio is nn3d against the
fastest engine that ran; an engine that cannot run is reported as "not run" with the reason. Peak
resident memory is measured separately, one fresh process per (engine, size, pass), so one engine's
allocations do not hide another's.

Plain-script conditions by default: nn3d is imported and run with no setup call (no
`nn3d.set_num_threads`, which only changes Numba's thread count anyway), exactly as the README's loop in
a fresh script; `--threads N` below the core count calls it for every engine.

Writes benchmarks/results/step.json and step.png, and prints the results as a Markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from .common import interleaved_medians, machine_info, set_threads, sgemm_gflops, write_json
from .engines import ENGINES, build, engines_for, export_onnx, first_line, ours_runner

RESULTS = os.path.join(os.path.dirname(__file__), "results")
ONNX_ENGINES = ("onnxruntime", "openvino")


def peak_memory_mb(engine, size, mode, threads, onnx_path):
    """Peak RSS of a fresh process that builds `engine`'s model and runs two passes, and the RSS it
    had before the first pass (imports, model, data), in MB; for torch.compile the peak includes
    compiling. {"not_run": reason} when the process fails."""
    command = [sys.executable, "-m", "benchmarks.step", "--worker", engine, "--sizes", str(size),
               "--mode", mode, "--threads", str(threads), "--onnx", onnx_path or ""]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"not_run": lines[-1] if lines else f"exit status {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker(engine, size, mode, threads, onnx_path):
    """Runs inside the subprocess of `peak_memory_mb`: prints {"peak_mb", "baseline_mb"}. Imports
    only what `engine` needs (the ONNX engines read the graph the parent exported, no PyTorch)."""
    if engine == "ours":
        import nn3d

        if threads != nn3d.get_num_threads():
            nn3d.set_num_threads(threads)
        _, run = ours_runner(size, mode)
    else:
        if engine.startswith("torch_"):
            import torch

            torch.set_num_threads(threads)
        run = build(engine, size, mode, threads, onnx_path=onnx_path)
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


def warm_up(run):
    """The first call of `run`, timed: (seconds, its output as an array)."""
    start = time.perf_counter()
    output = np.asarray(run())
    return time.perf_counter() - start, output


def time_engines(size, mode, threads, repeats, names, onnx=None):
    """nn3d against the engines `names` on one pass ("train" or "eval") at size^3. `onnx` is the
    exported graph's path, or the exception its export raised. Returns {"ours_s", "ours_first_call_s",
    "engines": {name: {"s", "first_call_s", "max_abs_diff"} or {"not_run": reason}}, "fastest",
    "fastest_s", "speedup"} (fastest and speedup None when no other engine ran)."""
    model, ours = ours_runner(size, mode)
    results, runs = {}, {}
    for name in names:                  # built before any step: every twin gets the initial weights
        if name in ONNX_ENGINES and isinstance(onnx, Exception):
            results[name] = {"not_run": f"ONNX export: {first_line(onnx)}"}
            continue
        try:
            runs[name] = build(name, size, mode, threads, nn3d_model=model, onnx_path=onnx)
        except Exception as error:      # not installed, or refuses the model: reported, never dropped
            results[name] = {"not_run": first_line(error)}
    ours_first, reference = warm_up(ours)   # the output every engine must match
    output = None
    for name, run in list(runs.items()):
        try:
            first, output = warm_up(run)    # torch.compile compiles here
        except Exception as error:
            results[name] = {"not_run": first_line(error)}
            del runs[name]
            continue
        results[name] = {"first_call_s": first,
                         "max_abs_diff": float(np.max(np.abs(output - reference)))}
    del reference, output                    # nothing held while timing: nn3d's arena reuses its buffers
    seconds = interleaved_medians([ours, *runs.values()], repeats=repeats, warmup=0)
    for name, median in zip(runs, seconds[1:]):
        results[name]["s"] = median
    fastest = min(runs, key=lambda name: results[name]["s"], default=None)
    fastest_s = results[fastest]["s"] if fastest else None
    return {"ours_s": seconds[0], "ours_first_call_s": ours_first,
            "engines": {name: results[name] for name in names}, "fastest": fastest,
            "fastest_s": fastest_s, "speedup": fastest_s / seconds[0] if fastest else None}


def measure(size, threads, repeats, names):
    """Time and peak memory of nn3d and the engines `names`, training step and eval forward, at size^3."""
    row = {"size": size}
    with tempfile.TemporaryDirectory() as scratch:
        onnx = None
        if any(name in ONNX_ENGINES for name in names):
            onnx = os.path.join(scratch, f"unet_{size}.onnx")
            try:
                export_onnx(onnx, size, ours_runner(size, "eval")[0])
            except Exception as error:
                onnx = error
        for mode in ("train", "eval"):
            result = time_engines(size, mode, threads, repeats,
                                  [name for name in engines_for(mode) if name in names], onnx)
            row[mode] = result
            print(f"  {size}^3 {mode:5s}: nn3d {result['ours_s']:.3f} s", flush=True)
            for name, entry in result["engines"].items():
                label = ENGINES[name][0]
                if "not_run" in entry:
                    print(f"      {label}: not run: {entry['not_run']}", flush=True)
                else:
                    print(f"      {label}: {entry['s']:.3f} s (first call {entry['first_call_s']:.2f} s, "
                          f"max |difference| from nn3d {entry['max_abs_diff']:.2e})", flush=True)
            if result["fastest"]:
                print(f"      nn3d vs the fastest ({ENGINES[result['fastest']][0]}): "
                      f"x{result['speedup']:.2f}", flush=True)
        path = onnx if isinstance(onnx, str) else None
        for mode in ("train", "eval"):
            ran = [name for name, entry in row[mode]["engines"].items() if "not_run" not in entry]
            memory = {name: peak_memory_mb(name, size, mode, threads, path) for name in ["ours", *ran]}
            row[mode]["peak_mb"] = memory
            print(f"  {size}^3 {mode:5s} peak RSS: " + " | ".join(
                f"{'nn3d' if name == 'ours' else ENGINES[name][0]} "
                + (f"{entry['peak_mb']:.0f} MB" if "peak_mb" in entry else f"not run: {entry['not_run']}")
                for name, entry in memory.items()), flush=True)
    return row


def markdown_table(rows, names):
    """The results as one Markdown table: a row per (size, pass), a column per engine, the ratio
    against the fastest, and peak RSS against the lowest of the other engines' (when measured)."""
    lines = ["| U-Net 16-32-64-128 | nn3d | " + " | ".join(ENGINES[name][0] for name in names)
             + " | nn3d vs fastest | peak RSS nn3d / lowest other |", "|---" * (len(names) + 4) + "|"]
    for row in rows:
        for mode, title in (("train", "training step"), ("eval", "eval forward")):
            result = row[mode]
            cells = []
            for name in names:
                entry = result["engines"].get(name)
                if entry is None:
                    cells.append("—")
                elif "not_run" in entry:
                    cells.append(f"not run: {entry['not_run']}")
                elif "compile" in name:
                    cells.append(f"{entry['s']:.3f} s (compile {entry['first_call_s']:.0f} s)")
                else:
                    cells.append(f"{entry['s']:.3f} s")
            ratio = (f"{result['speedup']:.2f}× ({ENGINES[result['fastest']][0]})"
                     if result["fastest"] else "—")
            lines.append(f"| {row['size']}³ {title} | {result['ours_s']:.3f} s | " + " | ".join(cells)
                         + f" | {ratio} | {memory_cell(result.get('peak_mb', {}))} |")
    return "\n".join(lines)


def memory_cell(memory):
    """"437 / 720 MB (PyTorch eager channels_last_3d)" from one pass's peak_mb entries, or "—"."""
    others = {name: entry["peak_mb"] for name, entry in memory.items()
              if name != "ours" and "peak_mb" in entry}
    if "peak_mb" not in memory.get("ours", {}) or not others:
        return "—"
    lowest = min(others, key=others.get)
    return f"{memory['ours']['peak_mb']:.0f} / {others[lowest]:.0f} MB ({ENGINES[lowest][0]})"


def plot(rows, path, machine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    sizes = [f"{row['size']}³" for row in rows]
    positions = np.arange(len(rows))
    panels = ((axes[0], "train", "training step", "s"), (axes[1], "eval", "eval forward", "s"),
              (axes[2], "train", "peak resident MB, training step", "peak_mb"))
    for axis, mode, title, key in panels:
        names = ["ours", *(name for name in engines_for(mode)
                           if any(name in row[mode]["peak_mb"] for row in rows))]
        width = 0.8 / len(names)
        for index, name in enumerate(names):
            values = []
            for row in rows:
                if key == "peak_mb":
                    entry = row[mode]["peak_mb"].get(name, {})
                    values.append(entry.get("peak_mb", np.nan))
                else:
                    entry = {"s": row[mode]["ours_s"]} if name == "ours" else row[mode]["engines"][name]
                    values.append(entry.get("s", np.nan))
            label = "nn3d" if name == "ours" else ENGINES[name][0]
            axis.bar(positions - 0.4 + (index + 0.5) * width, values, width, label=label)
        if key == "s":
            for p, row in zip(positions, rows):
                if row[mode]["fastest"]:
                    axis.text(p - 0.4 + width / 2, row[mode]["ours_s"], f"×{row[mode]['speedup']:.2f}",
                              ha="center", va="bottom")    # above nn3d's bar
        axis.set_xticks(positions, sizes)
        axis.set_ylabel("median seconds" if key == "s" else "MB")
        axis.set_title(title + (" (× = nn3d vs fastest)" if key == "s" else ""))
        axis.legend(fontsize=7)
    figure.suptitle(f"U-Net 16-32-64-128, batch 1, {machine['threads']} threads: nn3d vs the other "
                    f"engines on {machine['cpu_model']} ({machine['isa']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128],
                        help="cubic input sizes (multiples of 8)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for nn3d and every engine (default: all cores, nn3d with no setup call)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES),
                        help="the engines to compare with (default: all)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "step.json"), help="JSON output path")
    parser.add_argument("--worker", choices=["ours", *ENGINES], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("train", "eval"), default="train", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.sizes[0], args.mode, args.threads, args.onnx or None)
        return 0

    set_threads(args.threads)
    machine = machine_info(args.threads)
    print(f"{machine['cpu_model']}, nn3d compiled for {machine['isa']}", flush=True)
    sgemm = sgemm_gflops(args.threads)
    print(f"sgemm reference: {sgemm:.0f} GFLOP/s on {args.threads} threads", flush=True)
    rows = [measure(size, args.threads, args.repeats, args.engines) for size in args.sizes]
    payload = {"machine": machine, "sgemm_gflops": sgemm, "engines": args.engines, "rows": rows}
    write_json(args.out, payload)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, png, machine)
    print(markdown_table(rows, args.engines))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
