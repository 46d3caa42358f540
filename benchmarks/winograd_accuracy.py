"""Float32 error of Winograd F(2^3, 3^3) and F(4^3, 3^3) against float64, next to the direct kernels',
at the U-Net's 3x3x3 layer shapes: forward and grad-input (nn3d/kernels/winograd/convolution.py,
convolution4.py) and grad-weight, by the transposed algorithms (grad_weight.py, grad_weight4.py).

    python -m benchmarks.winograd_accuracy [--size 64]

Inputs and output gradients are standard normal, weights PyTorch's default scale (uniform, bound
1/sqrt(Cin*27)); the float64 truth is the direct kernel in float64 (tested equal to the plain
reference). The error is max |ours - truth| / max |truth| (nn3d.gradcheck.max_relative_error).
"""
import argparse

import numpy as np

from .common import set_threads
from .kernels import unet_layer_shapes


def pass_errors(cin, cout, size, rng):
    """{(pass, algorithm): max relative error} for one layer shape."""
    from nn3d.gradcheck import max_relative_error
    from nn3d.kernels.conv3d import conv3d_forward, conv3d_grad_input
    from nn3d.kernels.conv3d_grad_weight import conv3d_grad_weight
    from nn3d.kernels.padding import pad_channels_last
    from nn3d.kernels.winograd.convolution import winograd_forward, winograd_grad_input
    from nn3d.kernels.winograd.filter_transform import filter_transform
    from nn3d.kernels.winograd.convolution4 import winograd4_forward, winograd4_grad_input
    from nn3d.kernels.winograd.filter_transform4 import filter_transform4
    from nn3d.kernels.winograd.grad_weight import winograd_grad_weight
    from nn3d.kernels.winograd.grad_weight4 import winograd4_grad_weight

    bound = 1 / np.sqrt(cin * 27)
    weight = rng.uniform(-bound, bound, (cout, cin, 3, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, size, size, size, cin), dtype=np.float32)           # (N, D, H, W, Cin)
    g = rng.standard_normal((1, size, size, size, cout), dtype=np.float32)          # (N, D, H, W, Cout)
    ones, pad, kernel = (1, 1, 1), (1, 1, 1), (3, 3, 3)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    truth = {"forward": conv3d_forward(pad_channels_last(x64, pad), weight.astype(np.float64), None, ones),
             "grad_input": conv3d_grad_input(g64, weight.astype(np.float64), (size,) * 3, ones, pad),
             "grad_weight": conv3d_grad_weight(pad_channels_last(x64, pad), g64, kernel, ones)}
    ours = {("forward", "direct"): conv3d_forward(pad_channels_last(x, pad), weight, None, ones),
            ("forward", "winograd"): winograd_forward((x,), filter_transform(weight), None, cout),
            ("grad_input", "direct"): conv3d_grad_input(g, weight, (size,) * 3, ones, pad),
            ("grad_input", "winograd"): winograd_grad_input(g, filter_transform(weight), (cin,))[0],
            ("grad_weight", "direct"): conv3d_grad_weight(pad_channels_last(x, pad), g, kernel, ones),
            ("grad_weight", "winograd"): winograd_grad_weight((x,), g),
            ("forward", "winograd4"): winograd4_forward((x,), filter_transform4(weight), None, cout),
            ("grad_input", "winograd4"): winograd4_grad_input(g, weight, (cin,))[0],
            ("grad_weight", "winograd4"): winograd4_grad_weight((x,), g)}
    return {key: max_relative_error(value, truth[key[0]]) for key, value in ours.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.winograd_accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="the U-Net's input size (multiple of 8)")
    args = parser.parse_args(argv)
    set_threads(2)
    rng = np.random.default_rng(0)
    print(f"{'layer':<18}{'Cin':>5}{'Cout':>6}{'size':>6}  {'pass':<11}{'direct':>10}{'F(2^3,3^3)':>12}"
          f"{'F(4^3,3^3)':>12}")
    for name, kind, spec in unet_layer_shapes(args.size):
        if kind != "conv3":
            continue
        errors = pass_errors(spec["cin"], spec["cout"], spec["size"], rng)
        for pass_name in ("forward", "grad_input", "grad_weight"):
            direct, winograd, winograd4 = (errors[(pass_name, algorithm)]
                                           for algorithm in ("direct", "winograd", "winograd4"))
            print(f"{name:<18}{spec['cin']:>5}{spec['cout']:>6}{spec['size']:>6}  {pass_name:<11}"
                  f"{direct:>10.2e}{winograd:>12.2e}{winograd4:>12.2e}")


if __name__ == "__main__":
    main()
