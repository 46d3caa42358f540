"""Size arithmetic shared by the layers and their kernels: 3-tuples and output sizes.

PyTorch lets kernel_size, stride and padding be one int (the same on every axis) or three;
`triple` turns either into a 3-tuple. Output sizes per spatial axis (no dilation):

    window placed every s voxels over a padded length L (Conv3d, MaxPool3d):   (L - k) // s + 1
    transposed convolution of an input of length D:                            (D - 1) * s - 2 * p + k

(derived in nn3d/conv3d.py and nn3d/conv_transpose3d.py; MaxPool3d is the first with L = D).
"""
import numpy as np


def triple(value, name, layer):
    """An int or a sequence of 3 ints -> a 3-tuple of ints; anything else is a ValueError naming
    `layer` and the argument `name`. Ranges (>= 1, >= 0) are the caller's to check."""
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"{layer}: {name} must be an int or a tuple of 3 ints, got {value!r}")
    return tuple(int(v) for v in values)


def window_output_size(padded_size, kernel_size, stride):
    """Positions of a kernel_size window placed every `stride` voxels inside `padded_size`
    (each a 3-tuple): Conv3d's output size for an already padded input, MaxPool3d's for any."""
    return tuple((length - k) // s + 1 for length, k, s in zip(padded_size, kernel_size, stride))


def transposed_output_size(input_size, kernel_size, stride, padding):
    """ConvTranspose3d's output size: the full scatter (D - 1)*s + k, less the padding on both sides."""
    return tuple((size - 1) * s - 2 * p + k
                 for size, k, s, p in zip(input_size, kernel_size, stride, padding))
