"""Every fast kernel against its plain reference, from the command line: what `nn3d.gradcheck` is for
a layer's backward pass, this is for the kernels under it.

    python -m nn3d.kernels.check                        # every kernel (the first run compiles them)
    python -m nn3d.kernels.check winograd relu_backward # kernels by name, or a family of them
    python -m nn3d.kernels.check --list                 # names; where each kernel and reference live

Each kernel runs through the public function the layers call, on small odd shapes (non-cubic, odd
sizes, batch 2, C = 1 where it means something, channel counts that are not multiples of 16), in
float32 and float64, and the convolutions at every register-tile width (`tile_widths`: 8 and 4;
Winograd's products `PRODUCT_WIDTHS`: 8, 6 and 4 rows; the width is an argument of the kernels, so
every one runs on any CPU). Its reference runs in float64 on
the same values (float32 inputs widened exactly), so the error shown is the kernel's own, against
exact arithmetic: max |kernel - reference| and that over max |reference| (gradcheck's measure).
Exit status: 0 when every row passes, 1 when one fails, 2 for a name that is not a kernel.

The references: nn3d/kernels/reference.py (direct and transposed convolution, the pointwise head as
a 1x1x1 convolution, BatchNorm, ReLU, max-pool, channel sums); nn3d/kernels/winograd/algorithm.py
(Winograd's forward and its filter transforms); winograd_grad_weight_reference in
nn3d/kernels/winograd/grad_weight.py. Winograd's grad-input has no reference of its own: it is
checked against the direct conv3d_grad_input_reference, the convolution it must equal.

Tolerances, on the relative error (`tolerance`):
- float64: 1e-12. A sum of L terms rounds to ~1.1e-16 * sqrt(L) of its scale (measured here: at
  most 4e-15); a wrong index or a missing term is off by 1e-2 or more (no grey zone, as in gradcheck).
- float32: 10 * eps * sqrt(L), eps = 2^-23 and L the length of the float32 sums behind each output
  (Cin * k^3 for a forward pass, the voxels for a grad-weight; 1 where the kernel sums in float64
  and rounds once). The rounding errors of L additions add up like a random walk, ~eps * sqrt(L)
  at most relative to the output's scale; 10x covers the maximum over all outputs and Winograd's
  transforms, whose intermediate values exceed the outputs (measured: 1/100 to 1/15 of it). The
  largest here is 3e-5 (L = 660), still 300x below a missing term.
- exact (tolerance 0): kernels that only select or move values (ReLU, max-pool's maximum and
  argmax, the tiled max-pool backward, the flipped filter transform's gather).
"""
import difflib
import math
import sys
import types

import numpy as np

from ..core.shapes import window_output_size
from ..gradcheck import max_absolute_error, max_relative_error
from . import (batchnorm3d, channel_sum, conv3d, conv3d_grad_weight, conv_transpose3d, maxpool3d, pointwise,
               reference, register_tile, relu)
from .padding import pad_channels_last
from .winograd import algorithm as winograd_algorithm
from .winograd import convolution as winograd_convolution
from .winograd import filter_transform as winograd_filter_transform
from .winograd import grad_weight as winograd_grad_weight

DTYPES = (np.float32, np.float64)
FLOAT64_TOLERANCE = 1e-12
FLOAT32_FACTOR = 10          # float32 tolerance: FLOAT32_FACTOR * eps * sqrt(L)
SEED = 0


# CPUs `register_tile.tile_width` tells apart: AVX-512, AVX2 without it, neither
CPU_FEATURES = ("+avx2,+fma,+avx512f", "+avx2,+fma,-avx512f", "-avx2,-fma,-avx512f")


def tile_widths():
    """Every register-tile width the convolution kernels have, widest first: the ones
    `register_tile.tile_width` picks for the CPUs of CPU_FEATURES (today 8 with AVX-512, 4 without)."""
    return tuple(sorted({register_tile.tile_width(features) for features in CPU_FEATURES}, reverse=True))


# Winograd's products tile rows of their own (winograd/products.py): AVX-512's 8 rows, AVX2's 6 rows
# then 4, and 4 alone; the `block_rows` argument selects one, so all three run on any CPU.
PRODUCT_WIDTHS = (8, 6, 4)


def tolerance(dtype, length):
    """The largest relative error that passes for an output of `dtype` whose entries are float32 (or
    float64) sums of `length` terms; length 0: the kernel only moves values, which must be exact."""
    if length == 0:
        return 0.0
    if np.dtype(dtype) == np.float64:
        return FLOAT64_TOLERANCE
    return FLOAT32_FACTOR * float(np.finfo(np.float32).eps) * math.sqrt(length)


