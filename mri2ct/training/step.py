"""One training step, written once: mri2ct.train, mri2ct.inspect and benchmarks/step.py call it.

    loss = train_step(model, criterion, optimizer, scheduler, x, target, clip)

is the textbook step, in two halves that can also be called separately:

    model.zero_grad()
    loss = forward_backward(model, criterion, x, target)    # y = f(x); L = loss(y, t); grads += dL/dW
    grad_norm = optimizer_step(model.parameters(), optimizer, scheduler, clip)
                                                            # clip the joint norm, AdamW, next lr

mri2ct.inspect runs only the first half, so it looks at exactly the gradients a training step would
apply. The general step, `accumulated_step`, averages several micro-batches before the one update:
gradient accumulation (--accumulate K) and data parallelism (mpiexec -n N), where the micro-batches
of one step are spread over processes and `reduce` sums what each process computed:

    model.zero_grad()
    for x, target, weight in micro_batches:          # this process's micro-batches of the step
        loss += weight * forward_backward(model, criterion, x, target, grad_scale=weight)
    reduce(gradients)                                 # sum over the processes (absent in one)
    optimizer_step(...)

Gradients accumulate (every layer's backward adds into `.grad`), so with weight_j = n_j / n (micro-
batch j holds n_j of the step's n samples) `.grad` ends as sum_j (n_j / n) dL_j/dW, the gradient of
the step's mean loss over its samples: the plain average over micro-batches when all hold B samples,
and in an epoch's last, smaller step still one weight per sample. BatchNorm normalises each micro-
batch with its own statistics; its running statistics get ONE momentum update per step, with the
average of the micro-batches' statistics (`RunningStatistics`), so that they forget at the same pace
whatever the number of micro-batches, and equal in one process and in N.
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


class RunningStatistics:
    """The model's buffers (BatchNorm running mean and variance, batch counters) averaged over the
    micro-batches of one step.

    Each training-mode forward moves a running statistic r by the momentum update
    r_j = (1 - m) r + m s_j, where s_j is micro-batch j's statistic. After each micro-batch
    `collect` keeps the change r_j - r and puts r back, so every micro-batch starts from the same r
    wherever it runs; `apply(count)` sets r + mean_j (r_j - r) = (1 - m) r + m mean_j s_j: one
    update with the mean statistic (and the batch counters advance by one per step).
    """

    def __init__(self, model):
        self.buffers = [buffer for _, buffer in model.named_buffers()]
        self.start = [buffer.copy() for buffer in self.buffers]
        self.changes = [np.zeros(buffer.shape, np.float32) for buffer in self.buffers]

    def collect(self):
        for buffer, start, change in zip(self.buffers, self.start, self.changes):
            change += buffer - start
            buffer[...] = start

    def apply(self, count):
        for buffer, start, change in zip(self.buffers, self.start, self.changes):
            buffer[...] = start + (change / np.float32(count)).astype(buffer.dtype)


def accumulated_step(model, criterion, optimizer, scheduler, micro_batches, clip, micro_batch_count=1,
                     reduce=None):
    """One optimizer step on the weighted gradient of several micro-batches (module docstring).

    micro_batches: iterable of (x, target, weight), this process's micro-batches, x and target
    (B, C, D, H, W), weight = the micro-batch's share of the step's samples. micro_batch_count: the
    step's micro-batches over all processes (the running statistics are averaged over them).
    reduce(arrays): sums a list of float32 arrays over the processes in place (None: one process).
    Returns sum_j weight_j loss_j over this process's micro-batches: the step's loss in one process.
    """
    model.zero_grad()
    statistics = RunningStatistics(model) if micro_batch_count > 1 or reduce is not None else None
    loss = 0.0
    for x, target, weight in micro_batches:
        loss += weight * forward_backward(model, criterion, x, target, grad_scale=weight)
        if statistics is not None:
            statistics.collect()
    params = model.parameters()
    if reduce is not None:
        reduce([param.grad for param in params] + statistics.changes)
    if statistics is not None:
        statistics.apply(micro_batch_count)
    optimizer_step(params, optimizer, scheduler, clip)
    return loss


def train_step(model, criterion, optimizer, scheduler, x, target, clip):
    """One optimisation step on the batch (x, target); returns its loss (before the update)."""
    return accumulated_step(model, criterion, optimizer, scheduler, [(x, target, 1.0)], clip)
