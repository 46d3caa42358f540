"""Grad-weight by the transposed F(4^3, 3^3) (nn3d/kernels/winograd/grad_weight4.py): the plain
reference against the direct-convolution reference, the fast kernel against it (float64, every
register tile, one and two inputs, several chunks and groups), its float32 error against the truth,
PyTorch and the direct kernel, and the same bits on every register tile and on 1 and 2 threads."""
import numpy as np
import pytest

from nn3d.gradcheck import max_relative_error
from nn3d.kernels.conv3d_grad_weight import conv3d_grad_weight
from nn3d.kernels.padding import pad_channels_last
from nn3d.kernels.winograd.algorithm4 import A4_T, B4_T, G4
from nn3d.kernels.winograd.grad_weight import grad_weight_partition
from nn3d.kernels.winograd.grad_weight4 import (winograd4_grad_weight, winograd4_grad_weight_reference,
                                                winograd4_grad_weight_work_items)
from grad_weight_reference import ONES, direct_reference, random_pair, torch_grad_weight

WIDTHS = [4, 6, 8]      # the products' register tiles (winograd/products.py), on any CPU


def test_one_dimensional_transposed_f43_is_the_correlation():
    """grad_weight4.py, section 1, in 1-D: dg = G4^T [(A4 dy) * (B4^T d)] is sum_o d[o + i] dy[o]."""
    rng = np.random.default_rng(0)
    d, dy = rng.standard_normal(6), rng.standard_normal(4)
    dg = G4.T @ ((A4_T.T @ dy) * (B4_T @ d))                 # 6 multiplications
    np.testing.assert_allclose(dg, [d[i:i + 4] @ dy for i in range(3)], rtol=0, atol=1e-13)


# (batch, Cin, Cout, (D, H, W)): sizes not multiples of 4 (partial tiles on every far face),
# non-cubic, batch > 1, C = 1, Cin != Cout
REFERENCE_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 4, 2, (2, 9, 4))]


@pytest.mark.parametrize("batch, cin, cout, size", REFERENCE_SHAPES)
def test_reference_equals_direct_grad_weight(batch, cin, cout, size):
    x, grad_output = random_pair(np.random.default_rng(1), batch, cin, cout, size)
    # float64 rounding only: each entry sums <= 2 * 5*6*7 = 420 products of size ~1, through
    # transforms with weights up to 512 (measured ~1e-12)
    np.testing.assert_allclose(winograd4_grad_weight_reference(x, grad_output),
                               direct_reference(x, grad_output), rtol=0, atol=1e-10)


# (batch, Cin, Cout, (D, H, W)): partial tiles on the far faces, non-cubic, C = 1, channel tails
# (1, 3, 17, 33) and a count spanning two 16-blocks each way, batch 3, and a volume of 80 tiles
# (20 x 16 x 16): two chunks of 64-tile blocks (the second short) x two groups of output channels
KERNEL_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 17, 33, (4, 3, 6)), (3, 16, 16, (2, 2, 2)),
                 (2, 1, 17, (9, 8, 7)), (1, 16, 32, (20, 16, 16))]


def test_the_last_kernel_shape_has_several_chunks_and_groups():
    tiles_per_block, tiles_per_chunk, n_chunks, n_groups = grad_weight_partition(5 * 4 * 4, 16, 32, 216)
    assert (tiles_per_block, tiles_per_chunk, n_chunks, n_groups) == (64, 64, 2, 2)
    assert winograd4_grad_weight_work_items((1, 20, 16, 16), 16, 32) == 4


@pytest.mark.parametrize("batch, cin, cout, size", KERNEL_SHAPES)
@pytest.mark.parametrize("block_rows", WIDTHS)
def test_kernel_matches_references(batch, cin, cout, size, block_rows):
    x, grad_output = random_pair(np.random.default_rng(2), batch, cin, cout, size)
    expected = direct_reference(x, grad_output)
    fast = winograd4_grad_weight((x,), grad_output, block_rows)
    assert fast.shape == (cout, cin, 3, 3, 3) and fast.dtype == np.float64
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-9)           # float64: rounding only


