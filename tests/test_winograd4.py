"""Winograd F(4^3, 3^3) (nn3d/kernels/winograd/algorithm4.py, filter_transform4.py, convolution4.py;
grad_weight4.py's kernel is tested in test_winograd4_grad_weight.py):
the matrices against the direct 1-D sum and their derivation, the fast kernel against the plain
reference (itself checked against the direct convolution in tests/test_winograd.py), the rule that
picks it, and the layer that runs it."""
import numpy as np
import pytest

import nn3d
from nn3d.gradcheck import max_relative_error
from nn3d.kernels.winograd.algorithm import winograd_forward_reference
from nn3d.kernels.winograd.algorithm4 import (A4_T, B4_T, G4, filter_transform4_reference,
                                              winograd4_forward_reference)
from nn3d.gradcheck import check_layer
from nn3d.kernels.reference import conv3d_grad_input_reference
from nn3d.kernels.winograd.convolution4 import winograd4_forward, winograd4_grad_input
from nn3d.kernels.winograd.filter_transform4 import filter_transform4

WIDTHS = [4, 6, 8]      # the products' register tiles (winograd/products.py), on any CPU


def test_one_dimensional_f43_is_the_correlation():
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    y = A4_T @ ((G4 @ g) * (B4_T @ d))             # 6 multiplications
    np.testing.assert_allclose(y, [d[i:i + 3] @ g for i in range(4)], rtol=0, atol=1e-13)


def test_matrices_are_the_interpolation_at_0_1_minus1_2_minus2_infinity():
    """algorithm4.py, section 1: B4^T's rows are the coefficients of the Lagrange numerators N_a and
    of P; G4's rows are g at the points over N_a(x_a); A4^T's columns are h at the points."""
    points = [0, 1, -1, 2, -2]
    for a, x_a in enumerate(points):
        numerator = np.polynomial.polynomial.polyfromroots([x for x in points if x != x_a])
        np.testing.assert_array_equal(B4_T[a], np.append(numerator, 0))
        denominator = np.prod([x_a - x for x in points if x != x_a])
        np.testing.assert_allclose(G4[a] * denominator, [1, x_a, x_a ** 2], rtol=0, atol=1e-15)
        np.testing.assert_array_equal(A4_T[:, a], [1, x_a, x_a ** 2, x_a ** 3])
    np.testing.assert_array_equal(B4_T[5], np.polynomial.polynomial.polyfromroots(points))
    np.testing.assert_array_equal(G4[5], [0, 0, 1])
    np.testing.assert_array_equal(A4_T[:, 5], [0, 0, 0, 1])


# (batch, Cin, Cout, (D, H, W)): partial tiles and faces on every side, interior tiles (sizes above
# 9 along every axis), C = 1, channel tails both ways and Cin spanning two 16-blocks, batch > 1
KERNEL_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 17, 33, (4, 3, 6)), (3, 16, 16, (2, 2, 2)),
                 (1, 20, 18, (10, 13, 11)), (2, 16, 16, (9, 12, 10))]