# ---- the kernels, their references and their cases -----------------------------------------------
KERNELS = {}    # name -> kernel (a SimpleNamespace: name, family, source, reference, cases, tiled, run)


def checks(name, family, source, reference_name, cases, tiled=False, outputs=(None,)):
    """Register `run(case, dtype, width, rng)` as the check of kernel `name`: it returns a list of
    (output name, the kernel's result, the float64 reference's, L for `tolerance`), one per name in
    `outputs` (None: the kernel's one output). tiled: True to run at every register-tile width
    (`tile_widths`), or the tuple of widths the kernel takes (Winograd's PRODUCT_WIDTHS)."""
    def register(run):
        KERNELS[name] = types.SimpleNamespace(name=name, family=family, source=source,
                                              reference=reference_name, cases=tuple(cases), tiled=tiled,
                                              outputs=outputs, run=run)
        return run
    return register


def triple(value):
    return (value,) * 3 if isinstance(value, int) else tuple(value)


def size_label(size):
    return "x".join(str(s) for s in size)


def short(value):
    """A kernel size, stride or padding for a case's label: 3 for (3, 3, 3), else 3,2,3."""
    value = triple(value)
    return str(value[0]) if len(set(value)) == 1 else ",".join(str(v) for v in value)


def case(label, **parameters):
    return types.SimpleNamespace(label=label, **parameters)


def conv_case(batch, cin, cout, size, kernel=3, stride=1, padding=1, relu=False):
    """A convolution: cin an int, or a tuple of the channels of a decoder's two inputs (Winograd)."""
    channels = "+".join(str(c) for c in cin) if isinstance(cin, tuple) else str(cin)
    label = (f"N{batch} {size_label(size)} {channels}->{cout} k{short(kernel)} s{short(stride)} "
             f"p{short(padding)}" + (" relu" if relu else ""))
    return case(label, batch=batch, cin=cin, cout=cout, size=tuple(size), kernel=triple(kernel),
                stride=triple(stride), padding=triple(padding), relu=relu)


def widen(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float64) for a in arrays)


def normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def conv_data(case, dtype, rng):
    """x (N, D, H, W, Cin), weight (Cout, Cin, kD, kH, kW), bias (Cout,), standard normal."""
    return (normal(rng, (case.batch, *case.size, case.cin), dtype),
            normal(rng, (case.cout, case.cin, *case.kernel), dtype), normal(rng, case.cout, dtype))


def padded(x, padding):
    """Zero padding by NumPy, for the references (the kernels get pad_channels_last's)."""
    return np.pad(x, ((0, 0), *((p, p) for p in padding), (0, 0)))


# ---- direct convolution (conv3d.py, conv3d_grad_weight.py) ----------------------------------------
DIRECT_CASES = (conv_case(2, 3, 17, (5, 6, 11)),                                   # W, j and Cout tails
                conv_case(2, 1, 5, (7, 6, 9), (3, 2, 3), (2, 1, 2), (1, 0, 2), relu=True))   # C = 1, strided


def not_pointwise(case):
    if pointwise.is_pointwise(case.kernel, case.stride, case.cout):
        raise ValueError("this case takes the pointwise kernel, not the direct one")


@checks("conv3d_forward", "conv3d", "conv3d.py", "reference.py: conv3d_forward_reference", DIRECT_CASES, tiled=True)
def check_conv3d_forward(case, dtype, width, rng):
    not_pointwise(case)
    x, weight, bias = conv_data(case, dtype, rng)
    ours = conv3d.conv3d_forward(pad_channels_last(x, case.padding), weight, bias, case.stride, width, case.relu)
    expected = reference.conv3d_forward_reference(padded(*widen(x), case.padding), *widen(weight, bias), case.stride)
    if case.relu:
        expected = np.maximum(expected, 0)
    return [(None, ours, expected, case.cin * math.prod(case.kernel))]


def conv_grad_output(case, dtype, rng):
    out = window_output_size([s + 2 * p for s, p in zip(case.size, case.padding)], case.kernel, case.stride)
    return normal(rng, (case.batch, *out, case.cout), dtype)


@checks("conv3d_grad_input", "conv3d", "conv3d.py", "reference.py: conv3d_grad_input_reference", DIRECT_CASES,
        tiled=True)
