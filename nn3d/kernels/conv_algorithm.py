"""Which algorithm computes each pass of a Conv3d, forward, grad-input and grad-weight, and the
forward of inference: the direct kernels (nn3d/kernels/conv3d.py, conv3d_grad_weight.py),
Winograd's F(2^3, 3^3) (nn3d/kernels/winograd/, "winograd") or F(4^3, 3^3)
(nn3d/kernels/winograd/convolution4.py and grad_weight4.py, "winograd4").

Winograd applies to 3x3x3 kernels with stride 1 and padding 1 (the U-Net's convolutions); every other
shape runs direct. Among those, the choice is a pure function of the instruction set the register
tiles compile for, the pass and the shape (`winograd_wins`, `winograd4_wins`), measured on each
instruction set (benchmarks/kernels.py, the direct rows against the "wino" and "wino4" rows; the
figures are in docs/performance.md, "Winograd kernels", "F(4^3, 3^3) on AVX2" and "AVX-512 (Zen
4)"):

- Winograd only when both channel counts are at least 16. Below that the products are too thin to
  pay for the transforms (the U-Net's 1 -> 16 input layer).
- Forward and grad-input, in training and in inference ("inference": a forward under
  nn3d.no_grad() or with a folded eval-mode BatchNorm, after which no backward runs): F(4^3, 3^3)
  from 64 output tiles of 4x4x4 voxels (a 16^3 volume, 8 blocks of tiles) on, else direct.
  F(4^3, 3^3) does 2.37x fewer products than F(2^3, 3^3) and moves 2.37x less transformed data per
  output; grad-input transforms the flipped filter itself. Below 64 tiles (the 8^3 bottleneck) its
  filter transform (216 values per channel pair, computed at every call) costs more than the kernel
  saves, and F(2^3, 3^3) was no faster than direct through a training step. So the F(2^3, 3^3)
  forward and grad-input never run unless forced (`winograd_convolves`), and a fresh install does
  not compile them. F(4^3, 3^3)'s float32 error is some 16x F(2^3, 3^3)'s; a 100-epoch run trains
  to the same loss (docs/performance.md).
- Grad-weight: on AVX2, F(4^3, 3^3)'s transposed algorithm from 64 output tiles of 4x4x4 voxels (a
  16^3 volume) on, else direct; measured 1.2-1.7x faster than F(2^3, 3^3)'s on every U-Net layer
  from 16^3 on, on a Zen 3, so F(2^3, 3^3) runs nothing there (`winograd_runs`). On AVX-512,
  F(2^3, 3^3)'s transposed algorithm from 512 output tiles of 2x2x2 voxels (a 16^3 volume) on, else
  direct: F(4^3, 3^3)'s grad-weight is not yet timed on an AVX-512 machine. At 8^3 (8 blocks of tiles
  to share between two threads) direct on both.

Measured on AVX-512 on a Zen 4 and on AVX2 on a Zen 3; the tables below differ in grad-weight only.
At 8^3 F(2^3, 3^3) is faster per pass on a Zen 3, but through a whole step by 1-3.5 % at most, less
than the 14 s of compilation its forward and grad-input would add to a fresh install
(docs/performance.md, "AVX2 (Zen 3)").

The rule depends on the compiled instruction set and the shapes only, so a machine makes the same
choice, and computes the same bits, on every run and for every thread count (a resumed training run
continues bit for bit on the same kind of machine). The passes of one layer may differ: the layer
computes the filter transform in backward when grad-input runs by Winograd after a direct forward,
and pads x when grad-weight runs direct after a Winograd forward.

NN3D_CONV=direct, winograd or winograd4, read at every call, forces one algorithm wherever Winograd
applies (tests run every layer test with direct and with winograd, tests/test_winograd4.py the
layer with winograd4; benchmarks compare them).
"""
import os

from .register_tile import BLOCK_W

ALGORITHMS = ("direct", "winograd", "winograd4")
PASSES = ("forward", "grad_input", "grad_weight")     # the passes of a training step
INFERENCE = "inference"                                # a forward with no backward after it
INSTRUCTION_SETS = ("avx2", "avx512")
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_TILES = {"avx512": 512, "avx2": 512}  # 2x2x2 output tiles (a 16^3 volume)
WINOGRAD4_MIN_TILES = 64                            # 4x4x4 output tiles (a 16^3 volume)
WINOGRAD4_PASSES = {"avx512": ("forward", "grad_input", INFERENCE),
                    "avx2": ("forward", "grad_input", "grad_weight", INFERENCE)}


def instruction_set(width=BLOCK_W):
    """The instruction set of a register-tile width: 'avx512' for 8 (32 vector registers of 16
    floats), 'avx2' for 4 (16 registers of 8 floats); register_tile.tile_width reads it from the CPU
    features Numba compiles for."""
    return "avx512" if width == 8 else "avx2"


