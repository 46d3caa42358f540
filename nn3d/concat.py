"""Concat: channel concatenation (torch.cat(inputs, dim=1)), as used by the U-Net's skip connections.

Forward, inputs x^(j) of shape (N, C_j, D, H, W), j = 0..J-1, offsets o_j = C_0 + ... + C_{j-1}:
    y[n, o_j + c, d, h, w] = x^(j)[n, c, d, h, w]        0 <= c < C_j          (F)  (N, sum C_j, D, H, W)
Backward: each output element is a copy of exactly one input element, so dy/dx is a selection and
    dL/dx^(j)[n, c, d, h, w] = dL/dy[n, o_j + c, d, h, w]                               (B)  (N, C_j, D, H, W)
i.e. the gradient is split back along the channel axis, slice j going to input j.

Memory: the output is channels-last, so each input is written into a stride-C_total band of it. The
gradient slices are copied into their own contiguous channels-last blocks (a channels-last slice
of a wider array is not itself contiguous, and the layers upstream want contiguous blocks).
"""
from typing import NamedTuple

import numpy as np

from .core import arena
from .checks import check_forward_ran, check_grad_output, check_volume
from .grad_mode import is_grad_enabled
from .layout import from_channels_last
from .module import Module


class ConcatCache(NamedTuple):
    """What forward keeps for backward."""
    offsets: np.ndarray       # (J + 1,) channel offsets o_j, the last one sum C_j
    output_shape: tuple       # (N, sum C_j, D, H, W)
    dtype: np.dtype           # of the output: the dtype grad_output must have


class Concat(Module):
    """Concat(): forward(*inputs) concatenates (N, C_j, D, H, W) arrays along C;
    backward(grad_output) returns a tuple of gradient slices, one per input."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, *inputs):
        if len(inputs) < 1:
            raise ValueError("Concat: forward needs at least one input array")
        for index, x in enumerate(inputs):
            check_volume(x, "Concat", name=f"input {index}")
        first = inputs[0]
        n, _, d, h, w = first.shape
        for index, x in enumerate(inputs[1:], start=1):
            if x.dtype != first.dtype:
                raise TypeError(f"Concat: input {index} is {x.dtype} but input 0 is {first.dtype}")
            if (x.shape[0],) + x.shape[2:] != (n, d, h, w):
                raise ValueError(f"Concat: input {index} has shape {x.shape}, which differs from input 0's "
                                 f"{first.shape} outside the channel axis")
        channels = [x.shape[1] for x in inputs]
        offsets = np.concatenate([[0], np.cumsum(channels)])                  # o_j, (J + 1,)
        y_cl = arena.empty((n, d, h, w, int(offsets[-1])), first.dtype)         # (N, D, H, W, sum C_j)
        for x, start, stop in zip(inputs, offsets[:-1], offsets[1:]):
            y_cl[..., start:stop] = x.transpose(0, 2, 3, 4, 1)                # (F) (N, D, H, W, C_j)
        output_shape = from_channels_last(y_cl).shape
        self._cache = ConcatCache(offsets, output_shape, first.dtype) if is_grad_enabled() else None
        return from_channels_last(y_cl)                                       # (N, sum C_j, D, H, W) view

    # forward:  y[:, o_j + c] = x^(j)[:, c]
    # backward: dL/dx^(j)[:, c] = dL/dy[:, o_j + c]     (B): the split
    def backward(self, grad_output):
        check_forward_ran(self._cache, "Concat")
        offsets, output_shape, dtype = self._cache
        check_grad_output(grad_output, output_shape, dtype, "Concat")
        self._cache = None                                                    # consumed
        grad_output_cl = grad_output.transpose(0, 2, 3, 4, 1)                 # (N, D, H, W, sum C_j) view
        return tuple(from_channels_last(arena.copy(grad_output_cl[..., start:stop]))  # (N, C_j, D, H, W)
                     for start, stop in zip(offsets[:-1], offsets[1:]))
