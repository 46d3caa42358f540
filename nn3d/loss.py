"""MSELoss: the mean squared error between a prediction and a target of the same shape.

Forward, over all n = N*C*D*H*W elements i:
    L = 1/n sum_i (pred_i - target_i)^2                                           (F)  scalar
Backward (L is the end of the chain, so backward takes no upstream gradient):
    dL/dpred_i = 2 (pred_i - target_i) / n                                        (B)  pred's shape
The error e_i = pred_i - target_i is computed once, in pred's dtype (as PyTorch does), kept for (B),
and its squares are summed in float64 (nn3d/kernels/channel_sum.py; plain NumPy:
channel_sums_reference in nn3d/kernels/reference.py); L is returned as a Python float.

This is the boundary where NaN/inf are caught: one non-finite value anywhere upstream (a diverged
weight, a bad input voxel) makes L non-finite, and forward raises instead of training on it. The
layers themselves do not scan for NaN (a pass over memory each).
"""
from typing import NamedTuple

import numpy as np

from .core import arena
from .checks import check_forward_ran
from .grad_mode import is_grad_enabled
from .kernels.channel_sum import channel_sums
from .layout import from_channels_last, to_channels_last
from .module import FLOAT_DTYPES


class MSELossCache(NamedTuple):
    """What forward keeps for backward."""
    error_mem: np.ndarray     # pred - target in pred's memory order (channels-last for 5-D), pred's dtype
    ndim: int                 # pred.ndim: 5-D gradients are returned as (N, C, D, H, W) views


class MSELoss:
    """MSELoss(): forward(pred, target) -> float (mean reduction, as torch.nn.MSELoss());
    backward() -> dL/dpred with pred's shape and dtype."""

    def __init__(self):
        self._cache = None

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def forward(self, pred, target):
        for name, array in (("pred", pred), ("target", target)):
            if not isinstance(array, np.ndarray):
                raise TypeError(f"MSELoss: {name} must be a NumPy array, got {type(array).__name__}")
            if array.dtype not in FLOAT_DTYPES:
                raise TypeError(f"MSELoss: {name} must be float32 or float64, got {array.dtype}")
        if pred.shape != target.shape:
            raise ValueError(f"MSELoss: pred has shape {pred.shape} but target has shape {target.shape}")
        if pred.size == 0:
            raise ValueError(f"MSELoss: pred is empty, shape {pred.shape}")
        target = target.astype(pred.dtype, copy=False)
        if pred.ndim == 5:                                           # walk both in channels-last order
            pred_mem, target_mem = to_channels_last(pred), to_channels_last(target)   # (N, D, H, W, C)
        else:
            pred_mem, target_mem = np.ascontiguousarray(pred), np.ascontiguousarray(target)
        error_mem = np.subtract(pred_mem, target_mem, out=arena.empty_like(pred_mem))   # e = pred - target, same memory order
        error_column = error_mem.reshape(-1, 1)                      # (n, 1): one channel
        loss = float(channel_sums(error_column, error_column)[1][0]) / pred.size   # (F) sum e^2 / n
        if not np.isfinite(loss):
            raise ValueError(f"MSELoss: loss is {loss} — a NaN or inf reached the loss (check the inputs, "
                             f"the learning rate, or the gradients of the previous step)")
        self._cache = MSELossCache(error_mem, pred.ndim) if is_grad_enabled() else None
        return loss

    # forward:  L = 1/n sum_i (pred_i - target_i)^2
    # backward: dL/dpred_i = 2 (pred_i - target_i) / n       (B)
    def backward(self):
        check_forward_ran(self._cache, "MSELoss")
        error_mem, ndim = self._cache
        grad_mem = np.multiply(error_mem, error_mem.dtype.type(2.0 / error_mem.size),
                               out=arena.empty_like(error_mem))      # (B), same memory order
        return from_channels_last(grad_mem) if ndim == 5 else grad_mem
