"""Throughput of every distinct layer shape of the U-Net, pass by pass: nn3d vs PyTorch.

    python -m benchmarks.kernels [--size 64] [--threads 2] [--repeats 5]

For each layer shape of UNet3D (16-32-64-128) at the given input size, batch 1: the 3x3x3
convolutions' forward, grad-input and grad-weight passes, the head, the transposed convolutions,
BatchNorm+ReLU and MaxPool, each timed for nn3d and for PyTorch in the same process
after warm-up (median of interleaved repeats). PyTorch runs each pass in NCDHW and in
channels_last_3d; the faster counts. Compute-bound passes report GFLOP/s and the fraction of
NumPy's sgemm rate measured in the same run; the 3x3x3 layers' forward and grad_input rows run the
direct kernels, the "wino fwd" and "wino grad_in" rows the same passes by Winograd F(2^3, 3^3)
(nn3d/kernels/winograd/convolution.py), the "wino4 fwd" row the forward by F(4^3, 3^3)
(nn3d/kernels/winograd/convolution4.py, what training and inference run from 16^3 on), the
"wino4 grad_in" row grad-input by it, the "wino grad_w" and "wino4 grad_w" rows the grad-weight
pass by the transpose of F(2^3, 3^3) and F(4^3, 3^3) (nn3d/kernels/winograd/grad_weight.py,
grad_weight4.py: the first on AVX-512, the second on AVX2); their rate is "effective":
direct-convolution FLOPs / time.
Winograd does 3.4x fewer multiplications, so its effective rate may exceed the sgemm rate (of
roof > 100%).
Memory-bound passes report GB/s (bytes of the inputs read once plus the outputs written once)
against a NumPy copy measured in the same run.
There is no concatenation row: the decoders' first convolutions read (up, skip) as two inputs
(their forward includes the concatenation; PyTorch's row is timed on the concatenated tensor).
For every pass it also reports how many independent work items its parallel loop has (the `prange`
iterations, for Winograd its blocks of tiles, for its grad-weight its chunks of tiles: enough to
keep 32 cores busy is the aim; the convolutions' counts come from the kernels' own `*_work_items`
functions) and its speed-up from 1 to 2 threads (both timed in the same interleaved rounds).

Writes benchmarks/results/kernels_<size>.json and .png.
"""
import argparse
import os

import numpy as np

from .common import (copy_gbps, interleaved_medians, machine_info, set_threads, sgemm_gflops,
                     write_json)

RESULTS = os.path.join(os.path.dirname(__file__), "results")
FEATURES = (16, 32, 64, 128)


def unet_layer_shapes(size, features=FEATURES):
    """The distinct layer shapes of UNet3D for a cubic input of `size`: (name, kind, details)."""
    f1, f2, f3, f4 = features
    s1, s2, s3, s4 = size, size // 2, size // 4, size // 8
    convs = [("enc1.conv1", 1, f1, s1), ("enc1.conv2", f1, f1, s1), ("enc2.conv1", f1, f2, s2),
             ("enc2.conv2", f2, f2, s2), ("enc3.conv1", f2, f3, s3), ("enc3.conv2", f3, f3, s3),
             ("bottleneck.conv1", f3, f4, s4), ("bottleneck.conv2", f4, f4, s4),
             ("dec3.conv1", 2 * f3, f3, s3), ("dec2.conv1", 2 * f2, f2, s2),
             ("dec1.conv1", 2 * f1, f1, s1)]
    layers = [(name, "conv3", dict(cin=cin, cout=cout, size=s, inputs=2 if name.startswith("dec") else 1))
              for name, cin, cout, s in convs]
    layers.append(("head", "conv1", dict(cin=f1, cout=1, size=s1, inputs=1)))
    layers += [(f"up{i}", "up", dict(cin=cin, cout=cout, size=s)) for i, cin, cout, s in
               ((3, f4, f3, s4), (2, f3, f2, s3), (1, f2, f1, s2))]
    layers += [(f"bn+relu {c}ch", "bnrelu", dict(channels=c, size=s)) for c, s in
               ((f1, s1), (f2, s2), (f3, s3), (f4, s4))]
    layers += [(f"pool{i}", "pool", dict(channels=c, size=s)) for i, c, s in
               ((1, f1, s1), (2, f2, s2), (3, f3, s3))]
    return layers


