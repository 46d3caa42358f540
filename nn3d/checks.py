"""Input checks shared by the layers: one clear sentence that names the problem.

Checks are cheap (shape, dtype, ndim). Scanning for NaN costs a full pass over memory, so layers do
not do it; `MSELoss` checks that the loss is finite, which catches a NaN anywhere upstream.
"""
import numpy as np

from .module import FLOAT_DTYPES


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


def check_same_shape(grad_output, expected_shape, layer):
    """The gradient arriving in backward must have the shape forward produced."""
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(f"{layer}.backward: grad_output must be a NumPy array, "
                        f"got {type(grad_output).__name__}")
    if grad_output.shape != tuple(expected_shape):
        raise ValueError(f"{layer}.backward: grad_output has shape {grad_output.shape}, but forward "
                         f"returned shape {tuple(expected_shape)}")


def check_forward_ran(cache, layer):
    """Backward needs what forward saved; calling it first is a usage error."""
    if cache is None:
        raise ValueError(f"{layer}.backward called before {layer}.forward: run forward on a batch "
                         f"first (outside nn3d.no_grad(), under which forward keeps nothing for backward)")