@pytest.mark.parametrize("batch, cin, cout, size", KERNEL_SHAPES)
@pytest.mark.parametrize("block_rows", WIDTHS)
def test_kernel_matches_reference(batch, cin, cout, size, block_rows):
    """float64: rounding only, ~1e-13 measured; with bias, ReLU, and blocks of the default size (4
    tiles below 64: V and M rows in one 4-row tile, or one 8-row tile for block_rows 8) or of 16."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, *size, cin))                            # (N, D, H, W, Cin)
    weight = rng.standard_normal((cout, cin, 3, 3, 3))
    bias = rng.standard_normal(cout)
    expected = winograd4_forward_reference(x, weight, bias)
    u = filter_transform4(weight)
    for tiles_per_block in (None, 16):
        y = winograd4_forward((x,), u, bias, cout, block_rows, tiles_per_block)
        assert y.shape == expected.shape and y.flags.c_contiguous
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-10)
    y = winograd4_forward((x,), u, None, cout, block_rows, relu=True)
    np.testing.assert_allclose(y, np.maximum(expected - bias, 0), rtol=0, atol=1e-10)


# (channels of the two inputs, Cout): the decoder's (the first a multiple of 16: read in place) and
# the fallbacks (one concatenated copy), with channel tails
TWO_INPUT_CHANNELS = [((16, 16), 16), ((32, 5), 17), ((3, 16), 16)]


@pytest.mark.parametrize("channels, cout", TWO_INPUT_CHANNELS)
@pytest.mark.parametrize("block_rows", WIDTHS)
def test_two_inputs_are_convolved_as_their_concatenation(channels, cout, block_rows):
    rng = np.random.default_rng(5)
    size = (7, 10, 9)                                                       # non-cubic, not multiples of 4
    inputs = tuple(rng.standard_normal((2, *size, c)) for c in channels)   # (N, D, H, W, C_j)
    weight = rng.standard_normal((cout, sum(channels), 3, 3, 3))
    bias = rng.standard_normal(cout)
    expected = winograd4_forward_reference(np.concatenate(inputs, axis=4), weight, bias)
    np.testing.assert_allclose(winograd4_forward(inputs, filter_transform4(weight), bias, cout, block_rows),
                               expected, rtol=0, atol=1e-10)


# (batch, Cout of the layer, the input bands C_j, (D, H, W)): one input, a decoder's two (the first a
# multiple of 16: written in place) and the fallback (one array, cut), partial tiles, batch > 1, C = 1
GRAD_INPUT_SHAPES = [(2, 5, (3,), (5, 6, 7)), (1, 1, (1,), (3, 4, 1)), (1, 16, (16, 16), (9, 12, 10)),
                     (2, 17, (5, 7), (4, 3, 6)), (1, 33, (20,), (10, 13, 11))]


@pytest.mark.parametrize("batch, cout, bands, size", GRAD_INPUT_SHAPES)
@pytest.mark.parametrize("block_rows", WIDTHS)
def test_grad_input_matches_reference(batch, cout, bands, size, block_rows):
    """float64 against line (2)'s plain scatter (reference.py), cut into the inputs' bands: the
    flipped, in/out-swapped filter is transformed right, rounding only (~1e-13)."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((cout, sum(bands), 3, 3, 3))
    grad_output = rng.standard_normal((batch, *size, cout))                 # (N, D, H, W, Cout)
    expected = conv3d_grad_input_reference(grad_output, weight, size, (1, 1, 1), (1, 1, 1))
    grads = winograd4_grad_input(grad_output, weight, bands, block_rows)
    starts = np.cumsum((0, *bands))
    assert len(grads) == len(bands)
    for grad, start, stop in zip(grads, starts[:-1], starts[1:]):
        assert grad.shape == (batch, *size, stop - start) and grad.flags.c_contiguous
        np.testing.assert_allclose(grad, expected[..., start:stop], rtol=0, atol=1e-10)


@pytest.mark.parametrize("tiles_per_block", [8, 16])      # rows 8 = 4 + 4, 16 = 6 + 6 + 4
def test_every_register_tile_gives_the_same_bits(tiles_per_block):
    """Each product sums over ci in the same order whatever the tile: AVX2's 6 and 4 rows of vectors
    give the bits of AVX-512's 8 rows (float32, channel tails, two inputs)."""
    rng = np.random.default_rng(7)
    inputs = (rng.standard_normal((1, 9, 10, 11, 16)).astype(np.float32),
              rng.standard_normal((1, 9, 10, 11, 19)).astype(np.float32))
    weight = rng.standard_normal((33, 35, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(33).astype(np.float32)
    u = filter_transform4(weight)
    outputs = {rows: winograd4_forward(inputs, u, bias, 33, rows, tiles_per_block, relu=True) for rows in WIDTHS}
    for rows in WIDTHS:
        np.testing.assert_array_equal(outputs[rows], outputs[8])


def test_same_bits_on_one_and_two_threads(on_one_and_two_threads):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 17, 16, 18, 16)).astype(np.float32)
    u = filter_transform4(rng.standard_normal((16, 16, 3, 3, 3)).astype(np.float32))
    one, two = on_one_and_two_threads(lambda: winograd4_forward((x,), u, None, 16))
    np.testing.assert_array_equal(one, two)


def packed4(u):
    """U (6, 6, 6, Cout, Cin) -> (216, Cout_padded/16, Cin, 16), the kernel's layout, plainly."""
    cout, cin = u.shape[3:]
    cout_padded = -(-cout // 16) * 16
    u = np.concatenate([u.reshape(216, cout, cin), np.zeros((216, cout_padded - cout, cin))], axis=1)
    return u.reshape(216, cout_padded // 16, 16, cin).transpose(0, 1, 3, 2)


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 0, 1e-15), (np.float32, 1.2e-7, 0)])
def test_packed_filter_transform_matches_the_reference(dtype, rtol, atol):
    """float64 up to rounding (the kernel's factored G4 and the einsum's differ by ~1e-17 on U of
    size ~1); float32 is a float64 result rounded once, so the reference rounded to float32 up to
    one unit in the last place (2^-23 relative: the two float64 results may straddle a rounding
    boundary)."""
    weight = np.random.default_rng(4).standard_normal((17, 3, 3, 3, 3)).astype(dtype)   # Cout tail 17
    u_packed = filter_transform4(weight)
    assert u_packed.dtype == dtype and u_packed.shape == (216, 2, 3, 16)
    expected = packed4(filter_transform4_reference(weight))
    np.testing.assert_allclose(u_packed, expected.astype(dtype), rtol=rtol, atol=atol)
    assert not u_packed[:, 1, :, 1:].any()                                  # padding channels stay zero