def check_conv3d_grad_input(case, dtype, width, rng):
    not_pointwise(case)
    _, weight, _ = conv_data(case, dtype, rng)
    grad_output = conv_grad_output(case, dtype, rng)
    ours = conv3d.conv3d_grad_input(grad_output, weight, case.size, case.stride, case.padding, width)
    expected = reference.conv3d_grad_input_reference(*widen(grad_output, weight), case.size, case.stride,
                                                     case.padding)
    return [(None, ours, expected, case.cout * math.prod(case.kernel))]


@checks("conv3d_grad_weight", "conv3d", "conv3d_grad_weight.py", "reference.py: conv3d_grad_weight_reference",
        DIRECT_CASES, tiled=True)
def check_conv3d_grad_weight(case, dtype, width, rng):
    not_pointwise(case)
    x, _, _ = conv_data(case, dtype, rng)
    grad_output = conv_grad_output(case, dtype, rng)
    ours = conv3d_grad_weight.conv3d_grad_weight(pad_channels_last(x, case.padding), grad_output, case.kernel,
                                                 case.stride, width)
    expected = reference.conv3d_grad_weight_reference(padded(*widen(x), case.padding), *widen(grad_output),
                                                      case.kernel, case.stride)
    return [(None, ours, expected, math.prod(grad_output.shape[:4]))]


# ---- Winograd F(2^3, 3^3) (winograd/) ---------------------------------------------------------------
# odd sizes (partial tiles on the far faces), a Cout tail; C = 1 with W = 1; a decoder's two inputs
WINOGRAD_CASES = (conv_case(2, (3,), 17, (5, 6, 7)), conv_case(2, (1,), 1, (3, 4, 1)),
                  conv_case(2, (16, 5), 6, (3, 6, 5)))
WINOGRAD_FORWARD_CASES = WINOGRAD_CASES[:1] + (conv_case(2, (1,), 1, (3, 4, 1), relu=True),) + WINOGRAD_CASES[2:]


def winograd_data(case, dtype, rng):
    """inputs (a tuple of (N, D, H, W, C_j)), weight (Cout, sum C_j, 3, 3, 3), bias, grad_output."""
    inputs = tuple(normal(rng, (case.batch, *case.size, c), dtype) for c in case.cin)
    weight = normal(rng, (case.cout, sum(case.cin), 3, 3, 3), dtype)
    return (inputs, weight, normal(rng, case.cout, dtype),
            normal(rng, (case.batch, *case.size, case.cout), dtype))


