"""Winograd F(2^3, 3^3) (nn3d/kernels/winograd/): the matrices against the direct 1-D sum, the plain
references (F(2^3, 3^3)'s and F(4^3, 3^3)'s) against the direct-convolution reference, and the fast
kernel against both."""
import numpy as np
import pytest

from nn3d.kernels import reference
from nn3d.kernels.padding import pad_channels_last
from nn3d.kernels.winograd.algorithm import (A_T, B_T, G, filter_transform_reference,
                                             flipped_transposed_transform_reference, winograd_forward_reference)
from nn3d.kernels.winograd.algorithm4 import winograd4_forward_reference
from nn3d.kernels.winograd.convolution import winograd_forward, winograd_grad_input
from nn3d.kernels.winograd.filter_transform import filter_transform, flipped_transposed_transform

from nn3d.kernels.register_tile import BLOCK_W

# the products' register tiles (winograd/products.py): AVX-512's 8 rows, AVX2's 6 rows then 4, and
# 4 alone
WIDTHS = [4, 6, 8]


def test_one_dimensional_f23_is_the_correlation():
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(4), rng.standard_normal(3)
    y = A_T @ ((G @ g) * (B_T @ d))                # 4 multiplications
    np.testing.assert_allclose(y, [d[0:3] @ g, d[1:4] @ g], rtol=0, atol=1e-14)


# (batch, Cin, Cout, (D, H, W)): sizes not multiples of the tile (partial last tiles of F(2^3, 3^3)
# and F(4^3, 3^3)), non-cubic, C = 1, Cin != Cout
REFERENCE_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 4, 2, (2, 9, 4)), (1, 4, 2, (2, 9, 13))]
# float64 rounding only: sums of ~100 terms of size ~1, through transforms with entries up to 2^3
# (F(2^3, 3^3)) and 8^3 (F(4^3, 3^3))
REFERENCES = [(winograd_forward_reference, 1e-12), (winograd4_forward_reference, 1e-11)]


@pytest.mark.parametrize("winograd_reference, atol", REFERENCES, ids=["F(2^3,3^3)", "F(4^3,3^3)"])
@pytest.mark.parametrize("batch, cin, cout, size", REFERENCE_SHAPES)
def test_reference_equals_direct_convolution(batch, cin, cout, size, winograd_reference, atol):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *size, cin))                            # (N, D, H, W, Cin)
    weight = rng.standard_normal((cout, cin, 3, 3, 3))
    bias = rng.standard_normal(cout)
    direct = reference.conv3d_forward_reference(pad_channels_last(x, (1, 1, 1)), weight, bias, (1, 1, 1))
    np.testing.assert_allclose(winograd_reference(x, weight, bias), direct, rtol=0, atol=atol)


# ---- the fast kernel: against the reference in float64, against the direct kernel in float32 --
# (batch, Cin, Cout, (D, H, W)): odd sizes (partial last tiles, faces on every side), non-cubic,
# C = 1, Cin != Cout, channel counts that are not multiples of 16 (tail blocks) and one that spans
# two 16-blocks each way; tiles_per_block 8 with a short last block (tiles not a multiple of 8)
KERNEL_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 17, 33, (4, 3, 6)), (3, 16, 16, (2, 2, 2))]


@pytest.mark.parametrize("batch, cin, cout, size", KERNEL_SHAPES)
@pytest.mark.parametrize("block_rows", WIDTHS)     # every register tile, on any CPU
def test_kernel_matches_reference(batch, cin, cout, size, block_rows):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, *size, cin))                            # (N, D, H, W, Cin)
    weight = rng.standard_normal((cout, cin, 3, 3, 3))
    bias = rng.standard_normal(cout)
    expected = winograd_forward_reference(x, weight, bias)
    u = filter_transform(weight)
    for tiles_per_block in (None, 8):
        y = winograd_forward((x,), u, bias, cout, block_rows, tiles_per_block)
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-11)        # float64: rounding only
    grad_output = rng.standard_normal(expected.shape)                      # (N, D, H, W, Cout)
    (grad_input,) = winograd_grad_input(grad_output, u, (cin,), block_rows)
    np.testing.assert_allclose(
        grad_input, reference.conv3d_grad_input_reference(grad_output, weight, size, (1, 1, 1), (1, 1, 1)),
        rtol=0, atol=1e-11)


