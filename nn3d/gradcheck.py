"""Gradient checking by central finite differences: proof of a backward pass without PyTorch.

For a layer y = f(x) and a fixed random upstream gradient G = dL/dy, the scalar

    L(x) = sum(f(x) * G)

has dL/dx = backward(G). Central differences estimate each component:

    dL/dx[i] ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)        error O(eps^2)

In float64 with eps = 1e-6 the truncation error (~eps^2 * f''') and the rounding error
(~1e-16 * |L| / eps) are both near 1e-10 relative, so a correct backward matches to ~1e-7 or better
and a wrong one (a flipped kernel, a missing term) is off by O(1). A random G matters: with G = 1
many wrong gradients (a transposed weight, a flipped kernel) still sum to the right number.
"""
import numpy as np


def numerical_gradient(loss, array, eps=1e-6):
    """dloss/darray by central differences. `loss()` recomputes the scalar from the current values
    of `array`, which is perturbed in place one element at a time and restored afterwards."""
    grad = np.zeros(array.shape, dtype=np.float64)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + eps
        loss_plus = loss()
        array[index] = original - eps
        loss_minus = loss()
        array[index] = original
        grad[index] = (loss_plus - loss_minus) / (2 * eps)
    return grad


def max_relative_error(ours, reference):
    """max |ours - reference| / max |reference|: the error relative to the tensor's own scale.

    (Element-wise relative error explodes where the reference is near zero, which says nothing
    about the gradient's quality, so errors are measured against the largest magnitude.)
    """
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {reference.shape}")
    scale = np.max(np.abs(reference)) if reference.size else 0.0
    return float(np.max(np.abs(ours - reference)) / max(scale, 1e-30)) if ours.size else 0.0


def max_absolute_error(ours, reference):
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(ours - reference))) if ours.size else 0.0