COMPILED_FOR = instruction_set()      # this process's kernels: the rule's default instruction set


def output_tiles(input_shape, tile=2):
    """tile^3 output tiles of a stride-1, padding-1 convolution of an (N, C, D, H, W) input."""
    n_batch, _, size_d, size_h, size_w = input_shape
    return n_batch * (-(-size_d // tile)) * (-(-size_h // tile)) * (-(-size_w // tile))


def check_rule_arguments(function, isa, pass_name):
    if isa not in INSTRUCTION_SETS:
        raise ValueError(f"{function}: unknown instruction set {isa!r}, expected one of {INSTRUCTION_SETS}")
    if pass_name not in PASSES + (INFERENCE,):
        raise ValueError(f"{function}: unknown pass {pass_name!r}, expected one of {PASSES + (INFERENCE,)}")


def winograd_wins(isa, pass_name, in_channels, out_channels, tiles):
    """True where F(2^3, 3^3) was measured faster than the direct kernels for the pass `pass_name`
    ('forward', 'grad_input', 'grad_weight' or 'inference', which is the forward here) of a 3x3x3,
    stride-1, padding-1 convolution of in_channels -> out_channels with `tiles` 2x2x2 output tiles,
    on the instruction set `isa` ('avx2' or 'avx512'): the rule above, as a pure function."""
    check_rule_arguments("winograd_wins", isa, pass_name)
    return min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS and tiles >= WINOGRAD_MIN_TILES[isa]


def winograd4_wins(isa, pass_name, in_channels, out_channels, tiles4):
    """True where F(4^3, 3^3) is chosen (measured faster than F(2^3, 3^3) and direct): the passes
    WINOGRAD4_PASSES[isa] (forward, grad-input and the inference forward), both channel counts at
    least 16 and at least WINOGRAD4_MIN_TILES 4x4x4 output tiles (`tiles4`) (the rule above)."""
    check_rule_arguments("winograd4_wins", isa, pass_name)
    return (pass_name in WINOGRAD4_PASSES[isa] and min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS
            and tiles4 >= WINOGRAD4_MIN_TILES)


def winograd_runs(isa, pass_name):
    """False where the rule never runs F(2^3, 3^3) for the pass `pass_name` (a kernel a warm-up need
    not compile): where F(4^3, 3^3) takes the pass from WINOGRAD4_MIN_TILES 4x4x4 tiles on and
    F(2^3, 3^3) would start only above 8x as many 2x2x2 tiles less one (a volume of fewer than 64
    4x4x4 tiles has at most 8 x 63 = 504 2x2x2 tiles)."""
    check_rule_arguments("winograd_runs", isa, pass_name)
    return not (pass_name in WINOGRAD4_PASSES[isa] and WINOGRAD_MIN_TILES[isa] > 8 * (WINOGRAD4_MIN_TILES - 1))


def winograd_convolves(isa):
    """False where the rule never runs F(2^3, 3^3)'s forward or grad-input (`winograd_runs`): both
    instruction sets today."""
    return winograd_runs(isa, "forward") or winograd_runs(isa, "grad_input")


def winograd_applies(kernel_size, stride, padding):
    """Winograd (F(2^3, 3^3) and F(4^3, 3^3)) computes exactly the 3x3x3, stride-1, padding-1 convolution."""
    return kernel_size == (3, 3, 3) and stride == (1, 1, 1) and padding == (1, 1, 1)


def conv_algorithm(kernel_size, stride, padding, in_channels, out_channels, input_shape, pass_name="forward",
                   isa=None):
    """'direct', 'winograd' or 'winograd4' for the pass `pass_name` ('forward', 'grad_input',
    'grad_weight', or 'inference': a forward that no backward follows) of a Conv3d with these
    hyper-parameters and an input of input_shape (N, Cin, D, H, W), on the instruction set `isa`
    (None: COMPILED_FOR, the one this process's kernels are compiled for)."""
    forced = os.environ.get("NN3D_CONV", "")
    if forced and forced not in ALGORITHMS:
        raise ValueError(f"NN3D_CONV must be one of {', '.join(ALGORITHMS)}, got {forced!r}")
    if not winograd_applies(kernel_size, stride, padding):
        return "direct"
    if forced:
        return forced
    isa = isa or COMPILED_FOR
    if winograd4_wins(isa, pass_name, in_channels, out_channels, output_tiles(input_shape, 4)):
        return "winograd4"
    wins = winograd_wins(isa, pass_name, in_channels, out_channels, output_tiles(input_shape))
    return "winograd" if wins else "direct"