def random_cl(rng, n, c, size, dtype=np.float32):
    """A random (N, C, S, S, S) array that is channels-last in memory (nn3d's layout)."""
    return rng.standard_normal((n, size, size, size, c), dtype=dtype).transpose(0, 4, 1, 2, 3)


def conv_passes(kind, spec, rng):
    """{pass: (ours, torch NCDHW, torch channels-last, flops, bytes)} for a convolution layer."""
    import torch

    import nn3d
    from nn3d.kernels.conv3d import (conv3d_forward, conv3d_forward_work_items, conv3d_grad_input,
                                     conv3d_grad_input_work_items)
    from nn3d.kernels.conv3d_grad_weight import conv3d_grad_weight, conv3d_grad_weight_work_items
    from nn3d.kernels.padding import pad_and_concatenate, pad_channels_last
    from nn3d.kernels.winograd.convolution import (winograd_convolution_work_items, winograd_forward,
                                                   winograd_grad_input)
    from nn3d.kernels.winograd.convolution4 import winograd4_forward, winograd4_grad_input, winograd4_work_items
    from nn3d.kernels.winograd.filter_transform import filter_transform
    from nn3d.kernels.winograd.filter_transform4 import filter_transform4
    from nn3d.kernels.winograd.grad_weight import winograd_grad_weight, winograd_grad_weight_work_items
    from nn3d.kernels.winograd.grad_weight4 import winograd4_grad_weight, winograd4_grad_weight_work_items
    from nn3d.layout import to_channels_last

    cin, cout, size = spec["cin"], spec["cout"], spec["size"]
    k, pad = (3, 1) if kind == "conv3" else (1, 0)
    layer = nn3d.Conv3d(cin, cout, k, padding=pad)
    x = random_cl(rng, 1, cin, size)
    parts = np.split(x, spec["inputs"], axis=1)                 # a decoder's (up, skip): concatenated in forward
    y = layer.forward(*parts)
    parts_cl = tuple(to_channels_last(part) for part in parts)
    g_cl = to_channels_last(random_cl(rng, 1, cout, size))
    x_pad = pad_channels_last(to_channels_last(x), (pad,) * 3)
    stride, padding = (1, 1, 1), (pad,) * 3
    flops = 2.0 * size ** 3 * cin * cout * k ** 3
    w = torch.from_numpy(layer.weight.data)
    b = torch.from_numpy(layer.bias.data)
    passes = {}
    formats = {}
    for fmt, memory in (("ncdhw", torch.contiguous_format), ("cl", torch.channels_last_3d)):
        xt = torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=memory)
        gt = torch.from_numpy(np.ascontiguousarray(y)).contiguous(memory_format=memory)
        wt = w.contiguous(memory_format=memory)
        formats[fmt] = dict(
            forward=lambda xt=xt, wt=wt: torch.nn.functional.conv3d(xt, wt, b, padding=pad),
            grad_input=lambda xt=xt, gt=gt, wt=wt: torch.ops.aten.convolution_backward(
                gt, xt, wt, [cout], [1] * 3, [pad] * 3, [1] * 3, False, [0] * 3, 1, [True, False, False]),
            grad_weight=lambda xt=xt, gt=gt, wt=wt: torch.ops.aten.convolution_backward(
                gt, xt, wt, [cout], [1] * 3, [pad] * 3, [1] * 3, False, [0] * 3, 1, [False, True, True]))
    ours = dict(
        forward=lambda: conv3d_forward(pad_and_concatenate(parts_cl, padding), layer.weight.data,
                                       layer.bias.data, stride),
        grad_input=lambda: conv3d_grad_input(g_cl, layer.weight.data, (size,) * 3, stride, padding),
        grad_weight=lambda: conv3d_grad_weight(x_pad, g_cl, (k,) * 3, stride))
    kernel, volume = (k,) * 3, (1, size, size, size)
    items = dict(forward=conv3d_forward_work_items((*volume, cout), kernel, stride),
                 grad_input=conv3d_grad_input_work_items((*volume, cin), kernel, cout),
                 grad_weight=conv3d_grad_weight_work_items((*volume, cout), kernel, stride))
    for name in ("forward", "grad_input", "grad_weight"):
        # the U-Net never computes the data's gradient (UNet3D(input_grad=False)): shown, marked
        label = "grad_input*" if name == "grad_input" and cin == 1 else name
        passes[label] = (ours[name], formats["ncdhw"][name], formats["cl"][name], flops, None, items[name])
    if kind == "conv3":       # the same two passes by Winograd F(2^3, 3^3); rates are effective
        weight_transform = filter_transform(layer.weight.data)      # forward's U, kept for grad-input
        passes["wino fwd"] = (          # as the layer: the filter transform, then the inputs in place
            lambda: winograd_forward(tuple(parts_cl), filter_transform(layer.weight.data), layer.bias.data, cout),
            formats["ncdhw"]["forward"], formats["cl"]["forward"], flops, None,
            winograd_convolution_work_items(volume, cin, cout))
        passes["wino4 fwd"] = (         # F(4^3, 3^3), the forward from 16^3 on
            lambda: winograd4_forward(tuple(parts_cl), filter_transform4(layer.weight.data), layer.bias.data, cout),
            formats["ncdhw"]["forward"], formats["cl"]["forward"], flops, None,
            winograd4_work_items(volume, cin, cout))
        passes["wino4 grad_in" + ("*" if cin == 1 else "")] = (     # F(4^3, 3^3), grad-input from 16^3 on
            lambda: winograd4_grad_input(g_cl, layer.weight.data, tuple(x.shape[4] for x in parts_cl)),
            formats["ncdhw"]["grad_input"], formats["cl"]["grad_input"], flops, None,
            winograd4_work_items(volume, cout, cin))
        passes["wino grad_in" + ("*" if cin == 1 else "")] = (
            lambda: winograd_grad_input(g_cl, weight_transform, tuple(x.shape[4] for x in parts_cl)),
            formats["ncdhw"]["grad_input"], formats["cl"]["grad_input"], flops, None,
            winograd_convolution_work_items(volume, cout, cin))
        passes["wino grad_w"] = (       # the inputs in place, as the layer
            lambda: winograd_grad_weight(tuple(parts_cl), g_cl), formats["ncdhw"]["grad_weight"],
            formats["cl"]["grad_weight"], flops, None, winograd_grad_weight_work_items(volume, cin, cout))
        passes["wino4 grad_w"] = (      # F(4^3, 3^3), grad-weight from 16^3 on where the rule says so
            lambda: winograd4_grad_weight(tuple(parts_cl), g_cl), formats["ncdhw"]["grad_weight"],
            formats["cl"]["grad_weight"], flops, None, winograd4_grad_weight_work_items(volume, cin, cout))
    return passes


