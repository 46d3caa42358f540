"""What a kernel check is: the register of checks (`KERNELS`, filled by `checks`), the tolerance rule,
the register-tile widths every tiled kernel runs at, and the small vocabulary the case modules build
their cases and data from. The rule for the tolerances is in nn3d/kernels/check/__init__.py."""
import math
import types

import numpy as np

from .. import register_tile

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


# ---- the kernels, their references and their cases ----------------------------------------------
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
