"""The exported ONNX file in ONNX Runtime against nn3d's own eval forward, same weights, same input.

    python -m benchmarks.onnx_runtime [--size 64] [--threads 2] [--repeats 7]

The default U-Net (seed 0) is exported as `python -m mri2ct.export` exports it
(mri2ct/inference/onnx_graph.py, BatchNorm folded), and run in ONNX Runtime's CPU provider on
`--threads` intra-op threads; nn3d runs `model.forward` in eval mode under `nn3d.no_grad()` (which
folds the BatchNorms too) on as many Numba threads. Batch 1, a (1, 1, S, S, S) input; times are
medians of interleaved runs after one warm-up each. Also reported: the largest difference of the two
outputs, relative to the range of nn3d's output.

Writes benchmarks/results/onnx_runtime_<size>_<threads>threads.json.
"""
import argparse
import os
import platform

import numpy as np

from .common import interleaved_medians, write_json

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_runtime", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    import onnxruntime

    import nn3d
    from mri2ct.inference.onnx_graph import INPUT, unet_model
    from mri2ct.model import UNet3D

    nn3d.set_num_threads(args.threads)
    nn3d.manual_seed(0)
    model = UNet3D().eval()
    state = {"epoch": 0, "config": {"features": list(model.features)}}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(unet_model(model, state, [args.size] * 3, [1.0] * 3).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 1, *[args.size] * 3)).astype(np.float32)

    def nn3d_forward():
        with nn3d.no_grad():
            return model.forward(x)

    def onnx_runtime_forward():
        return session.run(None, {INPUT: x})[0]

    expected, got = nn3d_forward(), onnx_runtime_forward()
    error = float(np.abs(got - expected).max() / (expected.max() - expected.min()))
    nn3d_seconds, ort_seconds = interleaved_medians([nn3d_forward, onnx_runtime_forward], repeats=args.repeats)
    print(f"{args.size}^3 eval forward, {args.threads} threads, median of {args.repeats}: "
          f"nn3d {nn3d_seconds:.3f} s, ONNX Runtime {onnxruntime.__version__} {ort_seconds:.3f} s "
          f"(nn3d {ort_seconds / nn3d_seconds:.2f}x faster); max difference {error:.1e} of the output's range")
    write_json(os.path.join(RESULTS, f"onnx_runtime_{args.size}_{args.threads}threads.json"),
               {"size": args.size, "threads": args.threads, "repeats": args.repeats, "nn3d_s": nn3d_seconds,
                "onnxruntime_s": ort_seconds, "onnxruntime": onnxruntime.__version__,
                "relative_max_difference": error, "cpu": platform.processor() or platform.machine()})


if __name__ == "__main__":
    main()
