"""Memory layout: PyTorch's logical shapes, channels-last memory.

Every activation in nn3d has the logical shape (N, C, D, H, W), as in PyTorch. In memory the
channels are the fastest-moving axis: the array is an (N, D, H, W, C) C-contiguous block seen
through a transposed view. PyTorch calls this `channels_last_3d`.

Why: a 3x3x3 convolution reads, for each output voxel, the C input channels of 27 neighbours and
multiplies them by a (C_in, C_out) weight slice. With channels last those C values sit next to each
other, so the innermost loop runs over contiguous memory and vectorises (see docs/performance.md).

    x_cl = to_channels_last(x)        # (N, D, H, W, C) contiguous; no copy if x is already a view
    y = from_channels_last(y_cl)      # (N, C, D, H, W) logical view of an (N, D, H, W, C) block

Index names, the one convention of every layer, kernel and reference in nn3d:

    what                     in formulas and shapes       in code
    batch                    n, N                         n, n_batch
    channel                  c, C; ci / co (conv in/out)  c, channels; ci, co, cin, cout
    input size               D, H, W                      d, h, w; in_d, in_h, in_w
    output size              Do, Ho, Wo                   out_d, out_h, out_w
    kernel size              kD, kH, kW                   kernel_d, kernel_h, kernel_w
    stride, padding          (sd, sh, sw), (pd, ph, pw)   stride_d, ...; padding
    an input voxel           (id, ih, iw)                 id, ih, iw
    an output voxel          (od, oh, ow)                 od, oh, ow
    an offset in the kernel  (kz, ky, kx)                 kz, ky, kx
    a voxel of a flat (P, C) view, P = N*D*H*W            p
A `_cl` suffix marks a channels-last (N, D, H, W, C) array (x_cl, grad_output_cl).
"""
from .core import arena


def to_channels_last(x):
    """(N, C, D, H, W) array in any layout -> C-contiguous (N, D, H, W, C) array.

    Free (a view) when `x` is already channels-last in memory; otherwise one copy.
    """
    x_cl = x.transpose(0, 2, 3, 4, 1)
    return x_cl if x_cl.flags.c_contiguous else arena.copy(x_cl)


def from_channels_last(x_cl):
    """C-contiguous (N, D, H, W, C) array -> (N, C, D, H, W) logical view, without copying."""
    return x_cl.transpose(0, 4, 1, 2, 3)


def is_channels_last(x):
    """True when the (N, C, D, H, W) array `x` is a view of a contiguous (N, D, H, W, C) block."""
    return x.transpose(0, 2, 3, 4, 1).flags.c_contiguous