@checks("winograd_forward", "winograd", "winograd/convolution.py",
        "winograd/algorithm.py: winograd_forward_reference", WINOGRAD_FORWARD_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd_forward(case, dtype, width, rng):
    inputs, weight, bias, _ = winograd_data(case, dtype, rng)
    u = winograd_filter_transform.filter_transform(weight)
    ours = winograd_convolution.winograd_forward(inputs, u, bias, case.cout, width, relu=case.relu)
    expected = winograd_algorithm.winograd_forward_reference(np.concatenate(widen(*inputs), axis=4),
                                                             *widen(weight, bias))
    if case.relu:
        expected = np.maximum(expected, 0)
    return [(None, ours, expected, sum(case.cin) * 27)]


@checks("winograd_grad_input", "winograd", "winograd/convolution.py", "reference.py: conv3d_grad_input_reference",
        WINOGRAD_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd_grad_input(case, dtype, width, rng):
    _, weight, _, grad_output = winograd_data(case, dtype, rng)
    u = winograd_filter_transform.filter_transform(weight)
    bands = winograd_convolution.winograd_grad_input(grad_output, u, case.cin, width)
    expected = reference.conv3d_grad_input_reference(*widen(grad_output, weight), case.size, (1, 1, 1), (1, 1, 1))
    return [(None, np.concatenate(bands, axis=4), expected, case.cout * 27)]


@checks("winograd_grad_weight", "winograd", "winograd/grad_weight.py",
        "winograd/grad_weight.py: winograd_grad_weight_reference", WINOGRAD_CASES, tiled=PRODUCT_WIDTHS)
def check_winograd_grad_weight(case, dtype, width, rng):
    inputs, _, _, grad_output = winograd_data(case, dtype, rng)
    ours = winograd_grad_weight.winograd_grad_weight(inputs, grad_output, width)
    expected = winograd_grad_weight.winograd_grad_weight_reference(np.concatenate(widen(*inputs), axis=4),
                                                                   *widen(grad_output))
    return [(None, ours, expected, math.prod(grad_output.shape[:4]))]


FILTER_CASES = (case("17->3 weight", cout=17, cin=3), case("5->18 weight", cout=5, cin=18))   # tails either way


def packed(u):
    """U (4, 4, 4, Cout, Cin) -> the kernels' layout (64, Cout_padded/16, Cin, 16), zeros past Cout."""
    cout, cin = u.shape[3:]
    block = register_tile.BLOCK_C
    u = np.concatenate([u.reshape(64, cout, cin), np.zeros((64, register_tile.padded_channels(cout) - cout, cin))],
                       axis=1)
    return u.reshape(64, -1, block, cin).transpose(0, 1, 3, 2)


def unpacked(u_packed, cout):
    """The kernels' (64, Cout_padded/16, Cin, 16) -> U (4, 4, 4, Cout, Cin)."""
    cin = u_packed.shape[2]
    return u_packed.transpose(0, 1, 3, 2).reshape(64, -1, cin)[:, :cout].reshape(4, 4, 4, cout, cin)


@checks("filter_transform", "winograd", "winograd/filter_transform.py",
        "winograd/algorithm.py: filter_transform_reference", FILTER_CASES)
def check_filter_transform(case, dtype, width, rng):
    weight = normal(rng, (case.cout, case.cin, 3, 3, 3), dtype)
    ours = winograd_filter_transform.filter_transform(weight)
    return [(None, ours, packed(winograd_algorithm.filter_transform_reference(*widen(weight))), 1)]   # one rounding


@checks("flipped_transposed_transform", "winograd", "winograd/filter_transform.py",
        "winograd/algorithm.py: flipped_transposed_transform_reference", FILTER_CASES)
def check_flipped_transposed_transform(case, dtype, width, rng):
    u_packed = winograd_filter_transform.filter_transform(normal(rng, (case.cout, case.cin, 3, 3, 3), dtype))
    ours = winograd_filter_transform.flipped_transposed_transform(u_packed, case.cout)
    expected = packed(winograd_algorithm.flipped_transposed_transform_reference(*widen(unpacked(u_packed,
                                                                                                case.cout))))
    return [(None, ours, expected, 0)]                                                        # a gather


# ---- transposed convolution, kernel == stride (conv_transpose3d.py) ------------------------------
def transposed_case(batch, cin, cout, size, kernel):
    kernel = triple(kernel)
    label = f"N{batch} {size_label(size)} {cin}->{cout} k=s{short(kernel)}"
    return case(label, batch=batch, cin=cin, cout=cout, size=tuple(size), kernel=kernel)


TRANSPOSED_CASES = (transposed_case(2, 20, 17, (3, 2, 9), 2),          # W = 9: 8 + 1 and 4 + 4 + 1
                    transposed_case(2, 1, 1, (2, 3, 5), (3, 1, 2)))     # C = 1, non-cubic kernel


def transposed_data(case, dtype, rng):
    """x (N, D, H, W, Cin), weight (Cin, Cout, kD, kH, kW), bias, grad_output (N, D*kD, ..., Cout)."""
    out = tuple(s * k for s, k in zip(case.size, case.kernel))
    return (normal(rng, (case.batch, *case.size, case.cin), dtype),
            normal(rng, (case.cin, case.cout, *case.kernel), dtype), normal(rng, case.cout, dtype),
            normal(rng, (case.batch, *out, case.cout), dtype))


NO_PADDING = (0, 0, 0)


@checks("conv_transpose3d_blocks_forward", "conv_transpose3d", "conv_transpose3d.py",
        "reference.py: conv_transpose3d_forward_reference", TRANSPOSED_CASES, tiled=True)
def check_conv_transpose3d_forward(case, dtype, width, rng):
    x, weight, bias, _ = transposed_data(case, dtype, rng)
    ours = conv_transpose3d.conv_transpose3d_blocks_forward(x, weight, bias, width)
    expected = reference.conv_transpose3d_forward_reference(*widen(x, weight, bias), case.kernel, NO_PADDING)
    return [(None, ours, expected, case.cin)]


@checks("conv_transpose3d_blocks_grad_input", "conv_transpose3d", "conv_transpose3d.py",
        "reference.py: conv_transpose3d_grad_input_reference", TRANSPOSED_CASES, tiled=True)
def check_conv_transpose3d_grad_input(case, dtype, width, rng):
    x, weight, _, grad_output = transposed_data(case, dtype, rng)
    ours = conv_transpose3d.conv_transpose3d_blocks_grad_input(grad_output, weight, x.shape[:4], width)
    expected = reference.conv_transpose3d_grad_input_reference(*widen(grad_output, weight), case.kernel,
                                                               NO_PADDING)
    return [(None, ours, expected, case.cout * math.prod(case.kernel))]


@checks("conv_transpose3d_blocks_grad_weight", "conv_transpose3d", "conv_transpose3d.py",
        "reference.py: conv_transpose3d_grad_weight_reference", TRANSPOSED_CASES, tiled=True)
def check_conv_transpose3d_grad_weight(case, dtype, width, rng):
    x, _, _, grad_output = transposed_data(case, dtype, rng)
    ours = conv_transpose3d.conv_transpose3d_blocks_grad_weight(x, grad_output, case.kernel, width)
    expected = reference.conv_transpose3d_grad_weight_reference(*widen(x, grad_output), case.kernel, case.kernel,
                                                                NO_PADDING)
    return [(None, ours, expected, math.prod(x.shape[:4]))]


# ---- the pointwise head (pointwise.py), through the conv3d functions that dispatch to it -------------
POINTWISE_CASES = (conv_case(2, 19, 3, (3, 4, 5), 1, 1, 0),       # a 16-channel block + 3 left over
                   conv_case(2, 16, 1, (5, 6, 7), 1, 1, 0))       # the U-Net's head: 16 -> 1


def pointwise_data(case, dtype, rng):
    if not pointwise.is_pointwise(case.kernel, case.stride, case.cout):
        raise ValueError("this case does not take the pointwise kernel")
    x, weight, bias = conv_data(case, dtype, rng)
    return x, weight, bias, normal(rng, (case.batch, *case.size, case.cout), dtype)


@checks("pointwise_forward", "pointwise", "pointwise.py", "reference.py: conv3d_forward_reference (1x1x1)",
        POINTWISE_CASES)
def check_pointwise_forward(case, dtype, width, rng):
    x, weight, bias, _ = pointwise_data(case, dtype, rng)
    ours = conv3d.conv3d_forward(x, weight, bias, case.stride)
    return [(None, ours, reference.conv3d_forward_reference(*widen(x, weight, bias), case.stride), case.cin)]


@checks("pointwise_grad_input", "pointwise", "pointwise.py", "reference.py: conv3d_grad_input_reference (1x1x1)",
        POINTWISE_CASES)
def check_pointwise_grad_input(case, dtype, width, rng):
    _, weight, _, grad_output = pointwise_data(case, dtype, rng)
    ours = conv3d.conv3d_grad_input(grad_output, weight, case.size, case.stride, case.padding)
    expected = reference.conv3d_grad_input_reference(*widen(grad_output, weight), case.size, case.stride,
                                                     case.padding)
    return [(None, ours, expected, case.cout)]


@checks("pointwise_grad_weight", "pointwise", "pointwise.py", "reference.py: conv3d_grad_weight_reference (1x1x1)",
        POINTWISE_CASES)
def check_pointwise_grad_weight(case, dtype, width, rng):
    x, _, _, grad_output = pointwise_data(case, dtype, rng)
    ours = conv3d_grad_weight.conv3d_grad_weight(x, grad_output, case.kernel, case.stride)
    expected = reference.conv3d_grad_weight_reference(*widen(x, grad_output), case.kernel, case.stride)
    return [(None, ours, expected, 1)]                         # summed in float64, rounded once


# ---- BatchNorm + ReLU (batchnorm3d.py) and ReLU (relu.py), on flat (P, C) arrays ---------------------
def flat_case(batch, size, channels, relu=None):
    label = f"N{batch} {size_label(size)} C{channels}" + ("" if relu is None else " relu" if relu else " no relu")
    return case(label, rows=batch * math.prod(size), channels=channels, relu=relu)


BATCHNORM_CASES = (flat_case(2, (3, 5, 7), 1, relu=False), flat_case(2, (5, 4, 3), 17, relu=True))


def batchnorm_data(case, dtype, rng):
    """x (P, C) around 1; scale, shift, mean, mean_dy, x_hat_coefficient (C,); grad_output (P, C)."""
    x = (1 + rng.standard_normal((case.rows, case.channels))).astype(dtype)
    vectors = [normal(rng, case.channels, dtype) for _ in range(5)]
    return x, vectors, normal(rng, (case.rows, case.channels), dtype)


@checks("batchnorm_affine", "batchnorm3d", "batchnorm3d.py", "reference.py: batchnorm_affine_reference",
        BATCHNORM_CASES)
def check_batchnorm_affine(case, dtype, width, rng):
    x, (scale, shift, _, _, _), _ = batchnorm_data(case, dtype, rng)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    batchnorm3d.batchnorm_affine(x, scale, shift, case.relu, ours)
    reference.batchnorm_affine_reference(*widen(x, scale, shift), case.relu, expected)
    return [(None, ours, expected, 2)]                             # a product and a sum


@checks("batchnorm_backward_input", "batchnorm3d", "batchnorm3d.py",
        "reference.py: batchnorm_backward_input_reference", BATCHNORM_CASES)
def check_batchnorm_backward_input(case, dtype, width, rng):
    x, (scale, shift, mean, mean_dy, coefficient), grad_output = batchnorm_data(case, dtype, rng)
    output = np.empty_like(x)                                      # the forward's y: ReLU's mask
    reference.batchnorm_affine_reference(x, scale, shift, case.relu, output)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    batchnorm3d.batchnorm_backward_input(x, grad_output, output, case.relu, mean, scale, mean_dy, coefficient, ours)
    reference.batchnorm_backward_input_reference(*widen(x, grad_output, output), case.relu,
                                                 *widen(mean, scale, mean_dy, coefficient), expected)
    return [(None, ours, expected, 4)]                             # two differences, a product, a scale


RELU_CASES = (flat_case(2, (3, 5, 7), 3),)


def relu_data(case, dtype, rng):
    """x flat, a fifth of it exact zeros (where the convention matters), and a gradient."""
    x = rng.standard_normal(case.rows * case.channels)
    x[rng.random(x.size) < 0.2] = 0
    return x.astype(dtype), normal(rng, x.size, dtype)


@checks("relu_forward", "relu", "relu.py", "reference.py: relu_forward_reference", RELU_CASES)
def check_relu_forward(case, dtype, width, rng):
    x, _ = relu_data(case, dtype, rng)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    relu.relu_forward(x, ours)
    reference.relu_forward_reference(*widen(x), expected)
    return [(None, ours, expected, 0)]


@checks("relu_backward", "relu", "relu.py", "reference.py: relu_backward_reference", RELU_CASES)
def check_relu_backward(case, dtype, width, rng):
    x, grad_output = relu_data(case, dtype, rng)
    y = np.maximum(x, 0)
    ours, expected = np.empty_like(x), np.empty(x.shape)
    relu.relu_backward(y, grad_output, ours)
    reference.relu_backward_reference(*widen(y, grad_output), expected)
    return [(None, ours, expected, 0)]


# ---- max-pool (maxpool3d.py) --------------------------------------------------------------------------
def pool_case(batch, size, channels, kernel, stride):
    kernel, stride = triple(kernel), triple(stride)
    label = f"N{batch} {size_label(size)} C{channels} k{short(kernel)} s{short(stride)}"
    return case(label, batch=batch, size=tuple(size), channels=channels, kernel=kernel, stride=stride)


POOL_CASES = (pool_case(2, (5, 6, 7), 3, 2, 2),                         # floor drops the last voxels
              pool_case(2, (7, 6, 9), 1, (3, 2, 2), (2, 1, 2)))         # C = 1, windows overlap along d
TILED_POOL_CASES = (POOL_CASES[0], pool_case(2, (5, 7, 6), 1, (2, 3, 1), (2, 3, 1)))   # stride == kernel


def pool_forward(case, dtype, rng):
    """x: ReLU of noise (half exact zeros: all-zero windows tie) (N, D, H, W, C), and the reference's
    y (float64) and argmax."""
    x = np.maximum(rng.standard_normal((case.batch, *case.size, case.channels)), 0).astype(dtype)
    out = window_output_size(case.size, case.kernel, case.stride)
    y, argmax = np.empty((case.batch, *out, case.channels)), np.empty((case.batch, *out, case.channels), np.uint8)
    reference.maxpool3d_forward_reference(*widen(x), *case.kernel, *case.stride, y, argmax)
    return x, y, argmax


@checks("maxpool3d_forward", "maxpool3d", "maxpool3d.py", "reference.py: maxpool3d_forward_reference", POOL_CASES,
        outputs=("y", "argmax"))
def check_maxpool3d_forward(case, dtype, width, rng):
    x, expected, expected_argmax = pool_forward(case, dtype, rng)
    ours, argmax = np.empty(expected.shape, dtype), np.empty_like(expected_argmax)
    maxpool3d.maxpool3d_forward(x, *case.kernel, *case.stride, ours, argmax)
    return [("y", ours, expected, 0), ("argmax", argmax, expected_argmax, 0)]


def overlaps(case):
    """The most windows one input voxel lies in; (B) sums that many gradients there."""
    return math.prod(-(-k // s) for k, s in zip(case.kernel, case.stride))


@checks("maxpool3d_backward", "maxpool3d", "maxpool3d.py", "reference.py: maxpool3d_backward_reference", POOL_CASES)
def check_maxpool3d_backward(case, dtype, width, rng):
    x, y, argmax = pool_forward(case, dtype, rng)
    grad_output = normal(rng, y.shape, dtype)
    ours, expected = np.zeros_like(x), np.zeros(x.shape)
    maxpool3d.maxpool3d_backward(grad_output, argmax, *case.kernel, *case.stride, ours)
    reference.maxpool3d_backward_reference(*widen(grad_output), argmax, *case.kernel, *case.stride, expected)
    return [(None, ours, expected, overlaps(case) - 1)]           # one addition per extra window


@checks("maxpool3d_backward_tiled", "maxpool3d", "maxpool3d.py", "reference.py: maxpool3d_backward_reference",
        TILED_POOL_CASES)
def check_maxpool3d_backward_tiled(case, dtype, width, rng):
    x, y, argmax = pool_forward(case, dtype, rng)
    grad_output = normal(rng, y.shape, dtype)
    ours, expected = np.full_like(x, np.nan), np.zeros(x.shape)   # NaN: every element must be written
    maxpool3d.maxpool3d_backward_tiled(grad_output, argmax, *case.kernel, ours)
    reference.maxpool3d_backward_reference(*widen(grad_output), argmax, *case.kernel, *case.stride, expected)
    return [(None, ours, expected, 0)]


# ---- channel sums (channel_sum.py) ---------------------------------------------------------------------
def sums_case(rows, channels, terms):
    return case(f"P{rows} C{channels} {terms}", rows=rows, channels=channels, terms=terms)


CHUNK_ROWS = channel_sum.ROWS_PER_CHUNK
SUMS_CASES = (sums_case(2 * CHUNK_ROWS + 37, 3, "a"),               # two chunks and a tail
              sums_case(2 * CHUNK_ROWS + 37, 3, "a, a(b-s)"), sums_case(2 * CHUNK_ROWS + 37, 3, "masked"),
              sums_case(5, 1, "masked"))                              # less than a chunk, C = 1


@checks("channel_sums", "channel_sums", "channel_sum.py", "reference.py: channel_sums_reference", SUMS_CASES)
def check_channel_sums(case, dtype, width, rng):
    a = (1 + rng.standard_normal((case.rows, case.channels))).astype(dtype)
    b = (3 + rng.standard_normal((case.rows, case.channels))).astype(dtype)
    shift = rng.standard_normal(case.channels)
    mask = np.maximum(rng.standard_normal((case.rows, case.channels)), 0).astype(dtype)   # a ReLU's output
    arguments = {"a": (a,), "a, a(b-s)": (a, b, shift), "masked": (a, b, shift, mask)}[case.terms]
    ours = channel_sum.channel_sums(*arguments)
    expected = reference.channel_sums_reference(*widen(*arguments))
    stack = lambda sums: np.stack(sums if isinstance(sums, tuple) else (sums,))
    return [(None, stack(ours), stack(expected), case.rows)]      # float64 sums: float64's tolerance


# ---- running the checks and printing the table ---------------------------------------------------------
def rows_of(kernel):
    """(case number, case, dtype, width) for every row of a kernel; width None for kernels without a
    register tile. Every row of a case draws the same random numbers (float32 gets them rounded)."""
    widths = kernel.tiled if isinstance(kernel.tiled, tuple) else tile_widths() if kernel.tiled else (None,)
    return [(number, case, dtype, width) for number, case in enumerate(kernel.cases)
            for dtype in DTYPES for width in widths]


def row_name(kernel_name, output):
    return kernel_name if output is None else f"{kernel_name}: {output}"


def run_kernel(kernel, report):
    """Run every case of one kernel; report(...) each output. Returns the number of failed rows."""
    failures = 0
    for number, case, dtype, width in rows_of(kernel):
        rng = np.random.default_rng([SEED, number])
        try:
            outputs = kernel.run(case, dtype, width, rng)
        except Exception as error:                          # a crash is a failure of that row, not the run
            report(kernel.name, case, dtype, width, None, None, None, f"error: {type(error).__name__}: {error}")
            failures += 1
            continue
        for output, ours, expected, length in outputs:
            name = row_name(kernel.name, output)
            ours = np.asarray(ours)
            limit = tolerance(ours.dtype if np.issubdtype(ours.dtype, np.floating) else dtype, length)
            if ours.shape != np.shape(expected):
                report(name, case, dtype, width, None, None, limit, f"FAIL: shape {ours.shape}, expected "
                                                                    f"{np.shape(expected)}")
                failures += 1
                continue
            relative = max_relative_error(ours, expected)
            passed = relative <= limit                      # NaN compares False: a NaN fails
            failures += not passed
            report(name, case, dtype, width, max_absolute_error(ours, expected), relative, limit,
                   "pass" if passed else "FAIL")
    return failures


def select(names):
    """The kernels named (by kernel or family name, in registration order), or the unknown name."""
    for name in names:
        if not any(name in (kernel.name, kernel.family) for kernel in KERNELS.values()):
            return None, name
    return [kernel for kernel in KERNELS.values() if not names or {kernel.name, kernel.family} & set(names)], None


def print_list():
    families = list(dict.fromkeys(kernel.family for kernel in KERNELS.values()))
    print(f"{'family':<18}{'kernel':<37}{'fast kernel (nn3d/kernels/)':<34}reference (nn3d/kernels/)")
    for family in families:
        for kernel in (k for k in KERNELS.values() if k.family == family):
            print(f"{family:<18}{kernel.name:<37}{kernel.source:<34}{kernel.reference}")
    print(f"\nwidths of the register tiles: {', '.join(map(str, tile_widths()))} "
          f"(this CPU compiles for {register_tile.BLOCK_W})")


def unknown_name_line(name):
    names = sorted({kernel.name for kernel in KERNELS.values()} | {kernel.family for kernel in KERNELS.values()})
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"python -m nn3d.kernels.check: no kernel or family '{name}'{hint} (--list lists them)"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nn3d.kernels.check",
        description="Check nn3d's fast kernels against their plain NumPy references in float32 and "
                    "float64 at every register-tile width.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="kernels or families to check (default: all; --list lists them)")
    parser.add_argument("--list", action="store_true", help="list the kernels, their files and references")
    parser.error = lambda message: (print(f"python -m nn3d.kernels.check: {message}", file=sys.stderr),
                                    sys.exit(2))
    args = parser.parse_args(argv)
    if args.list:
        print_list()
        return 0
    kernels, unknown = select(args.names)
    if unknown is not None:
        print(unknown_name_line(unknown), file=sys.stderr)
        return 2

    kernel_width = max(len(row_name(kernel.name, output)) for kernel in kernels for output in kernel.outputs) + 2
    case_width = max(len(case.label) for kernel in kernels for case in kernel.cases) + 2
    print(f"nn3d kernels vs their plain references, register-tile widths {' and '.join(map(str, tile_widths()))} "
          f"(this CPU compiles for {register_tile.BLOCK_W})")
    print("(pass: max relative error <= tolerance; relative to max |reference|, the reference in float64)")
    print(f"{'kernel':<{kernel_width}}{'case':<{case_width}}{'dtype':<9}{'width':>5}{'max abs err':>14}"
          f"{'max rel err':>14}{'tolerance':>11}  result")
    messages = []
    rows = 0

    def report(name, case, dtype, width, absolute, relative, limit, result):
        nonlocal rows
        rows += 1
        if result not in ("pass", "FAIL"):
            messages.append(f"  {name}, {case.label}, {np.dtype(dtype).name}, width {width or '-'}: {result}")
            result = "FAIL"
        number = lambda value, digits=3: f"{value:.{digits}e}" if value is not None else "-"
        limit_text = "-" if limit is None else "0" if limit == 0 else number(limit, 1)
        print(f"{name:<{kernel_width}}{case.label:<{case_width}}{np.dtype(dtype).name:<9}"
              f"{width or '-':>5}{number(absolute):>14}{number(relative):>14}{limit_text:>11}  {result}",
              flush=True)

    failed = [kernel.name for kernel in kernels if run_kernel(kernel, report)]
    if messages:
        print("\nerrors:\n" + "\n".join(messages))
    if failed:
        print(f"\nKERNEL CHECK FAILED: {', '.join(failed)}")
        return 1
    print(f"\nall {rows} checks pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