# (channels of the two inputs, Cout): the decoder's case (first input a multiple of 16: read in
# place, and the gradient written in place as two arrays) and the fallbacks (a first band of 3 or 17
# channels: one concatenated copy, one split copy), with a tail block in the second
TWO_INPUT_CHANNELS = [((16, 16), 16), ((32, 5), 17), ((3, 16), 16), ((17, 2), 4)]


@pytest.mark.parametrize("channels, cout", TWO_INPUT_CHANNELS)
@pytest.mark.parametrize("block_rows", WIDTHS)
def test_two_inputs_are_convolved_as_their_concatenation(channels, cout, block_rows):
    rng = np.random.default_rng(5)
    size = (3, 6, 5)                                                        # odd and non-cubic
    inputs = tuple(rng.standard_normal((2, *size, c)) for c in channels)   # (N, D, H, W, C_j)
    weight = rng.standard_normal((cout, sum(channels), 3, 3, 3))
    bias = rng.standard_normal(cout)
    u = filter_transform(weight)
    expected = winograd_forward_reference(np.concatenate(inputs, axis=4), weight, bias)
    np.testing.assert_allclose(winograd_forward(inputs, u, bias, cout, block_rows), expected,
                               rtol=0, atol=1e-11)                          # float64: rounding only
    grad_output = rng.standard_normal(expected.shape)
    grads = winograd_grad_input(grad_output, u, channels, block_rows)
    full = reference.conv3d_grad_input_reference(grad_output, weight, size, (1, 1, 1), (1, 1, 1))
    assert [g.shape for g in grads] == [(*x.shape[:4], c) for x, c in zip(inputs, channels)]
    assert all(g.flags.c_contiguous for g in grads)
    np.testing.assert_allclose(np.concatenate(grads, axis=4), full, rtol=0, atol=1e-11)



@pytest.mark.parametrize("tiles_per_block", [8, 16, 64])      # rows 8 = 4 + 4, 16 = 6 + 6 + 4, 64 = 6 * 10 + 4
def test_every_register_tile_gives_the_same_bits(tiles_per_block):
    """Each product M[xi][t, co] sums over ci in the same order whatever the tile: AVX2's 6 and 4 rows
    of vectors give the bits of AVX-512's 8 rows (one fused multiply-add each), forward and grad-input, float32 with channel tails."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 9, 10, 11, 35)).astype(np.float32)
    weight = rng.standard_normal((33, 35, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(33).astype(np.float32)
    grad_output = rng.standard_normal((1, 9, 10, 11, 33)).astype(np.float32)
    u = filter_transform(weight)
    outputs = {rows: winograd_forward((x,), u, bias, 33, rows, tiles_per_block) for rows in WIDTHS}
    grads = {rows: winograd_grad_input(grad_output, u, (35,), rows)[0] for rows in WIDTHS}
    for rows in WIDTHS:
        np.testing.assert_array_equal(outputs[rows], outputs[8])
        np.testing.assert_array_equal(grads[rows], grads[8])

@pytest.mark.parametrize("cout, cin", [(5, 3), (17, 20), (16, 32)])    # tails of 16 either way
def test_grad_input_transform_comes_from_the_forward_one(cout, cin):
    """U of the flipped, in/out-swapped weights equals the forward's U with the channels swapped and
    the points 0 and infinity exchanged along each axis (float64: exact up to rounding), both in the
    plain form and packed; the packed gather is exact."""
    from nn3d.kernels.weight_packing import flipped_transposed
    weight = np.random.default_rng(6).standard_normal((cout, cin, 3, 3, 3))
    flipped = np.ascontiguousarray(flipped_transposed(weight))
    np.testing.assert_allclose(
        flipped_transposed_transform_reference(filter_transform_reference(weight)),
        filter_transform_reference(flipped), rtol=0, atol=1e-14)
    u_packed = filter_transform(weight)                            # (64, Cout_padded/16, Cin, 16)
    u = u_packed.transpose(0, 1, 3, 2).reshape(64, -1, cin)[:, :cout].reshape(4, 4, 4, cout, cin)
    np.testing.assert_array_equal(flipped_transposed_transform(u_packed, cout),
                                  packed(flipped_transposed_transform_reference(u)))


def packed(u):
    """U (4, 4, 4, Cout, Cin) -> (64, Cout_padded/16, Cin, 16), the kernels' layout, plainly."""
    cout, cin = u.shape[3:]
    cout_padded = -(-cout // 16) * 16
    u = np.concatenate([u.reshape(64, cout, cin), np.zeros((64, cout_padded - cout, cin))], axis=1)
    return u.reshape(64, cout_padded // 16, 16, cin).transpose(0, 1, 3, 2)


def test_float32_kernel_is_close_to_the_direct_kernel():
    """float32 on a U-Net-like layer: Winograd's error relative to the output's scale is ~3e-7 (below
    the direct kernel's; benchmarks/winograd_accuracy.py measures every U-Net layer). 2e-6 is ~30
    float32 epsilons and 10x the direct kernel's allows for machines that round differently; an
    indexing error would be of order 1."""
    from nn3d.kernels.conv3d import conv3d_forward
    from nn3d.gradcheck import max_relative_error
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 9, 8, 7, 32)).astype(np.float32)
    weight = (rng.standard_normal((16, 32, 3, 3, 3)) / np.sqrt(32 * 27)).astype(np.float32)
    exact = winograd_forward_reference(x.astype(np.float64), weight.astype(np.float64), None)
    direct = conv3d_forward(pad_channels_last(x, (1, 1, 1)), weight, None, (1, 1, 1))
    fast = winograd_forward((x,), filter_transform(weight), None, 16)
    assert fast.dtype == np.float32
    assert max_relative_error(fast, exact) < 2e-6
    assert max_relative_error(fast, exact) < 10 * max(max_relative_error(direct, exact), 1e-7)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-13), (np.float32, 0)])
