"""Which algorithm computes each pass of a Conv3d, forward, grad-input and grad-weight: the direct
kernels (nn3d/kernels/conv3d.py, conv3d_grad_weight.py) or Winograd's F(2^3, 3^3)
(nn3d/kernels/winograd/).

Winograd applies to 3x3x3 kernels with stride 1 and padding 1 (the U-Net's convolutions); every other
shape runs direct. Among those, the choice is a pure function of the instruction set the register
tiles compile for, the pass and the shape (`winograd_wins`), measured on each instruction set
(benchmarks/kernels.py, the direct rows against the "wino" rows; docs/performance.md):

- Both: Winograd only when both channel counts are at least 16. Below that the products are too
  thin to pay for the transforms (the U-Net's 1 -> 16 input layer: several times slower by Winograd
  on AVX-512, slower or no faster in every pass on AVX2).
- AVX-512 (tile width 8, Zen 4): every pass by Winograd from 512 output tiles of 2x2x2 voxels (a
  16^3 volume) on. Forward and grad-input ran as fast (16 -> 16 at 64^3) to 2-3x faster (32..128
  channels) than the direct kernels; grad-weight 1.2x (16 -> 16 at 64^3) to 2x (32..128 channels)
  faster, and it needs no padded copy of x. At the U-Net's 8^3 bottleneck (64 tiles, 8 blocks of
  tiles to share between the threads) the forward ran 1.5-2x slower than direct on 2 threads.
- AVX2 (tile width 4, Zen 2/3): every pass by Winograd from 64 output tiles (an 8^3 volume) on.
  With the AVX2 product tiles (6 x 16 of explicit vectors, winograd/products.py), all three passes
  by Winograd ran 1.1-3.3x faster than direct on every U-Net layer of 16 or more channels and 512
  or more tiles at 64^3, on 2 threads (before them, Winograd's grad-weight was 1.4-1.6x slower than
  direct on the 16-channel layers at 64^3), and at the 8^3 bottleneck it did 1.25-1.5x (forward),
  1.7-2.0x (grad-input) and 1.5-1.8x (grad-weight) less work on one thread (CPU time): there the
  AVX2 direct kernels (4-voxel tiles) are further from the machine's peak than the AVX-512 ones.
  The price at 8^3 is parallelism: 8 work items (blocks of tiles; grad-weight: groups of output
  channels), below the 32 nn3d aims at elsewhere, enough for the 2-core machines measured.

The rule depends on the compiled instruction set and the shapes only, so a machine makes the same
choice, and computes the same bits, on every run and for every thread count (a resumed training run
continues bit for bit on the same kind of machine). The passes of one layer may differ: the layer
computes the filter transform in backward when grad-input runs by Winograd after a direct forward,
and pads x when grad-weight runs direct after a Winograd forward.

NN3D_CONV=direct or NN3D_CONV=winograd, read at every call, forces one algorithm for every pass
wherever Winograd applies (tests run every layer test both ways; benchmarks compare them).
"""
import os

from .register_tile import BLOCK_W

ALGORITHMS = ("direct", "winograd")
PASSES = ("forward", "grad_input", "grad_weight")
INSTRUCTION_SETS = ("avx2", "avx512")
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_TILES = {"avx512": 512, "avx2": 64}   # 2x2x2 output tiles: a 16^3, an 8^3 volume


def instruction_set(width=BLOCK_W):
    """The instruction set of a register-tile width: 'avx512' for 8 (32 vector registers of 16
    floats), 'avx2' for 4 (16 registers of 8 floats); register_tile.tile_width reads it from the CPU
    features Numba compiles for."""
    return "avx512" if width == 8 else "avx2"


COMPILED_FOR = instruction_set()      # this process's kernels: the rule's default instruction set


def output_tiles(input_shape):
    """2x2x2 output tiles of a stride-1, padding-1 convolution of an (N, C, D, H, W) input."""
    n_batch, _, size_d, size_h, size_w = input_shape
    return n_batch * ((size_d + 1) // 2) * ((size_h + 1) // 2) * ((size_w + 1) // 2)


def winograd_wins(isa, pass_name, in_channels, out_channels, tiles):
    """True where Winograd was measured faster than the direct kernels for the pass `pass_name`
    ('forward', 'grad_input' or 'grad_weight') of a 3x3x3, stride-1, padding-1 convolution of
    in_channels -> out_channels with `tiles` 2x2x2 output tiles, on the instruction set `isa`
    ('avx2' or 'avx512'): the rule above, as a pure function."""
    if isa not in INSTRUCTION_SETS:
        raise ValueError(f"winograd_wins: unknown instruction set {isa!r}, expected one of {INSTRUCTION_SETS}")
    if pass_name not in PASSES:
        raise ValueError(f"winograd_wins: unknown pass {pass_name!r}, expected one of {PASSES}")
    return min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS and tiles >= WINOGRAD_MIN_TILES[isa]


def winograd_applies(kernel_size, stride, padding):
    """F(2^3, 3^3) computes exactly the 3x3x3, stride-1, padding-1 convolution."""
    return kernel_size == (3, 3, 3) and stride == (1, 1, 1) and padding == (1, 1, 1)


def conv_algorithm(kernel_size, stride, padding, in_channels, out_channels, input_shape, pass_name="forward",
                   isa=None):
    """'direct' or 'winograd' for the pass `pass_name` ('forward', 'grad_input' or 'grad_weight') of
    a Conv3d with these hyper-parameters and an input of input_shape (N, Cin, D, H, W), on the
    instruction set `isa` (None: COMPILED_FOR, the one this process's kernels are compiled for)."""
    forced = os.environ.get("NN3D_CONV", "")
    if forced and forced not in ALGORITHMS:
        raise ValueError(f"NN3D_CONV must be one of {', '.join(ALGORITHMS)}, got {forced!r}")
    if not winograd_applies(kernel_size, stride, padding):
        return "direct"
    if forced:
        return forced
    wins = winograd_wins(isa or COMPILED_FOR, pass_name, in_channels, out_channels, output_tiles(input_shape))
    return "winograd" if wins else "direct"
