"""Zero-haloed channels-last buffers: the input of every convolution kernel.

A convolution kernel that reads `x_pad[n, od*sd + kz, oh*sh + ky, ow*sw + kx, c]` needs no boundary test
if the zero padding is already in memory. `embed_strided` builds that buffer once per call:

    out[n, o_d*s_d + offset_d, o_h*s_h + offset_h, o_w*s_w + offset_w, c] = x[n, o_d, o_h, o_w, c]

with zeros everywhere else, in an (N, length_d, length_h, length_w, C) array. Entries of x whose
target index falls outside [0, length) are dropped. `embed_strided` is the plain NumPy version (one
slice assignment, single-threaded); `pad_channels_last`, the case every Conv3d forward and every
stride-1 grad-input needs, runs in a parallel kernel (`pad_kernel`, tested against embed_strided);
`pad_and_concatenate` writes several inputs side by side along the channels into one padded buffer,
which is how Conv3d reads a concatenation (the U-Net's skip connections) without a concat pass.

- Zero padding by p (what Conv3d's forward needs):  stride 1, offset p, length D + 2p.
- The "dilated and padded" output gradient of a strided convolution (its grad-input is a stride-1
  convolution of that buffer with the flipped kernel, see nn3d/conv3d.py): stride s, offset k-1-p.
"""
import numpy as np
from numba import prange

from .jit import parallel_kernel
from ..core import arena


def _placement(size, stride, offset, length):
    """For one axis: (first source index, count, first target index) of the entries that land
    inside [0, length) when source index o goes to target index o*stride + offset."""
    first = 0 if offset >= 0 else -(offset // stride)          # smallest o with o*stride+offset >= 0
    last = min(size - 1, (length - 1 - offset) // stride)      # largest o with o*stride+offset < length
    count = max(0, last - first + 1)
    return first, count, first * stride + offset


def embed_strided(x_cl, stride, offset, length):
    """Place channels-last `x_cl` (N, D, H, W, C) into zeros of shape (N, *length, C), entry o of each
    spatial axis going to o*stride + offset. stride, offset, length: 3-tuples of ints."""
    n, *size, channels = x_cl.shape
    out = arena.zeros((n, *length, channels), x_cl.dtype)        # (N, Lz, Ly, Lx, C)
    source, target = [slice(None)], [slice(None)]
    for axis in range(3):
        first, count, start = _placement(size[axis], stride[axis], offset[axis], length[axis])
        source.append(slice(first, first + count))
        target.append(slice(start, start + (count - 1) * stride[axis] + 1 if count else start,
                            stride[axis]))
    out[tuple(target)] = x_cl[tuple(source)]
    return out


@parallel_kernel
def pad_kernel(x_cl, offset_d, offset_h, offset_w, channel_start, out):
    """out[n, id + offset_d, ih + offset_h, iw + offset_w, channel_start + c] = x_cl[n, id, ih, iw, c],
    zeros elsewhere in that band of channels (offsets >= 0, out large enough). x_cl (N, D, H, W, C),
    out (N, Ld, Lh, Lw, C_out) with channel_start + C <= C_out, both C-contiguous. Each prange
    iteration owns the band of one row out[n, i, j, :, channel_start:channel_start + C] and writes
    every value of it once, so several inputs can be written side by side into one buffer."""
    n_batch, in_d, in_h, in_w, channels = x_cl.shape
    length_d, length_h, length_w = out.shape[1], out.shape[2], out.shape[3]
    for row in prange(n_batch * length_d * length_h):
        n = row // (length_d * length_h)
        i = np.int64(row // length_h % length_d)
        j = np.int64(row % length_h)
        source_d, source_h = i - offset_d, j - offset_h          # signed: may be outside x_cl
        inside_row = 0 <= source_d < in_d and 0 <= source_h < in_h
        for k in range(length_w):
            source_w = k - offset_w
            if inside_row and 0 <= source_w < in_w:
                for c in range(channels):
                    out[n, i, j, k, channel_start + c] = x_cl[n, source_d, source_h, source_w, c]
            else:
                for c in range(channels):
                    out[n, i, j, k, channel_start + c] = 0


def pad_and_concatenate(inputs_cl, padding):
    """Zero padding of `padding` = (pd, ph, pw) voxels on both sides of each spatial axis, with the
    inputs' channels side by side: (N, D, H, W, C_j) for each j -> (N, D + 2pd, H + 2ph, W + 2pw, sum C_j),
    C-contiguous. Input j fills channels [C_0 + ... + C_{j-1}, ... + C_j): torch.cat(inputs, dim=1)
    and the padding in one pass over memory (what a convolution over a concatenation needs).
    One input and no padding (a 1x1x1 convolution): the input itself, no copy (read-only use)."""
    if len(inputs_cl) == 1 and tuple(padding) == (0, 0, 0):
        return np.ascontiguousarray(inputs_cl[0])
    first = inputs_cl[0]
    length = tuple(size + 2 * pad for size, pad in zip(first.shape[1:4], padding))
    channels = sum(x_cl.shape[4] for x_cl in inputs_cl)
    out = arena.empty((first.shape[0], *length, channels), first.dtype)     # (N, Ld, Lh, Lw, sum C_j)
    channel_start = 0
    for x_cl in inputs_cl:
        pad_kernel(np.ascontiguousarray(x_cl), *(np.int64(p) for p in padding), np.int64(channel_start), out)
        channel_start += x_cl.shape[4]
    return out


def pad_channels_last(x_cl, padding):
    """Zero padding of `padding` = (pd, ph, pw) voxels on both sides of each spatial axis.
    (N, D, H, W, C) -> (N, D + 2pd, H + 2ph, W + 2pw, C), C-contiguous; the same result as
    embed_strided(x_cl, (1, 1, 1), padding, length), written by a parallel kernel."""
    return pad_and_concatenate((x_cl,), padding)
