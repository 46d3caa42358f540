"""MSELoss: loss and gradient against torch.nn.MSELoss, float64 accumulation, NaN/inf caught,
finite differences, bad input."""
import math

import numpy as np
import pytest
import torch

from nn3d import MSELoss
from nn3d.gradcheck import check_mse, max_relative_error
from nn3d.layout import from_channels_last

from torch_reference import assert_matches_torch

SHAPES = [(2, 3, 7, 9, 11), (1, 1, 4, 5, 6), (2, 16, 4, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(shape):
    # The loss is a mean over <= 4200 squares: we sum in float64, torch in float32 (pairwise, error
    # ~ eps * log2(n) ~ 1e-6). The gradient is one subtraction and one multiply per element: 1e-6.
    rng = np.random.default_rng(0)
    pred = rng.standard_normal(shape).astype(np.float32)
    pred = from_channels_last(np.ascontiguousarray(pred.transpose(0, 2, 3, 4, 1)))   # as layers return it
    target = rng.standard_normal(shape).astype(np.float32)                             # NCDHW, as data is
    ours = assert_matches_torch(MSELoss(), torch.nn.MSELoss(), [pred, target], 1e-6)
    assert isinstance(MSELoss().forward(pred, target), float)
    assert ours["grad_pred"].dtype == np.float32


def test_accumulates_in_float64():
    """2^20 float32 squares: a float32 sum is off by ~1e-7 relative, a float64 one by ~1e-13."""
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((1, 1, 64, 128, 128)).astype(np.float32)
    loss = MSELoss().forward(pred, np.zeros_like(pred))
    exact = math.fsum((pred.astype(np.float64) ** 2).ravel()) / pred.size   # correctly rounded sum
    assert loss == pytest.approx(exact, rel=1e-12)


def test_finite_differences_float64():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((2, 1, 3, 4, 5)), rng.standard_normal((2, 1, 3, 4, 5))
    for name, analytic, numeric in check_mse(MSELoss(), pred, target):
        assert max_relative_error(analytic, numeric) < 1e-8, name


@pytest.mark.parametrize("bad_value, word", [(np.nan, "nan"), (np.inf, "inf")])
def test_non_finite_loss_raises(bad_value, word):
    pred = np.zeros((1, 1, 2, 2, 2), np.float32)
    pred[0, 0, 1, 1, 1] = bad_value
    with pytest.raises(ValueError, match=f"MSELoss: loss is {word}"):
        MSELoss().forward(pred, np.zeros_like(pred))


def test_bad_input():
    criterion = MSELoss()
    a = np.zeros((1, 1, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="before MSELoss.forward"):
        criterion.backward()
    with pytest.raises(ValueError, match="pred has shape .* but target has shape"):
        criterion.forward(a, np.zeros((1, 1, 2, 2, 3), np.float32))
    with pytest.raises(TypeError, match="target must be float32 or float64, got int64"):
        criterion.forward(a, np.zeros((1, 1, 2, 2, 2), np.int64))
    with pytest.raises(TypeError, match="pred must be float32 or float64, got float16"):
        criterion.forward(a.astype(np.float16), a)
    with pytest.raises(TypeError, match="NumPy array"):
        criterion.forward([0.0], a)