def up_passes(spec, rng):
    """The k=2, s=2 transposed convolution: three GEMM-like passes."""
    import torch

    import nn3d
    from nn3d.kernels.conv3d_grad_weight import conv3d_grad_weight_work_items
    from nn3d.kernels.conv_transpose3d import (conv_transpose3d_blocks_grad_input, conv_transpose3d_blocks_grad_weight,
                                               conv_transpose3d_blocks_work_items)
    from nn3d.layout import to_channels_last

    cin, cout, size = spec["cin"], spec["cout"], spec["size"]
    layer = nn3d.ConvTranspose3d(cin, cout, 2, stride=2)
    x = random_cl(rng, 1, cin, size)
    x_cl = to_channels_last(x)
    g = random_cl(rng, 1, cout, 2 * size)
    g_cl = to_channels_last(g)
    flops = 2.0 * size ** 3 * cin * cout * 8
    w = torch.from_numpy(layer.weight.data)
    b = torch.from_numpy(layer.bias.data)
    formats = {}
    for fmt, memory in (("ncdhw", torch.contiguous_format), ("cl", torch.channels_last_3d)):
        xt = torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=memory)
        gt = torch.from_numpy(np.ascontiguousarray(g)).contiguous(memory_format=memory)
        formats[fmt] = dict(
            forward=lambda xt=xt: torch.nn.functional.conv_transpose3d(xt, w, b, stride=2),
            grad_input=lambda xt=xt, gt=gt: torch.ops.aten.convolution_backward(
                gt, xt, w, [cout], [2] * 3, [0] * 3, [1] * 3, True, [0] * 3, 1, [True, False, False]),
            grad_weight=lambda xt=xt, gt=gt: torch.ops.aten.convolution_backward(
                gt, xt, w, [cout], [2] * 3, [0] * 3, [1] * 3, True, [0] * 3, 1, [False, True, True]))
    ours = dict(
        forward=lambda: layer.forward(x),
        grad_input=lambda: conv_transpose3d_blocks_grad_input(g_cl, layer.weight.data, x_cl.shape[:4]),
        grad_weight=lambda: conv_transpose3d_blocks_grad_weight(x_cl, g_cl, (2, 2, 2)))
    items = dict(forward=conv_transpose3d_blocks_work_items(x_cl.shape),
                 grad_input=conv_transpose3d_blocks_work_items(x_cl.shape),
                 grad_weight=conv3d_grad_weight_work_items(x_cl.shape, (2, 2, 2), (2, 2, 2)))   # Conv3d's, x as its output
    return {name: (ours[name], formats["ncdhw"][name], formats["cl"][name], flops, None, items[name])
            for name in ("forward", "grad_input", "grad_weight")}