def test_float32_error_is_bounded():
    """float32 on U-Net-like layers against float64: measured max error 1.7e-5 .. 4.4e-5 of the
    output's scale (F(2^3, 3^3): 2e-7 .. 5e-7; algorithm4.py, section 4, says why). 1.5e-4 is 3x the
    largest measured, for machines that round differently; an indexing error would be of order 1."""
    rng = np.random.default_rng(3)
    for cin, cout, size in [(32, 16, (9, 8, 7)), (64, 32, (12, 12, 12))]:
        x = rng.standard_normal((1, *size, cin)).astype(np.float32)
        weight = (rng.standard_normal((cout, cin, 3, 3, 3)) / np.sqrt(cin * 27)).astype(np.float32)
        exact = winograd_forward_reference(x.astype(np.float64), weight.astype(np.float64), None)
        fast = winograd4_forward((x,), filter_transform4(weight), None, cout)
        assert fast.dtype == np.float32
        assert max_relative_error(fast, exact) < 1.5e-4


# ---- the rule (nn3d/kernels/conv_algorithm.py) and the layer ----------------------------------------
def test_rule_takes_f43_for_forward_and_grad_input_and_on_avx2_grad_weight(monkeypatch):
    from nn3d.kernels.conv_algorithm import (INFERENCE, INSTRUCTION_SETS, PASSES, conv_algorithm, winograd4_wins,
                                             winograd_convolves, winograd_runs)
    monkeypatch.delenv("NN3D_CONV", raising=False)
    k3, s1, p1 = (3, 3, 3), (1, 1, 1), (1, 1, 1)
    for isa in INSTRUCTION_SETS:
        assert not winograd_convolves(isa)                                  # F(2^3, 3^3): grad-weight only,
        assert winograd_runs(isa, "grad_weight") == (isa == "avx512")      # and that on AVX-512 only
        for pass_name in PASSES + (INFERENCE,):
            chosen = pass_name != "grad_weight" or isa == "avx2"
            assert winograd4_wins(isa, pass_name, 16, 16, 4096) == chosen      # 16 -> 16 at 64^3
            assert winograd4_wins(isa, pass_name, 64, 64, 64) == chosen        # 16^3: 64 tiles
            assert not winograd4_wins(isa, pass_name, 128, 128, 8)             # 8^3: one block of tiles
            assert not winograd4_wins(isa, pass_name, 1, 16, 4096)             # thin
            assert (conv_algorithm(k3, s1, p1, 32, 64, (1, 32, 16, 16, 16), pass_name, isa) == "winograd4") == chosen
            assert conv_algorithm(k3, s1, p1, 1, 16, (1, 1, 64, 64, 64), pass_name, isa) == "direct"
            assert conv_algorithm(k3, (2, 2, 2), p1, 16, 16, (1, 16, 64, 64, 64), pass_name, isa) == "direct"
            # the 8^3 bottleneck: direct in every pass; a batch of 8 of them: 64 tiles of 4^3
            assert conv_algorithm(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8), pass_name, isa) == "direct"
            assert conv_algorithm(k3, s1, p1, 128, 128, (8, 128, 8, 8, 8), pass_name, isa) == (
                "winograd4" if chosen else "winograd")
        assert conv_algorithm(k3, s1, p1, 16, 16, (1, 16, 64, 64, 64), "grad_weight", isa) == (
            "winograd4" if isa == "avx2" else "winograd")
    with pytest.raises(ValueError, match="pass"):
        winograd4_wins("avx2", "backward", 16, 16, 4096)
    monkeypatch.setenv("NN3D_CONV", "winograd4")                            # every pass
    for isa in ("avx2", "avx512"):
        assert conv_algorithm(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8), "forward", isa) == "winograd4"
        assert conv_algorithm(k3, s1, p1, 128, 128, (1, 128, 8, 8, 8), INFERENCE, isa) == "winograd4"
        assert conv_algorithm(k3, s1, p1, 16, 16, (1, 16, 8, 8, 8), "grad_input", isa) == "winograd4"
        assert conv_algorithm(k3, s1, p1, 16, 16, (1, 16, 8, 8, 8), "grad_weight", isa) == "winograd4"
        assert conv_algorithm(k3, (2, 2, 2), p1, 16, 16, (1, 16, 8, 8, 8), "forward", isa) == "direct"


