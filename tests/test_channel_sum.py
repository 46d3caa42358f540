"""The one float64 reduction over voxels against its NumPy reference, its precision, and its
independence of the thread count."""
import math

import numpy as np
import pytest

from nn3d.kernels import reference
from nn3d.kernels.channel_sum import ROWS_PER_CHUNK, channel_sums


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, channels", [(2 * ROWS_PER_CHUNK + 37, 3),   # two full chunks and a tail
                                            (5, 1),                        # less than one chunk, C = 1
                                            (ROWS_PER_CHUNK, 16)])         # exactly one chunk
def test_matches_reference(dtype, rows, channels):
    rng = np.random.default_rng(0)
    a = (1 + rng.standard_normal((rows, channels))).astype(dtype)
    b = (3 + rng.standard_normal((rows, channels))).astype(dtype)
    shift = rng.standard_normal(channels)
    np.testing.assert_allclose(channel_sums(a), reference.channel_sums_reference(a), rtol=1e-12)
    for ours, theirs in zip(channel_sums(a, b, shift), reference.channel_sums_reference(a, b, shift)):
        assert ours.dtype == np.float64
        np.testing.assert_allclose(ours, theirs, rtol=1e-11)
    for ours, theirs in zip(channel_sums(a, a), reference.channel_sums_reference(a, a)):   # sum a, sum a^2
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    mask = np.maximum(rng.standard_normal((rows, channels)), 0).astype(dtype)      # a ReLU output
    masked = channel_sums(a, b, shift, mask)
    for ours, theirs in zip(masked, reference.channel_sums_reference(a, b, shift, mask)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-11)
    assert not np.allclose(masked[0], channel_sums(a)) or rows < 2                  # the mask acted


def test_sums_in_float64():
    """2^18 float32 values of mean 1: a float32 running sum is off by ~1e-4 relative, ours by ~1e-13."""
    a = (1 + np.random.default_rng(1).standard_normal((1 << 18, 1)) * 1e-3).astype(np.float32)
    exact = math.fsum(a.astype(np.float64).ravel())
    assert channel_sums(a)[0] == pytest.approx(exact, rel=1e-13)


def test_same_bits_on_any_thread_count(on_one_and_two_threads):
    a = np.random.default_rng(2).standard_normal((10 * ROWS_PER_CHUNK + 5, 4)).astype(np.float32)
    one, two = on_one_and_two_threads(channel_sums, a, a)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)