def test_packed_filter_transform_matches_the_reference(dtype, tolerance):
    """The kernel's U against G g G^T written as one einsum, and against the plain (Kronecker)
    reference: float64 up to rounding; float32 is the float64 result rounded once, so exactly the
    reference rounded to float32."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((17, 3, 3, 3, 3)).astype(dtype)           # Cout tail: 17 = 16 + 1
    u = filter_transform_reference(weight)                         # (4, 4, 4, Cout, Cin)
    g_g_g = np.einsum("ai,bj,ck->abcijk", G, G, G)
    np.testing.assert_allclose(u, np.einsum("abcijk,oxijk->abcox", g_g_g, weight), rtol=0, atol=1e-13)
    u_packed = filter_transform(weight)                            # (64, 2, Cin, 16)
    assert u_packed.dtype == dtype and u_packed.shape == (64, 2, 3, 16)
    np.testing.assert_allclose(u_packed, packed(u).astype(dtype), rtol=0, atol=tolerance)
    assert not u_packed[:, 1, :, 1:].any()                                  # padding channels stay zero


def test_rule_sends_thin_small_and_other_shapes_direct(monkeypatch):
    """conv_algorithm.py's F(2^3, 3^3) rule on AVX-512 (grad-weight's there; its forward and
    grad-input take F(4^3, 3^3) from 64 tiles of 4^3 on, test_winograd4.py): Winograd for 3x3x3 /
    stride 1 / padding 1 with >= 16 channels both ways and >= 512 output tiles; NN3D_CONV forces
    either path where Winograd applies, never elsewhere."""
    from nn3d.kernels.conv_algorithm import conv_algorithm
    monkeypatch.delenv("NN3D_CONV", raising=False)
    k3, s1, p1 = (3, 3, 3), (1, 1, 1), (1, 1, 1)
    rule = lambda *args: conv_algorithm(*args, "grad_weight", "avx512")
    assert rule(k3, s1, p1, 16, 16, (1, 16, 64, 64, 64)) == "winograd"
    assert rule(k3, s1, p1, 64, 128, (1, 64, 16, 16, 16)) == "winograd"     # 512 tiles
    assert rule(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8)) == "direct"       # 64 tiles
    assert rule(k3, s1, p1, 128, 128, (8, 128, 8, 8, 8)) == "winograd"     # batch 8: 512
    assert rule(k3, s1, p1, 1, 16, (1, 1, 64, 64, 64)) == "direct"         # thin
    assert rule(k3, (2, 2, 2), p1, 16, 16, (1, 16, 64, 64, 64)) == "direct"
    monkeypatch.setenv("NN3D_CONV", "winograd")
    assert rule(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8)) == "winograd"
    assert rule((1, 1, 1), s1, (0, 0, 0), 16, 16, (1, 16, 8, 8, 8)) == "direct"
    monkeypatch.setenv("NN3D_CONV", "direct")
    assert rule(k3, s1, p1, 16, 16, (1, 16, 64, 64, 64)) == "direct"

def test_rule_is_a_function_of_the_instruction_set_the_pass_and_the_shape(monkeypatch):
    """conv_algorithm.py's rule, for both instruction sets on any machine (`winograd_wins` is pure):
    never Winograd below 16 channels either way or 512 output tiles; the U-Net's other layers as
    measured on each (docs/performance.md); conv_algorithm follows the ISA it is given and, by
    default, the one this process's tiles are compiled for."""
    from nn3d.kernels.conv_algorithm import (COMPILED_FOR, PASSES, conv_algorithm, instruction_set,
                                             winograd_wins)
    monkeypatch.delenv("NN3D_CONV", raising=False)
    assert instruction_set(8) == "avx512" and instruction_set(4) == "avx2"
    assert COMPILED_FOR == instruction_set(BLOCK_W)
    unet_64 = [(16, 16, 32768), (16, 32, 4096), (32, 32, 4096), (32, 64, 512), (64, 64, 512),
               (128, 64, 512), (64, 32, 4096), (32, 16, 32768)]        # (Cin, Cout, tiles) at 64^3
    for isa in ("avx2", "avx512"):
        for pass_name in PASSES:
            assert not winograd_wins(isa, pass_name, 1, 16, 32768)       # thin
            assert not winograd_wins(isa, pass_name, 16, 1, 32768)
            assert not winograd_wins(isa, pass_name, 128, 128, 8)        # a 4^3 bottleneck
            for cin, cout, tiles in unet_64:
                assert winograd_wins(isa, pass_name, cin, cout, tiles), (isa, pass_name, cin, cout)
            for cin, cout in ((64, 128), (128, 128)):                   # the 8^3 bottleneck: direct
                assert not winograd_wins(isa, pass_name, cin, cout, 64)
    with pytest.raises(ValueError, match="instruction set"):
        winograd_wins("sse2", "forward", 16, 16, 512)
    k3, s1, p1 = (3, 3, 3), (1, 1, 1), (1, 1, 1)
    for isa in ("avx2", "avx512"):
        for pass_name in PASSES:
            f43 = pass_name != "grad_weight" or isa == "avx2"             # F(4^3, 3^3): test_winograd4.py
            assert conv_algorithm(k3, s1, p1, 16, 16, (1, 16, 64, 64, 64), pass_name, isa) == (
                "winograd4" if f43 else "winograd")
            assert conv_algorithm(k3, s1, p1, 1, 16, (1, 1, 64, 64, 64), pass_name, isa) == "direct"
            assert conv_algorithm(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8), pass_name, isa) == "direct"
    for pass_name in PASSES:                                              # default: this process's ISA
        assert (conv_algorithm(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8), pass_name)
                == conv_algorithm(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8), pass_name, COMPILED_FOR))
    for forced in ("direct", "winograd"):
        monkeypatch.setenv("NN3D_CONV", forced)
        for isa in ("avx2", "avx512"):
            for pass_name in PASSES:
                assert conv_algorithm(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8), pass_name, isa) == forced
                assert conv_algorithm(k3, s1, p1, 16, 16, (1, 16, 64, 64, 64), pass_name, isa) == forced
                assert conv_algorithm(k3, (2, 2, 2), p1, 16, 16, (1, 16, 64, 64, 64), pass_name, isa) == "direct"
