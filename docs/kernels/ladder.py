"""What both ladders share (llm.c's dev/cuda keeps it in common.h): the layer, the timing, the table.

The layer: a 3x3x3, stride-1, padding-1 convolution forward, batch 1, 16 -> 16 channels, float32,
channels-last (x (N, D, H, W, Cin), weight (Cout, Cin, 3, 3, 3) as PyTorch stores it, y (N, D, H,
W, Cout)). Every step is a function step(x, weight, bias) -> y that computes the whole layer from
those arrays (padding, weight packing or filter transform included), so the times compare like
with like.

Timing: one warm-up call (it compiles the Numba steps), then the median of --repeats calls.
GFLOP/s counts the direct convolution's FLOPs, 2 * voxels * Cout * Cin * 27 (for Winograd that is
the "effective" rate: it does fewer multiplications than that). The speed-up is the GFLOP/s over
the step before's (the ratio of their times, unless one of them ran on a crop).

Tolerance (the run exits 1 if a step exceeds it): max |y_step - y_0| <= TOLERANCE * max |y_0|.
float32 keeps 24 bits (u = 2^-24 = 6e-8). An output here is a sum of n = 27 * 16 = 432 products; in
any order, with or without fused multiply-adds, its rounding error is at most about n * u = 2.6e-5
times the sum of the products' magnitudes, which for these inputs (standard normal x, weights of
standard deviation 1 / sqrt(27 * Cin), so y has unit variance) is at most 3.6 max |y| (measured at
32^3): 0.9e-4 max |y| in the worst case; in practice errors are ~1e-6 max |y| (random rounding
errors grow like sqrt(n) u). Winograd's transforms add sums of at most 27 terms each
(nn3d/kernels/winograd/algorithm.py, section 4); measured, it is as accurate as the direct sum. A bug
moves outputs by whole products: at 32^3, zeroing one weight of the 6912 moves an output by 0.06 max |y|,
one tap (kz, ky, kx) by 0.2 max |y|, hundreds of times the tolerance.

Steps too slow or too big at a large --size run on a cropped volume, the first `largest`^3 voxels
(the step says so in its row); their error is measured where both outputs are exact: an output
voxel depends on its 3x3x3 neighbourhood only, so y of the crop equals y of the whole volume except
on the crop's far faces, and the comparison leaves those out.
"""
import argparse
import statistics
import sys
import time

import numba
import numpy as np

from nn3d.kernels.register_tile import BLOCK_W

CHANNELS_IN = CHANNELS_OUT = 16
TOLERANCE = 1e-4          # max |y_step - y_0| <= TOLERANCE * max |y_0|: see the header


def arguments(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=32, help="the volume is SIZE^3 voxels (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per step, after one warm-up")
    args = parser.parse_args()
    if args.size < 1 or args.repeats < 1:
        parser.error("--size and --repeats must be at least 1")
    return args


def layer(size, seed=0):
    """x (1, size, size, size, 16), weight (16, 16, 3, 3, 3), bias (16,), float32: y has unit variance."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, size, size, size, CHANNELS_IN), dtype=np.float32)
    weight = rng.standard_normal((CHANNELS_OUT, CHANNELS_IN, 3, 3, 3)) / np.sqrt(27 * CHANNELS_IN)
    weight = weight.astype(np.float32)
    bias = (0.1 * rng.standard_normal(CHANNELS_OUT)).astype(np.float32)
    return x, weight, bias


def direct_flops(x, cout):
    """FLOPs of the direct convolution: one multiply and one add per voxel, Cout, Cin and tap."""
    return 2 * x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] * cout * x.shape[4] * 27


def median_seconds(step, arrays, repeats):
    """Median wall time of step(*arrays) over `repeats` calls after one warm-up, and its output."""
    y = step(*arrays)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(*arrays)
        times.append(time.perf_counter() - start)
    return statistics.median(times), y


def cropped(arrays, size):
    """The layer on the first size^3 voxels of x."""
    x, weight, bias = arrays
    return np.ascontiguousarray(x[:, :size, :size, :size]), weight, bias


def run(title, steps, args):
    """Time every step of `steps` ((function, largest size or None), step 0 first), print the table,
    return the exit status: 0 if every step is within the tolerance of step 0, else 1."""
    arrays = layer(args.size)
    print(f"{title}: {args.size}^3 voxels, {CHANNELS_IN} -> {CHANNELS_OUT} channels, batch 1, float32, "
          f"{numba.get_num_threads()} threads, register tiles {BLOCK_W} wide for this CPU "
          f"({'AVX-512' if BLOCK_W == 8 else 'no AVX-512'}); median of {args.repeats} after a warm-up")
    print(f"{'step':<21} {'size':>5} {'ms':>10} {'GFLOP/s':>8} {'speed-up':>8} {'max error':>10}")
    outputs, rate_before, worst = {}, None, 0.0
    for number, (step, largest) in enumerate(steps):
        size = min(args.size, largest or args.size)
        run_arrays = arrays if size == args.size else cropped(arrays, size)
        seconds, y = median_seconds(step, run_arrays, args.repeats)
        outputs[number] = y
        rate = direct_flops(run_arrays[0], CHANNELS_OUT) / seconds / 1e9
        speed_up = "" if rate_before is None else f"{rate / rate_before:.2f}x"
        y0 = outputs[0]
        common = min(y.shape[1], y0.shape[1]) - (y.shape[1] != y0.shape[1])   # see the header
        error = float(np.max(np.abs(y[:, :common, :common, :common].astype(np.float64)
                                    - y0[:, :common, :common, :common])))
        worst = max(worst, error / float(np.max(np.abs(y0))))
        crop = ""
        if size < args.size:
            crop = f"  (run on the first {size}^3 voxels: too slow or big at {args.size}^3)"
        if common < y.shape[1]:
            crop += f"  (error on the first {common}^3 voxels, where step 0's crop is exact)"
        name = f"{number} {step.__name__}"
        print(f"{name:<21} {size:>5} {seconds * 1e3:>10.2f} {rate:>8.2f} {speed_up:>8} {error:>10.2e}{crop}")
        rate_before = rate
        sys.stdout.flush()
    scale = float(np.max(np.abs(outputs[0])))
    verdict = "every step within it" if worst <= TOLERANCE else "EXCEEDED"
    print(f"tolerance: max error <= {TOLERANCE:.0e} * max|y_0| = {TOLERANCE * scale:.2e}: {verdict} "
          f"(worst {worst:.1e} * max|y_0|)")
    print("(times from a shared machine are noisy; compile time is in the warm-up, not in the table)")
    return 0 if worst <= TOLERANCE else 1
