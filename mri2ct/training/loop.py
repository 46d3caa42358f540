"""One epoch of training and one validation pass, on one rank or on N (common/distributed.py).

One epoch = every training patient once, in an order and with flips drawn from (seed, epoch), cut
into steps of B x P samples (B = --batch-size, P = micro-batches per step; the last step may be
smaller); with --patch N each sample is an N^3 patch centred on a mask voxel drawn from
(seed, epoch, step, sample) (`PatientSet.batch_plan`), else the whole volume. Every random choice is
a pure function of those numbers, so a resumed run reads exactly what the uninterrupted run would
have read. With P = 1, each step is the textbook one, `step.train_step`:

    model.zero_grad(); y = model.forward(x); loss = criterion.forward(y, target)
    model.backward(criterion.backward()); clip_grad_norm_(model.parameters(), clip)
    optimizer.step(); scheduler.step()

Micro-batches: P = N x K, N ranks and K = --accumulate. Micro-batch j of a step holds the step's
samples j, j + P, j + 2P, ... (`deal`); rank r computes micro-batches r, r + N, ..., r + (K-1)N, so
in one process --batch-size B --accumulate K reads exactly what --batch-size BK reads. The gradient
is sum_j (n_j / n) dL_j/dW over the step's micro-batches (`step.accumulated_step`), summed over the
ranks by one allreduce; clipping and AdamW then run identically on every rank. BatchNorm normalises
each micro-batch with its own statistics; README.md, "More than one machine", has the rest.

Validation predicts each whole validation scan with the sliding-window predictor that infer and
evaluate use (inference/sliding_window.py; the window is the patch, or the whole volume), in eval
mode, and reports the MSE (network scale) and the MAE in HU inside the mask, averaged over patients;
rank r of N predicts patients r, r + N, ...
"""
import numpy as np
from tqdm import tqdm

from mri2ct.data import hu_to_net
from mri2ct.inference.sliding_window import predict_sliding_window, prediction_to_hu
from mri2ct.training.step import accumulated_step


def share_start(world, model, optimizer, scheduler, history):
    """Rank 0's parameters, statistics, optimizer state, schedule and history on every rank."""
    start = world.broadcast({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "history": history} if world.is_root else None)
    if not world.is_root:
        model.load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    return start["history"]


def deal(samples, parts):
    """The step's samples dealt into `parts` micro-batches: micro-batch j = samples j, j + parts, ...
    (empty when the step has fewer samples than parts)."""
    return [samples[j::parts] for j in range(parts)]


def train_one_epoch(model, criterion, optimizer, scheduler, dataset, epoch, args, world, label):
    """One pass over the training set following the epoch's seeded plan, this rank computing its
    micro-batches of each step (module docstring); returns the mean step loss over all ranks."""
    model.train()
    parts = world.size * args.accumulate                            # P micro-batches per step
    steps = dataset.batch_plan(epoch, args.batch_size * parts, args.patch)
    step_losses = np.zeros(len(steps))                              # this rank's share of each step's loss
    reduce = world.sum_arrays if world.size > 1 else None
    with tqdm(total=len(steps), desc=label, unit="step", leave=False,
              disable=None if world.is_root else True) as progress:
        for index, samples in enumerate(steps):
            dealt = deal(samples, parts)
            mine = [part for part in dealt[world.rank::world.size] if part]
            micro_batches = ((*dataset.batch(part, args.patch), len(part) / len(samples))   # (B, 1, D, H, W) x 2
                             for part in mine)
            step_losses[index] = accumulated_step(model, criterion, optimizer, scheduler, micro_batches, args.clip,
                                                  micro_batch_count=sum(1 for part in dealt if part), reduce=reduce)
            share = sum(len(part) for part in mine) / len(samples)    # rank 0's is never 0
            progress.set_postfix(loss=f"{step_losses[index] / max(share, 1e-9):.5f}")   # of this rank's samples
            progress.update()
    return float(np.mean(world.sum(step_losses)))


def validate(model, dataset, window, world):
    """(mean MSE on the network scale, mean MAE in HU inside the mask) over the whole validation
    scans, each predicted by sliding windows (inference/sliding_window.py), in eval mode; rank r of N predicts
    patients r, r + N, ..."""
    model.eval()
    totals = np.zeros(2)                                            # sum of MSE, sum of MAE
    for index in world.share(len(dataset)):
        patient = dataset.patient(index)
        prediction = predict_sliding_window(model, np.asarray(patient.mr), window)   # (D, H, W)
        error = prediction.astype(np.float64) - hu_to_net(patient.ct_hu)
        error_hu = np.abs(prediction_to_hu(prediction) - patient.ct_hu)            # (D, H, W)
        totals += (np.mean(error**2), error_hu[patient.mask].mean())
    model.train()
    loss, mae = world.sum(totals) / len(dataset)
    return float(loss), float(mae)
