"""Inference without caches: `with nn3d.no_grad(): y = model.forward(x)`, as torch.no_grad.

Every layer's forward keeps in `self._cache` what its backward will need (a convolution's input,
BatchNorm's normalised input, pooling's argmax...). For a training step that is the price of
backpropagation; for validation and inference it only holds every activation of the network alive
at once. Inside `no_grad()` layers keep nothing (and drop what an earlier forward kept), so each
activation is freed as soon as the next layer has read it. Outputs are identical.
Backward consumes the cache (as PyTorch frees a graph's saved tensors): each activation is freed as
soon as the backward pass is past it, and a second backward needs a new forward.

A backward after a forward run under `no_grad()` raises the "backward called before forward" error,
since no forward left its cache. The flag is module-level (one per process, like the thread count),
is restored on exit even when the block raises, and nests.
"""
from contextlib import contextmanager

_grad_enabled = True


def is_grad_enabled():
    """True unless inside a `no_grad()` block: layers save caches for backward only when True."""
    return _grad_enabled


@contextmanager
def no_grad():
    """Context manager: forward passes inside it keep no cache for backward."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous
