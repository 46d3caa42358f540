"""Which algorithm computes a Conv3d's forward, grad-input and grad-weight passes: the direct kernels
(nn3d/kernels/conv3d.py, conv3d_grad_weight.py) or Winograd's F(2^3, 3^3) (nn3d/kernels/winograd/).

Winograd applies to 3x3x3 kernels with stride 1 and padding 1 (the U-Net's convolutions); every other
shape runs direct. Among those, the rule: Winograd when both channel counts are at least 16. Below
that the products are too thin to pay for the transforms (the U-Net's 1 -> 16 input layer ran
several times slower by Winograd); from 16 channels on, Winograd ran as fast (16 -> 16 at 64^3) to
2-3x faster (32..128 channels) than the direct kernels (benchmarks/kernels.py, the "wino" rows).
And Winograd needs at least 512 output tiles of 2x2x2 voxels (a 16^3 volume): at the U-Net's 8^3
bottleneck (64 tiles, 8 blocks of tiles to share between the threads, where nn3d aims at 32 parallel
work items) it ran 1.5-2x slower than direct on 2 threads; at 16^3 (512 tiles) 2x faster.
The rule depends on the shape only, so the choice, and the result, is the same on every run and for
every thread count. Grad-input (a convolution Cout -> Cin) and grad-weight obey the same rule: by
Winograd, grad-weight ran 1.2x (16 -> 16 at 64^3) to 2x (32..128 channels) faster than direct on
every such layer (benchmarks/kernels.py, the "wino grad_w" rows), and it needs no padded copy of x.

NN3D_CONV=direct or NN3D_CONV=winograd, read at every call, forces one algorithm wherever Winograd
applies (tests run every layer test both ways; benchmarks compare them).
"""
import os

ALGORITHMS = ("direct", "winograd")
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_TILES = 512


def winograd_applies(kernel_size, stride, padding):
    """F(2^3, 3^3) computes exactly the 3x3x3, stride-1, padding-1 convolution."""
    return kernel_size == (3, 3, 3) and stride == (1, 1, 1) and padding == (1, 1, 1)


def conv_algorithm(kernel_size, stride, padding, in_channels, out_channels, input_shape):
    """'direct' or 'winograd' for a Conv3d with these hyper-parameters and an input of
    input_shape (N, Cin, D, H, W) (see the rule above)."""
    forced = os.environ.get("NN3D_CONV", "")
    if forced and forced not in ALGORITHMS:
        raise ValueError(f"NN3D_CONV must be one of {', '.join(ALGORITHMS)}, got {forced!r}")
    if not winograd_applies(kernel_size, stride, padding):
        return "direct"
    if forced:
        return forced
    n_batch, _, size_d, size_h, size_w = input_shape
    tiles = n_batch * ((size_d + 1) // 2) * ((size_h + 1) // 2) * ((size_w + 1) // 2)
    if min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS and tiles >= WINOGRAD_MIN_TILES:
        return "winograd"
    return "direct"