@pytest.mark.parametrize("relu", [False, True])
def test_layer_runs_f43_in_inference(relu, monkeypatch):
    """Conv3d under no_grad and a folded Conv3d + BatchNorm3d(relu) take F(4^3, 3^3) where the rule
    (forced here, any ISA) says so, give the training forward's output to float32 F(4^3, 3^3)
    accuracy, and a forced training forward by it still backpropagates."""
    from nn3d.batchnorm_folding import conv_batchnorm_eval
    import nn3d.conv3d as conv3d_module
    calls = []
    original = conv3d_module.winograd4_forward
    monkeypatch.setattr(conv3d_module, "winograd4_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    rng = np.random.default_rng(9)
    layer = nn3d.Conv3d(32, 16, 3, padding=1)
    batchnorm = nn3d.BatchNorm3d(16, relu=relu)
    batchnorm.running_mean[:] = rng.standard_normal(16)
    batchnorm.eval()
    up, skip = (rng.standard_normal((2, 16, 9, 6, 7)).astype(np.float32) for _ in range(2))
    monkeypatch.setenv("NN3D_CONV", "winograd")
    expected = layer.forward(up, skip).copy()
    expected_folded = batchnorm.forward(layer.forward(up, skip)).copy()
    monkeypatch.setenv("NN3D_CONV", "winograd4")
    with nn3d.no_grad():
        ours = layer.forward(up, skip)
    assert calls and max_relative_error(ours, expected) < 1.5e-4
    assert max_relative_error(conv_batchnorm_eval(layer, batchnorm, up, skip), expected_folded) < 1.5e-4
    y = layer.forward(up, skip)                                             # training forward, forced
    grads = layer.backward(np.ones_like(y))
    assert [g.shape for g in grads] == [up.shape, skip.shape]


@pytest.mark.parametrize("batch, channels, cout, size", [(2, (16, 16), 16, (9, 6, 7)), (1, (5,), 17, (5, 8, 4))])
def test_layer_trains_by_f43(batch, channels, cout, size, monkeypatch):
    """A training forward and backward forced to F(4^3, 3^3) (forward, grad-input and grad-weight)
    against the direct kernels (themselves checked against PyTorch in test_conv3d.py): a decoder's
    two inputs and a single odd one, float32 to F(4^3, 3^3)'s accuracy; all three F(4^3, 3^3)
    passes did run."""
    import nn3d.conv3d as conv3d_module
    calls = []
    for name in ("winograd4_forward", "winograd4_grad_input", "winograd4_grad_weight"):
        original = getattr(conv3d_module, name)
        monkeypatch.setattr(conv3d_module, name,
                            lambda *a, name=name, original=original, **k: calls.append(name) or original(*a, **k))
    rng = np.random.default_rng(11)
    layer = nn3d.Conv3d(sum(channels), cout, 3, padding=1)
    inputs = [rng.standard_normal((batch, c, *size)).astype(np.float32) for c in channels]
    grad_output = rng.standard_normal((batch, cout, *size)).astype(np.float32)
    results = {}
    for algorithm in ("direct", "winograd4"):
        monkeypatch.setenv("NN3D_CONV", algorithm)
        layer.zero_grad()
        y = layer.forward(*inputs).copy()
        grads = layer.backward(grad_output)
        grads = grads if isinstance(grads, tuple) else (grads,)
        results[algorithm] = (y, *(g.copy() for g in grads), layer.weight.grad.copy(), layer.bias.grad.copy())
    assert sorted(calls) == ["winograd4_forward", "winograd4_grad_input", "winograd4_grad_weight"]
    for ours, expected in zip(results["winograd4"], results["direct"]):
        assert max_relative_error(ours, expected) < 1.5e-4


def test_layer_trained_by_f43_matches_finite_differences(monkeypatch):
    """float64 central differences of the input, weight and bias through the F(4^3, 3^3) passes."""
    monkeypatch.setenv("NN3D_CONV", "winograd4")
    rng = np.random.default_rng(12)
    layer = nn3d.Conv3d(2, 3, 3, padding=1).to(np.float64)
    results = check_layer(layer, [rng.standard_normal((1, 2, 5, 4, 6))])
    assert [name for name, _, _ in results] == ["input", "weight", "bias"]
    for name, analytic, numeric in results:
        assert max_relative_error(analytic, numeric) < 1e-7, name
