"""Grad-weight by the transposed F(2^3, 3^3) (nn3d/kernels/winograd/grad_weight.py): the plain reference
against the direct-convolution reference, the fast kernel against both (float64, both register
tiles), against PyTorch and the direct kernel in float32, and the same bits on 1 and 2 threads."""
import numpy as np
import pytest

from nn3d.gradcheck import max_relative_error
from nn3d.kernels.conv3d_grad_weight import conv3d_grad_weight
from nn3d.kernels.padding import pad_channels_last
from nn3d.kernels.winograd.grad_weight import (grad_weight_partition, winograd_grad_weight,
                                               winograd_grad_weight_reference)
from grad_weight_reference import ONES, direct_reference, random_pair, torch_grad_weight


# (batch, Cin, Cout, (D, H, W)): odd and even sizes (partial last tiles), non-cubic, batch 2, C = 1
REFERENCE_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 4, 2, (2, 9, 4))]


@pytest.mark.parametrize("batch, cin, cout, size", REFERENCE_SHAPES)
def test_reference_equals_direct_grad_weight(batch, cin, cout, size):
    x, grad_output = random_pair(np.random.default_rng(0), batch, cin, cout, size)
    # float64 rounding only: each entry sums <= 2 * 5*6*7 = 420 products of size ~1
    np.testing.assert_allclose(winograd_grad_weight_reference(x, grad_output),
                               direct_reference(x, grad_output), rtol=0, atol=1e-11)


# (batch, Cin, Cout, (D, H, W)): odd sizes (tiles sticking out on every far face), non-cubic, C = 1,
# Cin != Cout, channel counts that are not multiples of 16 (tail blocks: 1, 3, 17, 33) and one that
# spans two 16-blocks each way; the last shape has 160 tiles: two chunks (`grad_weight_partition`),
# the second ending in a short block
KERNEL_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 17, 33, (4, 3, 6)), (3, 16, 16, (2, 2, 2)),
                 (2, 1, 17, (9, 8, 7))]


def test_the_last_kernel_shape_has_several_chunks_and_groups():
    assert grad_weight_partition(2 * 5 * 4 * 4, 16, 32)[2:] == (2, 2)     # 2 chunks x 2 groups of 16


def test_every_unet_layer_has_32_work_items():
    """(chunk, output-channel group) items at the U-Net's 64^3 shapes where Winograd runs (16^3 and
    up): at least 32, so that 32 cores have work."""
    for tiles, cin, cout in [(32768, 16, 16), (32768, 32, 16), (4096, 16, 32), (4096, 64, 32),
                             (512, 32, 64), (512, 64, 64), (512, 128, 64)]:
        n_chunks, n_groups = grad_weight_partition(tiles, cin, cout)[2:]
        assert n_chunks * n_groups >= 32, (tiles, cin, cout)


@pytest.mark.parametrize("batch, cin, cout, size", KERNEL_SHAPES)
@pytest.mark.parametrize("block_rows", [4, 6, 8])     # every register tile (products.py), on any CPU
def test_kernel_matches_references(batch, cin, cout, size, block_rows):
    x, grad_output = random_pair(np.random.default_rng(1), batch, cin, cout, size)
    expected = direct_reference(x, grad_output)
    np.testing.assert_allclose(winograd_grad_weight_reference(x, grad_output), expected, rtol=0, atol=1e-11)
    fast = winograd_grad_weight((x,), grad_output, block_rows)
    assert fast.shape == (cout, cin, 3, 3, 3) and fast.dtype == np.float64
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-11)          # float64: rounding only


@pytest.mark.parametrize("block_rows", [4, 6, 8])
def test_float32_kernel_is_close_to_pytorch_and_the_direct_kernel(block_rows):
    """float32 on a U-Net-like layer (32 -> 16, an odd non-cubic volume, batch 2). Each entry sums
    ~1000 products x*g. Measured relative to the gradient's scale (max |dw|, float64 truth): this
    kernel 3.8e-7 (its dU entries are larger than the dw they make: section 4), the direct kernel
    2.1e-7, PyTorch 1.0e-6. Bounds: 2e-6 against the truth (~15 float32 epsilons, 5x the measured
    error); 5e-6 against PyTorch, whose own error dominates the difference; at most 10x the direct
    kernel's error. An indexing error would be of order 1."""
    rng = np.random.default_rng(3)
    x, grad_output = random_pair(rng, 2, 32, 16, (9, 8, 7), np.float32)
    exact = direct_reference(x.astype(np.float64), grad_output.astype(np.float64))
    fast = winograd_grad_weight((x,), grad_output, block_rows)
    direct = conv3d_grad_weight(pad_channels_last(x, ONES), grad_output, (3, 3, 3), ONES)
    assert fast.dtype == np.float32
    assert max_relative_error(fast, exact) < 2e-6
    assert max_relative_error(fast, torch_grad_weight(x, grad_output)) < 5e-6
    assert max_relative_error(fast, exact) < 10 * max(max_relative_error(direct, exact), 1e-7)


def test_same_bits_on_one_and_two_threads(on_one_and_two_threads):
    """The chunks, and the order their partial sums are added in, depend on the shapes only."""
    x, grad_output = random_pair(np.random.default_rng(4), 2, 16, 32, (9, 8, 7), np.float32)   # 2 chunks
    one, two = on_one_and_two_threads(winograd_grad_weight, (x,), grad_output)
    np.testing.assert_array_equal(one, two)



def test_every_register_tile_gives_the_same_bits():
    """dU sums over the tiles of a block, then the blocks of a chunk, in one order whatever the tile
    of input channels: AVX2's 6 and 4 rows of vectors give the bits of AVX-512's 8 rows
    (float32, 48 and 40 input channels: 6 x 8 and 6 x 6 + 4, two inputs, a channel tail)."""
    rng = np.random.default_rng(8)
    for channels, cout in (((32, 16), 20), ((16, 24), 16)):
        inputs = tuple(rng.standard_normal((1, 7, 8, 9, c)).astype(np.float32) for c in channels)
        grad_output = rng.standard_normal((1, 7, 8, 9, cout)).astype(np.float32)
        grads = {rows: winograd_grad_weight(inputs, grad_output, rows) for rows in (4, 6, 8)}
        np.testing.assert_array_equal(grads[4], grads[8])
        np.testing.assert_array_equal(grads[6], grads[8])

def test_mismatched_grad_output_is_one_clear_error():
    x, grad_output = random_pair(np.random.default_rng(5), 1, 2, 3, (4, 4, 4))
    with pytest.raises(ValueError, match="grad_output"):
        winograd_grad_weight((x,), grad_output[:, :3])


# (channels of the two inputs, Cout): the decoder's case (first input a multiple of 16: read in place)
# and the fallback (a first band of 3 channels: one concatenated copy)
@pytest.mark.parametrize("channels, cout", [((16, 16), 16), ((16, 5), 17), ((3, 16), 4)])
@pytest.mark.parametrize("block_rows", [4, 6, 8])
def test_two_inputs_give_the_gradient_of_their_concatenation(channels, cout, block_rows):
    rng = np.random.default_rng(6)
    inputs = tuple(rng.standard_normal((2, 3, 6, 5, c)) for c in channels)   # odd, non-cubic, batch 2
    grad_output = rng.standard_normal((2, 3, 6, 5, cout))
    expected = direct_reference(np.concatenate(inputs, axis=4), grad_output)
    np.testing.assert_allclose(winograd_grad_weight(inputs, grad_output, block_rows), expected,
                               rtol=0, atol=1e-11)                          # float64: rounding only
