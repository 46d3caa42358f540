"""Input checks shared by the layers: one clear sentence that names the problem.

Checks are cheap (shape, dtype, ndim). Scanning for NaN costs a full pass over memory, so layers do
not do it; `MSELoss` checks that the loss is finite, which catches a NaN anywhere upstream.
"""
import numpy as np

from .module import FLOAT_DTYPES
from .core.shapes import triple


def check_volume(x, layer, channels=None, dtype=None, name="input"):
    """Validate a (N, C, D, H, W) floating-point array for `layer` (a class name for the message).

    Raises TypeError for a non-array or a non-float32/float64 dtype, ValueError for a wrong number
    of dimensions, a channel count other than `channels`, an empty array, or a dtype other than the
    layer's parameter `dtype`.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: {name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: {name} must be float32 (or float64 for gradient checks), "
                        f"got {x.dtype}")
    if x.ndim != 5:
        raise ValueError(f"{layer}: {name} must be 5-D (N, C, D, H, W), got {x.ndim}-D shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{layer}: {name} is empty, shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: {name} has {x.shape[1]} channels, expected {channels} "
                         f"(shape {x.shape})")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{layer}: {name} is {x.dtype} but the layer's parameters are {dtype}; "
                        f"cast one with .astype() or Module.to()")


def check_grad_output(grad_output, expected_shape, expected_dtype, layer):
    """The one rule for every layer's backward: grad_output must be an array with exactly the shape
    and dtype of the output forward returned. Nothing is cast silently: a float64 gradient arriving
    at a float32 layer is a bug upstream, and casting it would hide it."""
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(f"{layer}.backward: grad_output must be a NumPy array, "
                        f"got {type(grad_output).__name__}")
    if grad_output.shape != tuple(expected_shape):
        raise ValueError(f"{layer}.backward: grad_output has shape {grad_output.shape}, but forward "
                         f"returned shape {tuple(expected_shape)}")
    if grad_output.dtype != expected_dtype:
        raise ValueError(f"{layer}.backward: grad_output is {grad_output.dtype}, but forward returned "
                         f"{np.dtype(expected_dtype)}")


def check_forward_ran(cache, layer):
    """Backward needs what forward saved; calling it first is a usage error."""
    if cache is None:
        raise ValueError(f"{layer}.backward called before {layer}.forward: run forward on a batch "
                         f"first (outside nn3d.no_grad(), under which forward keeps nothing for backward; "
                         f"each backward consumes what one forward kept)")


def conv_arguments(layer, in_channels, out_channels, kernel_size, stride, padding):
    """Validate a convolution's hyper-parameters; return them as ints and 3-tuples of ints.
    (Conv3d and ConvTranspose3d; `layer` names the class in the error message.)"""
    in_channels, out_channels = int(in_channels), int(out_channels)
    kernel_size = triple(kernel_size, "kernel_size", layer)
    stride = triple(stride, "stride", layer)
    padding = triple(padding, "padding", layer)
    if min(in_channels, out_channels, *kernel_size, *stride) < 1 or min(padding) < 0:
        raise ValueError(f"{layer}: channels, kernel_size and stride must be >= 1 and padding >= 0, "
                         f"got in_channels={in_channels}, out_channels={out_channels}, "
                         f"kernel_size={kernel_size}, stride={stride}, padding={padding}")
    return in_channels, out_channels, kernel_size, stride, padding


def pool_arguments(layer, kernel_size, stride):
    """Validate a pooling window: kernel_size and stride (None: = kernel_size) as 3-tuples of ints >= 1."""
    kernel_size = triple(kernel_size, "kernel_size", layer)
    stride = kernel_size if stride is None else triple(stride, "stride", layer)
    if min(*kernel_size, *stride) < 1:
        raise ValueError(f"{layer}: kernel_size and stride must be positive integers, "
                         f"got kernel_size={kernel_size}, stride={stride}")
    return kernel_size, stride
