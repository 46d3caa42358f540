"""Checks of the transposed convolution (nn3d/conv_transpose3d.py's two paths): the kernel == stride
block kernels (conv_transpose3d.py), and the general path, which runs the direct convolution's
functions with the transposed convolution's arguments, as the layer calls them: forward y =
conv3d_grad_input(x) + b, grad-input conv3d_forward(dy_full), grad-weight
conv3d_grad_weight(dy_full, x), dy_full = dy zero-padded by the padding (pad_channels_last)."""
import math

from ...core.shapes import transposed_output_size
from .. import conv3d, conv3d_grad_weight, conv_transpose3d, padding, reference
from .registry import case, checks, normal, short, size_label, triple, widen

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


# ---- the general path: any kernel, stride and padding (through conv3d.py, conv3d_grad_weight.py) ----
def general_case(batch, cin, cout, size, kernel, stride, padding_):
    kernel, stride, padding_ = triple(kernel), triple(stride), triple(padding_)
    label = f"N{batch} {size_label(size)} {cin}->{cout} k{short(kernel)} s{short(stride)} p{short(padding_)}"
    return case(label, batch=batch, cin=cin, cout=cout, size=tuple(size), kernel=kernel, stride=stride,
                padding=padding_, out=transposed_output_size(size, kernel, stride, padding_))


GENERAL_CASES = (general_case(2, 3, 17, (3, 4, 5), 3, 2, 1),                          # overlapping blocks, Cout tail
                 general_case(2, 1, 1, (4, 3, 5), (3, 2, 3), (1, 2, 2), (1, 0, 2)))   # C = 1, per-axis arguments


def general_data(case, dtype, rng):
    """x (N, D, H, W, Cin), weight (Cin, Cout, kD, kH, kW), bias (Cout,), grad_output (N, Do, Ho, Wo, Cout)."""
    if case.kernel == case.stride and case.padding == NO_PADDING:
        raise ValueError("this case takes the block kernels, not the general path")
    return (normal(rng, (case.batch, *case.size, case.cin), dtype),
            normal(rng, (case.cin, case.cout, *case.kernel), dtype), normal(rng, case.cout, dtype),
            normal(rng, (case.batch, *case.out, case.cout), dtype))


@checks("conv_transpose3d_general_forward", "conv_transpose3d", "conv3d.py: conv3d_grad_input",
        "reference.py: conv_transpose3d_forward_reference", GENERAL_CASES, tiled=True)
def check_conv_transpose3d_general_forward(case, dtype, width, rng):
    x, weight, bias, _ = general_data(case, dtype, rng)
    ours = conv3d.conv3d_grad_input(x, weight, case.out, case.stride, case.padding, width)
    ours += bias
    expected = reference.conv_transpose3d_forward_reference(*widen(x, weight, bias), case.stride, case.padding)
    return [(None, ours, expected, case.cin * math.prod(case.kernel) + 1)]          # the sum, then the bias


@checks("conv_transpose3d_general_grad_input", "conv_transpose3d", "conv3d.py: conv3d_forward",
        "reference.py: conv_transpose3d_grad_input_reference", GENERAL_CASES, tiled=True)
def check_conv_transpose3d_general_grad_input(case, dtype, width, rng):
    _, weight, _, grad_output = general_data(case, dtype, rng)
    grad_full = padding.pad_channels_last(grad_output, case.padding)
    ours = conv3d.conv3d_forward(grad_full, weight, None, case.stride, width)
    expected = reference.conv_transpose3d_grad_input_reference(*widen(grad_output, weight), case.stride,
                                                               case.padding)
    return [(None, ours, expected, case.cout * math.prod(case.kernel))]


@checks("conv_transpose3d_general_grad_weight", "conv_transpose3d", "conv3d_grad_weight.py",
        "reference.py: conv_transpose3d_grad_weight_reference", GENERAL_CASES, tiled=True)
def check_conv_transpose3d_general_grad_weight(case, dtype, width, rng):
    x, _, _, grad_output = general_data(case, dtype, rng)
    grad_full = padding.pad_channels_last(grad_output, case.padding)
    ours = conv3d_grad_weight.conv3d_grad_weight(grad_full, x, case.kernel, case.stride, width)
    expected = reference.conv_transpose3d_grad_weight_reference(*widen(x, grad_output), case.kernel, case.stride,
                                                                case.padding)
    return [(None, ours, expected, math.prod(x.shape[:4]))]
