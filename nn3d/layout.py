"""Memory layout: PyTorch's logical shapes, channels-last memory.

Every activation in nn3d has the logical shape (N, C, D, H, W), as in PyTorch. In memory the
channels are the fastest-moving axis: the array is an (N, D, H, W, C) C-contiguous block seen
through a transposed view. PyTorch calls this `channels_last_3d`.

Why: a 3x3x3 convolution reads, for each output voxel, the C input channels of 27 neighbours and
multiplies them by a (C_in, C_out) weight slice. With channels last those C values sit next to each
other, so the innermost loop runs over contiguous memory and vectorises (see ../shared/PERF_NOTES.md).

    x_cl = to_channels_last(x)        # (N, D, H, W, C) contiguous; no copy if x is already a view
    y = from_channels_last(y_cl)      # (N, C, D, H, W) logical view of an (N, D, H, W, C) block
"""
import numpy as np


def to_channels_last(x):
    """(N, C, D, H, W) array in any layout -> C-contiguous (N, D, H, W, C) array.

    Free (a view) when `x` is already channels-last in memory; otherwise one copy.
    """
    return np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))


def from_channels_last(x_cl):
    """C-contiguous (N, D, H, W, C) array -> (N, C, D, H, W) logical view, without copying."""
    return x_cl.transpose(0, 4, 1, 2, 3)


def is_channels_last(x):
    """True when the (N, C, D, H, W) array `x` is a view of a contiguous (N, D, H, W, C) block."""
    return x.transpose(0, 2, 3, 4, 1).flags.c_contiguous