# (channels of the two inputs, Cout): the decoder's case (first input a multiple of 16: read in place)
# and the fallback (a first band of 3 channels: one concatenated copy)
@pytest.mark.parametrize("channels, cout", [((16, 16), 16), ((16, 5), 17), ((3, 16), 4)])
@pytest.mark.parametrize("block_rows", WIDTHS)
def test_two_inputs_give_the_gradient_of_their_concatenation(channels, cout, block_rows):
    rng = np.random.default_rng(3)
    inputs = tuple(rng.standard_normal((2, 5, 6, 9, c)) for c in channels)   # odd, non-cubic, batch 2
    grad_output = rng.standard_normal((2, 5, 6, 9, cout))
    expected = direct_reference(np.concatenate(inputs, axis=4), grad_output)
    np.testing.assert_allclose(winograd4_grad_weight(inputs, grad_output, block_rows), expected,
                               rtol=0, atol=1e-9)                           # float64: rounding only


@pytest.mark.parametrize("block_rows", WIDTHS)
def test_float32_kernel_is_close_to_pytorch_and_the_direct_kernel(block_rows):
    """float32 on U-Net-like layers (32 -> 16 on an odd non-cubic volume, batch 2; 16 + 16 -> 16 on
    16^3). Measured relative to the gradient's scale (max |dw|, float64 truth): this kernel 8.1e-6
    and 2.3e-5 (grad_weight4.py, section 3: some 50x F(2^3, 3^3)'s), the direct kernel 1.6e-7 and
    2.6e-7, PyTorch 1.2e-7 and 3.0e-7. Bounds: 1e-4 against the truth and against PyTorch (4x the
    largest measured, for machines that round differently); an indexing error would be of order 1."""
    rng = np.random.default_rng(4)
    for inputs, grad_output in [((rng.standard_normal((2, 9, 8, 7, 32)).astype(np.float32),),
                                 rng.standard_normal((2, 9, 8, 7, 16)).astype(np.float32)),
                                (tuple(rng.standard_normal((1, 16, 16, 16, 16)).astype(np.float32) for _ in range(2)),
                                 rng.standard_normal((1, 16, 16, 16, 16)).astype(np.float32))]:
        x = np.concatenate(inputs, axis=4)
        exact = direct_reference(x.astype(np.float64), grad_output.astype(np.float64))
        fast = winograd4_grad_weight(inputs, grad_output, block_rows)
        direct = conv3d_grad_weight(pad_channels_last(x, ONES), grad_output, (3, 3, 3), ONES)
        assert fast.dtype == np.float32
        assert max_relative_error(fast, exact) < 1e-4
        assert max_relative_error(fast, torch_grad_weight(x, grad_output)) < 1e-4
        assert max_relative_error(direct, exact) < 2e-6                     # the scale of float32 itself


def test_same_bits_on_one_and_two_threads(on_one_and_two_threads):
    """The chunks, and the order their partial sums are added in, depend on the shapes only."""
    x, grad_output = random_pair(np.random.default_rng(5), 1, 16, 32, (20, 16, 16), np.float32)   # 2 chunks
    one, two = on_one_and_two_threads(winograd4_grad_weight, (x,), grad_output)
    np.testing.assert_array_equal(one, two)


def test_every_register_tile_gives_the_same_bits():
    """dU sums over the tiles of a block, then the blocks of a chunk, in one order whatever the tile
    of input channels: AVX2's 6 and 4 rows of vectors give the bits of AVX-512's 8 rows
    (float32, 48 and 40 input channels: 6 x 8 and 6 x 6 + 4, two inputs, a channel tail)."""
    rng = np.random.default_rng(6)
    for channels, cout in (((32, 16), 20), ((16, 24), 16)):
        inputs = tuple(rng.standard_normal((1, 7, 8, 9, c)).astype(np.float32) for c in channels)
        grad_output = rng.standard_normal((1, 7, 8, 9, cout)).astype(np.float32)
        grads = {rows: winograd4_grad_weight(inputs, grad_output, rows) for rows in WIDTHS}
        np.testing.assert_array_equal(grads[4], grads[8])
        np.testing.assert_array_equal(grads[6], grads[8])


def test_mismatched_grad_output_is_one_clear_error():
    x, grad_output = random_pair(np.random.default_rng(7), 1, 2, 3, (4, 4, 4))
    with pytest.raises(ValueError, match="grad_output"):
        winograd4_grad_weight((x,), grad_output[:, :3])
