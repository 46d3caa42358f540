"""Winograd F(2^3, 3^3) (nn3d/kernels/winograd.py): the matrices against the direct 1-D sum, the plain
reference against the direct-convolution reference, and the fast kernel against both."""
import numpy as np
import pytest

from nn3d.kernels import reference, winograd
from nn3d.kernels.padding import pad_channels_last


def test_one_dimensional_f23_is_the_correlation():
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(4), rng.standard_normal(3)
    y = winograd.A_T @ ((winograd.G @ g) * (winograd.B_T @ d))                # 4 multiplications
    np.testing.assert_allclose(y, [d[0:3] @ g, d[1:4] @ g], rtol=0, atol=1e-14)


# (batch, Cin, Cout, (D, H, W)): odd and even sizes (partial last tiles), non-cubic, C = 1, Cin != Cout
REFERENCE_SHAPES = [(2, 3, 5, (5, 6, 7)), (1, 1, 1, (3, 4, 1)), (1, 4, 2, (2, 9, 4))]


@pytest.mark.parametrize("batch, cin, cout, size", REFERENCE_SHAPES)
def test_reference_equals_direct_convolution(batch, cin, cout, size):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *size, cin))                            # (N, D, H, W, Cin)
    weight = rng.standard_normal((cout, cin, 3, 3, 3))
    bias = rng.standard_normal(cout)
    direct = reference.conv3d_forward_reference(pad_channels_last(x, (1, 1, 1)), weight, bias, (1, 1, 1))
    # float64 rounding only: the sums have ~100 terms of size ~1
    np.testing.assert_allclose(winograd.winograd_forward_reference(x, weight, bias), direct,
                               rtol=0, atol=1e-12)
