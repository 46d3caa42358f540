"""One training step, written once: mri2ct.train, mri2ct.inspect and benchmarks/step.py call it.

    loss = train_step(model, criterion, optimizer, scheduler, x, target, clip)

is the textbook step, in two halves that can also be called separately:

    model.zero_grad()
    loss = forward_backward(model, criterion, x, target)    # y = f(x); L = loss(y, t); grads += dL/dW
    grad_norm = optimizer_step(model.parameters(), optimizer, scheduler, clip)
                                                            # clip the joint norm, AdamW, next lr

Gradients accumulate (every layer's backward adds into `.grad`), so averaging the gradient of K
micro-batches before one update is: zero_grad once, K calls of forward_backward with
grad_scale = 1 / K, then one optimizer_step. mri2ct.inspect runs only the first half, so it looks at
exactly the gradients a training step would apply.
"""
import numpy as np

import nn3d


def forward_backward(model, criterion, x, target, grad_scale=1.0):
    """Forward in the model's current mode, the loss, and backward; parameter gradients are ADDED
    to `.grad` (times `grad_scale`). x, target: (N, C, D, H, W). Returns the loss (a float)."""
    y = model.forward(x)                                           # (N, Cout, D, H, W)
    loss = criterion.forward(y, target)
    grad_y = criterion.backward()                                  # (N, Cout, D, H, W)
    if grad_scale != 1.0:                                          # skip a full pass when unscaled
        grad_y = grad_y * np.float32(grad_scale)
    model.backward(grad_y)
    return loss


def optimizer_step(params, optimizer, scheduler, clip):
    """Clip the joint gradient norm of `params` to `clip`, update them, advance the learning rate.
    Returns the gradient norm before clipping."""
    grad_norm = nn3d.clip_grad_norm_(params, clip)
    optimizer.step()
    scheduler.step()
    return grad_norm


def train_step(model, criterion, optimizer, scheduler, x, target, clip):
    """One optimisation step on the batch (x, target); returns its loss (before the update)."""
    model.zero_grad()
    loss = forward_backward(model, criterion, x, target)
    optimizer_step(model.parameters(), optimizer, scheduler, clip)
    return loss