def memory_passes(kind, spec, rng):
    """BatchNorm+ReLU (fused) and MaxPool: forward and backward, memory-bound. Backward consumes the
    layer's cache, so each timed backward first puts back what one forward kept."""
    import torch

    import nn3d

    channels, size = spec["channels"], spec["size"]
    volume_bytes = 4.0 * channels * size ** 3
    x = random_cl(rng, 1, channels, size)
    if kind == "bnrelu":
        layer = nn3d.BatchNorm3d(channels, relu=True)
        layers_forward = lambda: layer.forward(x)
        g = random_cl(rng, 1, channels, size)
        bytes_forward, bytes_backward = 2 * volume_bytes, 3 * volume_bytes   # x->y; (g, x)->grad
        items_forward = items_backward = size ** 3                           # one per voxel
        torch_module = torch.nn.Sequential(torch.nn.BatchNorm3d(channels), torch.nn.ReLU())
    elif kind == "pool":
        layer = nn3d.MaxPool3d(2)
        layers_forward = lambda: layer.forward(x)
        g = random_cl(rng, 1, channels, size // 2)
        bytes_forward, bytes_backward = 1.125 * volume_bytes, 1.125 * volume_bytes
        items_forward, items_backward = (size // 2) ** 2, size ** 2           # output rows; input rows
        torch_module = torch.nn.MaxPool3d(2)
    layers_forward()
    cache = layer._cache

    def layers_backward():
        layer._cache = cache
        layer.backward(g)

    formats = {}
    for fmt, memory in (("ncdhw", torch.contiguous_format), ("cl", torch.channels_last_3d)):
        xt = torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=memory)
        xt.requires_grad_(True)
        gt = torch.from_numpy(np.ascontiguousarray(g)).contiguous(memory_format=memory)
        inputs = (xt,)
        state = {}

        def forward(inputs=inputs, state=state):
            state["y"] = torch_module(*inputs)

        def backward(inputs=inputs, state=state, gt=gt):
            state["y"].backward(gt, retain_graph=True)

        forward()
        formats[fmt] = dict(forward=forward, backward=backward)
    return {"forward": (layers_forward, formats["ncdhw"]["forward"], formats["cl"]["forward"],
                        None, bytes_forward, items_forward),
            "backward": (layers_backward, formats["ncdhw"]["backward"], formats["cl"]["backward"],
                         None, bytes_backward, items_backward)}


def on_one_thread(function, threads):
    """`function` run with nn3d on 1 thread (then back to `threads`): the 1 -> n thread speed-up."""
    import nn3d

    def run_on_one_thread():
        nn3d.set_num_threads(1)
        try:
            function()
        finally:
            nn3d.set_num_threads(threads)

    return run_on_one_thread


def run(size, threads, repeats):
    set_threads(threads)
    rng = np.random.default_rng(0)
    sgemm = sgemm_gflops(threads)
    copy = copy_gbps()
    print(f"reference rates: sgemm {sgemm:.0f} GFLOP/s ({threads} threads), copy {copy:.1f} GB/s")
    header = (f"{'layer':<18}{'pass':<12}{'ours ms':>9}{'torch ms':>10}{'speed-up':>10}"
              f"{'ours rate':>13}{'torch rate':>13}{'of roof':>9}{'items':>7}{'1->' + str(threads):>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for name, kind, spec in unet_layer_shapes(size):
        if kind in ("conv3", "conv1"):
            passes = conv_passes(kind, spec, rng)
        elif kind == "up":
            passes = up_passes(spec, rng)
        else:
            passes = memory_passes(kind, spec, rng)
        for pass_name, (ours, torch_ncdhw, torch_cl, flops, nbytes, items) in passes.items():
            seconds = interleaved_medians([ours, torch_ncdhw, torch_cl, on_one_thread(ours, threads)],
                                          repeats=repeats, warmup=2)
            torch_best = min(seconds[1], seconds[2])
            row = dict(layer=name, kind=kind, **spec, pass_=pass_name, ours_ms=seconds[0] * 1e3,
                       torch_ncdhw_ms=seconds[1] * 1e3, torch_cl_ms=seconds[2] * 1e3,
                       torch_ms=torch_best * 1e3, speedup=torch_best / seconds[0],
                       work_items=items, ours_1thread_ms=seconds[3] * 1e3,
                       thread_speedup=seconds[3] / seconds[0])
            if flops is not None:
                row.update(unit="GFLOP/s", ours_rate=flops / seconds[0] / 1e9,
                           torch_rate=flops / torch_best / 1e9)
                row["fraction_of_roof"] = row["ours_rate"] / sgemm
            else:
                row.update(unit="GB/s", ours_rate=nbytes / seconds[0] / 1e9,
                           torch_rate=nbytes / torch_best / 1e9)
                row["fraction_of_roof"] = row["ours_rate"] / copy
            rows.append(row)
            print(f"{name:<18}{pass_name:<12}{row['ours_ms']:>9.2f}{row['torch_ms']:>10.2f}"
                  f"{row['speedup']:>9.2f}x{row['ours_rate']:>8.1f} {row['unit']:<4}"
                  f"{row['torch_rate']:>8.1f} {row['unit']:<4}{row['fraction_of_roof']:>8.0%}"
                  f"{items:>7}{row['thread_speedup']:>6.2f}x", flush=True)
    print("* not run in a training step: UNet3D skips the input's gradient (enc1.conv1.requires_input_grad)")
    print("wino rows: effective GFLOP/s (direct-convolution FLOPs / time), may exceed the sgemm rate")
    return dict(machine=machine_info(threads), size=size, sgemm_gflops=sgemm, copy_gbps=copy,
                rows=[{("pass" if k == "pass_" else k): v for k, v in row.items()} for row in rows])


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [f"{row['layer']} {row['pass']}" for row in rows]
    speedups = [row["speedup"] for row in rows]
    figure, axis = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    positions = np.arange(len(rows))[::-1]
    colours = ["tab:green" if s >= 2 else "tab:blue" if s >= 1 else "tab:red" for s in speedups]
    axis.barh(positions, speedups, color=colours)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.axvline(2.0, color="grey", linestyle="--", linewidth=0.8)
    axis.set_yticks(positions, labels, fontsize=7)
    axis.set_xlabel("speed-up over PyTorch (its faster memory format), same run")
    axis.set_title(f"nn3d kernels, U-Net layers at {result['size']}³, batch 1, "
                   f"{result['machine']['threads']} threads")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="cubic U-Net input size (multiple of 8)")
    parser.add_argument("--threads", type=int, default=2, help="threads for nn3d and PyTorch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/kernels_<size>.json)")
    args = parser.parse_args(argv)
    if args.size % 8:
        parser.error(f"--size must be a multiple of 8, got {args.size}")
    result = run(args.size, args.threads, args.repeats)
    out = args.out or os.path.join(RESULTS, f"kernels_{args.size}.json")
    write_json(out, result)
    png = os.path.splitext(out)[0] + ".png"
    plot(result, png)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
