"""Parameter initialisation, as PyTorch does it by default for convolutions.

PyTorch initialises a convolution weight with kaiming_uniform_(w, a=sqrt(5)):

    gain  = sqrt(2 / (1 + a^2)) = sqrt(1/3)
    bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)
    w ~ U(-bound, bound),   b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))

fan_in is weight.shape[1] * (kernel volume): C_in * k^3 for Conv3d, and C_out * k^3 for
ConvTranspose3d, whose weight is stored (C_in, C_out, k, k, k).

Random numbers come from one module-level generator; `manual_seed(s)` makes model creation
reproducible, like `torch.manual_seed`.
"""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Reseed the generator every layer draws its initial weights from."""
    global _generator
    _generator = np.random.default_rng(seed)


def fan_in(weight_shape):
    """weight.shape[1] times the product of the kernel sizes (PyTorch's convention)."""
    return int(weight_shape[1] * np.prod(weight_shape[2:]))


def uniform(shape, bound):
    """float32 array with entries drawn from U(-bound, bound)."""
    return _generator.uniform(-bound, bound, size=shape).astype(np.float32)


def conv_weight_and_bias(weight_shape, bias_size):
    """PyTorch's default (weight, bias) for a convolution; bias is None when bias_size is None."""
    bound = 1.0 / np.sqrt(fan_in(weight_shape))
    weight = uniform(weight_shape, bound)
    bias = None if bias_size is None else uniform((bias_size,), bound)
    return weight, bias
