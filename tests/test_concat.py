"""Concat: output and the gradient split against torch.cat(dim=1), finite differences, bad input."""
import numpy as np
import pytest
import torch

from nn3d import Concat
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.layout import from_channels_last, is_channels_last

from torch_reference import assert_matches_torch

# (channels of each input, (N, D, H, W))
CASES = [((3, 4), (2, 7, 9, 11)),       # odd, non-cubic, batch 2
         ((1, 1), (1, 4, 5, 6)),        # C = 1 each
         ((16, 16, 2), (1, 4, 4, 4))]   # three inputs, the U-Net's skip widths


def channels_last(x):
    return from_channels_last(np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)))


@pytest.mark.parametrize("channels, size", CASES)
def test_matches_torch_cat(channels, size):
    # Concatenation copies values: output and gradients must equal torch's exactly.
    rng = np.random.default_rng(0)
    n, d, h, w = size
    inputs = [rng.standard_normal((n, c, d, h, w)).astype(np.float32) for c in channels]
    inputs[0] = channels_last(inputs[0])                  # mixed memory layouts are accepted
    ours = assert_matches_torch(Concat(), lambda *tensors: torch.cat(tensors, dim=1), inputs, 0)
    assert [key for key in ours if key.startswith("grad")] == [f"grad_input[{i}]" for i in range(len(inputs))]
    assert all(is_channels_last(array) for array in ours.values())


def test_finite_differences_float64():
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((2, 2, 3, 4, 2)), rng.standard_normal((2, 3, 3, 4, 2))]
    for name, analytic, numeric in check_layer(Concat(), inputs):
        assert max_relative_error(analytic, numeric) < 1e-8, name


def test_bad_input():
    """Concat's own checks (several inputs); the ones every layer shares are in test_bad_input.py."""
    layer = Concat()
    a = np.zeros((1, 2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="at least one input"):
        layer.forward()
    with pytest.raises(ValueError, match="input 1 has shape .* outside the channel axis"):
        layer.forward(a, np.zeros((1, 2, 3, 3, 4), np.float32))
    with pytest.raises(TypeError, match="input 1 is float64 but input 0 is float32"):
        layer.forward(a, np.zeros((1, 2, 3, 3, 3), np.float64))
    with pytest.raises(TypeError, match="input 1 must be float32.*float16"):
        layer.forward(a, np.zeros((1, 2, 3, 3, 3), np.float16))
