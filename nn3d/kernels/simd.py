"""The 16-lane vector every register tile is made of: 16 channels (or 16 values of any axis) of
float32 or float64 in one LLVM vector value (<16 x float>) that Numba carries as one local variable,
and the operations the kernels apply to it: loads and stores (`load16`, `load16_at`, `store16`,
`store16_at`, `add_into16`), `fma16`, `add16`, `sub16`, `relu16`.

Why a vector type of our own. Numba keeps scalars and tuples in registers, never arrays, so a tile
could also be a tuple of 16 scalars, which LLVM's SLP vectoriser packs into vector registers
(docs/kernels/conv3d_steps.py, steps 2-3, shows how). Written as vectors from the start:
- every accumulator is a vector PHI that LLVM keeps in registers (1 zmm on AVX-512, 2 ymm on AVX2)
  with no vectoriser having to find it. Tuples were found only for some accumulator counts: on AVX2
  a 6 x 16 tile of tuples came out taken apart into scalars around every FMA (`vinsertps`, 100-180
  stack accesses per loop iteration), Winograd grad-weight's 4 x 16 tile permuted by shuffles;
  the vectors compile to 2 vector loads, 6 broadcasts and 12 `vfmadd231ps ymm` with no stack access;
- kernels compile up to about 3x faster (the warm-up's about 2x): one operation per vector instead
  of 16 scalar ones for Numba to type and lower and for LLVM to vectorise again
  (docs/performance.md, "Register tiles as vectors").

`load16*` and `store16*` are one vector load or store each, `add_into16` one of each (offsets
unsigned, arrays C-contiguous); under NUMBA_BOUNDSCHECK=1 they first read the vector's first and
last elements through Numba's checked indexing, so the bounds-checked test run covers them. The
multiply-add is `llvm.fma` (one rounding), as FMA contraction makes of a scalar acc + value * w
(nn3d/kernels/jit.py), so a product has the same bits in a tile as in a reference loop compiled
with contraction.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

import numpy as np

from .jit import tile_helper

LANES = 16
CHECKED = bool(config.BOUNDSCHECK)       # NUMBA_BOUNDSCHECK=1: every vector access is checked too
LAST = np.uint64(LANES - 1)              # a vector's last lane, unsigned
LANES_U = np.uint64(LANES)


class Vector(types.Type):
    """LANES values of `dtype` (float32 or float64) in one LLVM vector value."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vector({dtype}, {LANES})")


@register_model(Vector)
class VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), LANES))


def _splat(builder, vector_type, scalar):
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


@intrinsic
def fma16(typingctx, acc, value, w):
    """acc + value * w lane by lane, fused (llvm.fma: one rounding); the scalar `value` broadcast."""
    if not (isinstance(acc, Vector) and acc == w and isinstance(value, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(acc)
        splat = _splat(builder, vector_type, context.cast(builder, args[1], signature.args[1], acc.dtype))
        suffix = "f32" if acc.dtype == types.float32 else "f64"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
                                             f"llvm.fma.v{LANES}{suffix}")
        return builder.call(fma, [splat, args[2], args[0]])
    return acc(acc, value, w), codegen


@intrinsic
def add16(typingctx, a, b):
    """a + b lane by lane."""
    if not (isinstance(a, Vector) and a == b):
        return None
    return a(a, b), lambda context, builder, signature, args: builder.fadd(args[0], args[1])


@intrinsic
def sub16(typingctx, a, b):
    """a - b lane by lane."""
    if not (isinstance(a, Vector) and a == b):
        return None
    return a(a, b), lambda context, builder, signature, args: builder.fsub(args[0], args[1])


@intrinsic
def relu16(typingctx, a):
    """max(0, a) lane by lane: 0 where a <= 0, a elsewhere (a NaN stays NaN, as nn3d's ReLU)."""
    if not isinstance(a, Vector):
        return None

    def codegen(context, builder, signature, args):
        zero = ir.Constant(args[0].type, None)
        return builder.select(builder.fcmp_ordered("<=", args[0], zero), zero, args[0])
    return a(a), codegen


def _vector_pointer(context, builder, array_type, array, at):
    """flat[at]'s address as a pointer to LANES elements, and that vector type."""
    data = context.make_array(array_type)(context, builder, array).data
    element = context.get_data_type(array_type.dtype)
    vector_type = ir.VectorType(element, LANES)
    address = builder.gep(data, [at], source_etype=element)
    return builder.bitcast(address, vector_type.as_pointer()), vector_type


def _is_flat(flat):
    """A C-contiguous float array: its elements are read as one flat run."""
    return isinstance(flat, types.Array) and flat.layout == "C" and flat.dtype in (types.float32, types.float64)


@intrinsic
def vector_load(typingctx, flat, at):
    """flat[at:at + LANES] (flat: a C-contiguous array read as 1-D) as a Vector: one unaligned
    vector load, no bounds check."""
    if not (_is_flat(flat) and isinstance(at, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer, vector_type = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load(pointer, align=flat.dtype.bitwidth // 8, typ=vector_type)
    return Vector(flat.dtype)(flat, at), codegen


@intrinsic
def vector_store(typingctx, flat, at, vector):
    """flat[at:at + LANES] = vector (flat read as 1-D): one unaligned vector store, no bounds check."""
    if not (_is_flat(flat) and isinstance(at, types.Integer) and vector == Vector(flat.dtype)):
        return None

    def codegen(context, builder, signature, args):
        pointer, _ = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], pointer, align=flat.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(flat, at, vector), codegen


@tile_helper
def load16_at(flat, at):
    """flat[at:at + 16] as a Vector (flat 1-D C-contiguous, `at` unsigned)."""
    if CHECKED:
        flat[at] + flat[at + LAST]
    return vector_load(flat, at)


@tile_helper
def store16_at(flat, at, vector):
    """flat[at:at + 16] = vector (flat 1-D C-contiguous, `at` unsigned)."""
    if CHECKED:
        flat[at] + flat[at + LAST]
    vector_store(flat, at, vector)


@tile_helper
def load16(matrix, i):
    """matrix[i, 0:16] as a Vector (matrix (rows, 16) C-contiguous, `i` unsigned or a loop counter)."""
    if CHECKED:
        matrix[i, 0] + matrix[i, 15]
    return vector_load(matrix, np.uint64(i) * LANES_U)


@tile_helper
def store16(matrix, i, vector):
    """matrix[i, 0:16] = vector (matrix (rows, 16) C-contiguous)."""
    if CHECKED:
        matrix[i, 0] + matrix[i, 15]
    vector_store(matrix, np.uint64(i) * LANES_U, vector)


@tile_helper
def add_into16(flat, at, vector):
    """flat[at:at + 16] += vector (flat 1-D C-contiguous, `at` unsigned)."""
    store16_at(flat, at, add16(load16_at(flat, at), vector))
