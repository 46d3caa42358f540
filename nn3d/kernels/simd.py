"""Explicit SIMD vectors for register tiles that LLVM's SLP vectoriser does not keep in registers by
itself: an LLVM vector value (<16 x float>, or double) that Numba carries as one local variable.

The register tiles elsewhere are tuples of 16 scalars, which the SLP vectoriser turns into vector
registers (nn3d/kernels/jit.py, register_tile.py). That works for tiles of 8 vectors of accumulators
(AVX-512: 8 x 16 = 8 zmm; AVX2: 4 x 16 = 8 ymm), but on AVX2 (16 ymm registers of 8 floats), read
from the assembly (docs/performance.md, "AVX2 (Zen 2/3)"):
- a tile of 6 rows x 16 channels, the classic AVX2 matrix-product tile (12 ymm accumulators, 2 for
  the 16 weights, 1 broadcast), came out with its accumulators taken apart into scalars and put
  back together around every FMA (`vinsertps`, 100-180 stack accesses per loop iteration); so did
  5 x 16, 3 x 32 and 8 x 16 (the SLP vectoriser keeps loop-carried tuples in vectors only for some
  accumulator counts);
- Winograd grad-weight's 4 x 16 tile had its accumulators permuted by shuffles on every iteration
  (8x slower than the forward's 4 x 16 products at the same FLOPs).
A `Vector` accumulator is a vector PHI from the start, which LLVM keeps in 2 ymm registers (1 zmm on
AVX-512) with no vectoriser having to find it: the 6 x 16 loop compiles to 2 vector loads, 6
broadcasts and 12 `vfmadd231ps ymm` with no stack access.

`load16v` and `store16v` are one vector load or store each (`at` unsigned, on a 1-D C-contiguous
array); under NUMBA_BOUNDSCHECK=1 they first read the vector's first and last elements through
Numba's checked indexing, so the bounds-checked test run covers them. The multiply-add is
`llvm.fma` (one rounding): the value the contracted acc + value * w of `fma16` gives (jit.py's FMA
contraction), so the same product computed with either kind of tile has the same bits.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

from .jit import tile_helper
from .register_tile import UINT

LANES = 16
CHECKED = bool(config.BOUNDSCHECK)       # NUMBA_BOUNDSCHECK=1: every vector access is checked too


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
def fma_v(typingctx, acc, value, w):
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
def add_v(typingctx, a, b):
    """a + b lane by lane."""
    if not (isinstance(a, Vector) and a == b):
        return None
    return a(a, b), lambda context, builder, signature, args: builder.fadd(args[0], args[1])


@intrinsic
def sub_v(typingctx, a, b):
    """a - b lane by lane."""
    if not (isinstance(a, Vector) and a == b):
        return None
    return a(a, b), lambda context, builder, signature, args: builder.fsub(args[0], args[1])


@intrinsic
def relu_v(typingctx, a):
    """max(0, a) lane by lane, as register_tile.relu16: 0 where a <= 0, a elsewhere (a NaN stays NaN)."""
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
    return (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"
            and flat.dtype in (types.float32, types.float64))


@intrinsic
def vector_load(typingctx, flat, at):
    """flat[at:at + LANES] as a Vector: one unaligned vector load, no bounds check."""
    if not (_is_flat(flat) and isinstance(at, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer, vector_type = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load(pointer, align=flat.dtype.bitwidth // 8, typ=vector_type)
    return Vector(flat.dtype)(flat, at), codegen


@intrinsic
def vector_store(typingctx, flat, at, vector):
    """flat[at:at + LANES] = vector: one unaligned vector store, no bounds check."""
    if not (_is_flat(flat) and isinstance(at, types.Integer) and vector == Vector(flat.dtype)):
        return None

    def codegen(context, builder, signature, args):
        pointer, _ = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], pointer, align=flat.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(flat, at, vector), codegen


@tile_helper
def load16v(flat, at):
    """flat[at:at + 16] as a Vector (flat 1-D C-contiguous, `at` unsigned)."""
    if CHECKED:
        flat[at] + flat[at + UINT[15]]
    return vector_load(flat, at)


@tile_helper
def store16v(flat, at, vector):
    """flat[at:at + 16] = vector (flat 1-D C-contiguous, `at` unsigned)."""
    if CHECKED:
        flat[at] + flat[at + UINT[15]]
    vector_store(flat, at, vector)
