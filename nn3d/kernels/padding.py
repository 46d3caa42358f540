"""Zero-haloed channels-last buffers: the input of every convolution kernel.

A convolution kernel that reads `x_pad[n, od*sd + kz, oh*sh + ky, ow*sw + kx, c]` needs no boundary test
if the zero padding is already in memory. `embed_strided` builds that buffer once per call:

    out[n, o_d*s_d + offset_d, o_h*s_h + offset_h, o_w*s_w + offset_w, c] = x[n, o_d, o_h, o_w, c]

with zeros everywhere else, in an (N, length_d, length_h, length_w, C) array. Entries of x whose
target index falls outside [0, length) are dropped. `embed_strided` is the plain NumPy version (one
slice assignment, single-threaded); `pad_channels_last`, the case every Conv3d forward and every
stride-1 grad-input needs, runs in a parallel kernel (`pad_kernel`, tested against embed_strided).

- Zero padding by p (what Conv3d's forward needs):  stride 1, offset p, length D + 2p.
- The "dilated and padded" output gradient of a strided convolution (its grad-input is a stride-1
  convolution of that buffer with the flipped kernel, see nn3d/conv3d.py): stride s, offset k-1-p.
"""
import numpy as np
from numba import prange

from .jit import parallel_kernel
from .. import arena


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
def pad_kernel(x_cl, offset_d, offset_h, offset_w, out):
    """out[n, id + offset_d, ih + offset_h, iw + offset_w, c] = x_cl[n, id, ih, iw, c], zeros elsewhere
    (offsets >= 0, out large enough). x_cl (N, D, H, W, C), out (N, Ld, Lh, Lw, C), both C-contiguous.
    Each prange iteration owns one row out[n, i, j, :, :] and writes every value of it once."""
    n_batch, in_d, in_h, in_w, _ = x_cl.shape
    length_d, length_h = out.shape[1], out.shape[2]
    for row in prange(n_batch * length_d * length_h):
        n = row // (length_d * length_h)
        i = np.int64(row // length_h % length_d)
        j = np.int64(row % length_h)
        source_d, source_h = i - offset_d, j - offset_h          # signed: may be outside x_cl
        if 0 <= source_d < in_d and 0 <= source_h < in_h:
            out[n, i, j, :offset_w, :] = 0
            out[n, i, j, offset_w:offset_w + in_w, :] = x_cl[n, source_d, source_h]
            out[n, i, j, offset_w + in_w:, :] = 0
        else:
            out[n, i, j] = 0


def pad_channels_last(x_cl, padding):
    """Zero padding of `padding` = (pd, ph, pw) voxels on both sides of each spatial axis.
    (N, D, H, W, C) -> (N, D + 2pd, H + 2ph, W + 2pw, C), C-contiguous; the same result as
    embed_strided(x_cl, (1, 1, 1), padding, length), written by a parallel kernel."""
    if padding == (0, 0, 0):
        return np.ascontiguousarray(x_cl)
    length = tuple(size + 2 * pad for size, pad in zip(x_cl.shape[1:4], padding))
    out = arena.empty((x_cl.shape[0], *length, x_cl.shape[4]), x_cl.dtype)      # (N, Ld, Lh, Lw, C)
    pad_kernel(np.ascontiguousarray(x_cl), *(np.int64(p) for p in padding), out)
    return out
