"""Train the UNet3D to synthesise CT from T1 MRI:  python -m mri2ct.train [options]

With no options it reproduces the original run: the synthetic cohort in data/cohort (generated if the
folder is missing: 60 patients, 64^3 at 3 mm), 100 epochs, batch 1, AdamW (lr 1e-4, weight decay
0.01), gradient clipping at 1.0, MSE on the network's CT scale (HU / 1000), random flips, validation
after every epoch, everything written to checkpoints/run.

One epoch = every training patient once, in an order and with flips drawn from (seed, epoch)
(`CohortDataset.epoch_plan`). Each step is the textbook one, `train_step.train_step`:

    model.zero_grad(); y = model.forward(x); loss = criterion.forward(y, target)
    model.backward(criterion.backward()); clip_grad_norm_(model.parameters(), clip)
    optimizer.step(); scheduler.step()

The learning rate follows a cosine from --lr to --lr-min over the whole run, advanced after every
step (T_max = epochs x steps per epoch: smoother than per-epoch steps, and the last step ends at
--lr-min). Validation runs the model in eval mode (BatchNorm with running statistics) and reports
the MSE and the MAE in HU inside the head mask, averaged over patients.

The run owns --out: it holds the lock `--out/.lock` from start to end (folder_lock.py), so a second
trainer on the same folder stops at once with a one-line error, and a run killed with kill -9 leaves
no stale lock. Temporary files a killed run left behind are deleted by the next write (atomic.py).
Every checkpoint records the training window and voxel spacing of the data, taken from the first
training patient, so mri2ct.infer can always use it.

Files in --out, all written atomically (temporary file + rename) and refreshed every epoch:
    latest.npz           the last finished epoch, for --resume
    best.npz             the epoch with the lowest validation loss
    epoch_010.npz, ...   every --checkpoint-every epochs
    final.npz            the last epoch of the run, once it is reached
    history.json         [{"epoch", "train_loss", "val_loss", "val_mae_hu", "lr", "seconds"}, ...]
    training_curves.png  loss (log scale), validation MAE and learning rate per epoch

Exact resume: a checkpoint holds the model, the optimizer's moments and step, the schedule's step,
the history and the config. The data order is a pure function of (seed, epoch), so that pair is the
whole random state. `--resume latest` after a crash (even kill -9 in the middle of an epoch) restarts
at the first unfinished epoch and gives the history the uninterrupted run would have given (bit for
bit with the same --threads; Numba's kernels are deterministic for a fixed thread count).
"""
import argparse
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

import nn3d
from mri2ct import cli
from mri2ct.atomic import remove_stray_temporaries, write_text
from mri2ct.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from mri2ct.data import CohortDataset, generate_cohort, net_to_hu
from mri2ct.folder_lock import lock_folder
from mri2ct.model import DEFAULT_FEATURES, UNet3D
from mri2ct.orientation import check_affine
from mri2ct.predict import check_grid
from mri2ct.train_step import train_step
from mri2ct.visualize import plot_training_curves

DEFAULT_DATA = os.path.join("data", "cohort")
DEFAULT_OUT = os.path.join("checkpoints", "run")
# Config entries that decide the run's trajectory: a resumed run must use the same values.
RESUME_MUST_MATCH = ("features", "epochs", "lr", "lr_min", "weight_decay", "clip", "seed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mri2ct.train",
        description="Train the 3-D U-Net (nn3d) to synthesise CT from T1 MRI.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                        help="cohort folder with manifest.json; if DIR does not exist, the default "
                             "synthetic cohort (60 patients, 64^3 at 3 mm) is generated into it")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder for checkpoints, history.json and training_curves.png")
    parser.add_argument("--epochs", type=int, default=100, metavar="N", help="length of the run")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate at the start")
    parser.add_argument("--lr-min", type=float, default=1e-6,
                        help="learning rate at the end of the cosine schedule")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay")
    parser.add_argument("--clip", type=float, default=1.0, help="maximum L2 norm of all gradients")
    parser.add_argument("--features", type=int, nargs=4, default=list(DEFAULT_FEATURES),
                        metavar=("F1", "F2", "F3", "F4"),
                        help="channels of encoder levels 1-3 and of the bottleneck")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weight initialisation and of the data order and flips")
    cli.add_threads_argument(parser, "results are bit-reproducible for a fixed thread count")
    parser.add_argument("--checkpoint-every", type=int, default=10, metavar="N",
                        help="also keep epoch_NNN.npz every N epochs (0: never)")
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue a run, with the run's own flags: 'latest' is --out/latest.npz "
                             "(a fresh start if it does not exist yet), or give a checkpoint file")
    args = parser.parse_args(argv)
    for name in ("epochs", "lr", "clip"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 <= args.lr_min <= args.lr:
        parser.error(f"--lr-min must be between 0 and --lr, got {args.lr_min}")
    if min(args.features) < 1 or args.checkpoint_every < 0:
        parser.error("--features must be positive and --checkpoint-every non-negative")
    return args


# ---- one epoch ----------------------------------------------------------------------------------
def train_one_epoch(model, criterion, optimizer, scheduler, dataset, epoch, clip, label):
    """One pass over the training set in the epoch's seeded order; returns the mean training loss."""
    model.train()
    losses = []
    with tqdm(total=len(dataset), desc=label, unit="step", leave=False, disable=None) as progress:
        for x, target in dataset.iterate(epoch):                   # (1, 1, D, H, W) each
            loss = train_step(model, criterion, optimizer, scheduler, x, target, clip)
            losses.append(loss)
            progress.set_postfix(loss=f"{loss:.5f}")
            progress.update()
    return float(np.mean(losses))


def validate(model, criterion, dataset):
    """(mean MSE, mean MAE in HU inside the head mask) over the validation patients, in eval mode."""
    model.eval()
    losses, maes = [], []
    for index in range(len(dataset)):
        x, target = dataset[index]                                 # (1, 1, D, H, W) each
        patient = dataset.patient(index)
        with nn3d.no_grad():                                       # keep no backward caches
            y = model.forward(x)
            losses.append(criterion.forward(y, target))
        error_hu = np.abs(net_to_hu(y[0, 0]) - patient.ct_hu)      # (D, H, W)
        maes.append(float(error_hu[patient.mask].mean()))
    model.train()
    return float(np.mean(losses)), float(np.mean(maes))


# ---- the run ------------------------------------------------------------------------------------
def open_cohort(data_dir):
    """Generate the default cohort into `data_dir` if it does not exist."""
    if not os.path.exists(data_dir):
        print(f"{data_dir} does not exist: generating the default synthetic cohort into it")
        generate_cohort(data_dir)


def data_frame(dataset):
    """(shape, spacing) of the training volumes, from the first patient: an int and a float for a
    cube at isotropic spacing, else three of each. The checkpoint keeps them for prediction."""
    patient = dataset.patient(0)
    shape = [int(n) for n in patient.mr.shape]
    spacing = [round(float(s), 6) for s in check_affine(patient.affine, dataset.root)]
    check_grid(shape, spacing, spacing, f"training data {dataset.root}")   # what infer will accept
    return (shape[0] if len(set(shape)) == 1 else shape), (spacing[0] if len(set(spacing)) == 1 else spacing)


def run_config(args, dataset):
    """Everything that defines the run, stored in every checkpoint (JSON-able)."""
    shape, spacing = data_frame(dataset)
    return {"data": os.path.abspath(args.data), "features": list(args.features), "epochs": args.epochs,
            "lr": args.lr, "lr_min": args.lr_min, "weight_decay": args.weight_decay, "clip": args.clip,
            "seed": args.seed, "batch_size": 1, "loss": "mse of hu / 1000",
            "shape": shape, "spacing": spacing}


def resume_checkpoint(resume, out_dir):
    """The checkpoint path that --resume names, or None for a fresh start."""
    if resume != "latest":
        return resume
    path = os.path.join(out_dir, "latest.npz")
    if os.path.exists(path):
        return path
    print(f"--resume latest: no {path} yet, starting from epoch 1")
    return None


def restore(path, state, config, model, optimizer, scheduler):
    """Load a checkpoint's model, optimizer and schedule; CheckpointError if it is another run."""
    load_model_state(model, state, path)
    for key in RESUME_MUST_MATCH:
        if state["config"].get(key) != config[key]:
            raise CheckpointError(f"{path}: checkpoint was trained with {key} = {state['config'].get(key)}, "
                                  f"this run has {config[key]}; resume with the run's own settings")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: optimizer or scheduler state does not fit ({error})") from None


def write_epoch_outputs(out_dir, state, history, is_best, checkpoint_every, epochs):
    """Checkpoints first (latest.npz last: it is the commit point a resume starts from), then the
    files derived from the history."""
    epoch = state["epoch"]
    if checkpoint_every and epoch % checkpoint_every == 0:
        save_checkpoint(os.path.join(out_dir, f"epoch_{epoch:03d}.npz"), state)
    if is_best:
        save_checkpoint(os.path.join(out_dir, "best.npz"), state)
    if epoch == epochs:
        save_checkpoint(os.path.join(out_dir, "final.npz"), state)
    save_checkpoint(os.path.join(out_dir, "latest.npz"), state)
    write_history(out_dir, history)


def write_history(out_dir, history):
    write_text(os.path.join(out_dir, "history.json"), json.dumps(history, indent=1) + "\n")
    plot_training_curves(history, os.path.join(out_dir, "training_curves.png"))


def main(argv=None):
    args = parse_args(argv)
    threads = nn3d.set_num_threads(args.threads)
    with lock_folder(args.out):
        remove_stray_temporaries(args.out)
        run_training(args, threads)


def run_training(args, threads):
    """The run described in the module docstring; the caller holds the lock of args.out."""
    open_cohort(args.data)
    train_set = CohortDataset(args.data, "train", augment=True, seed=args.seed)
    val_set = CohortDataset(args.data, "val")
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{args.data}: the cohort needs at least one training and one validation "
                         f"patient, has {len(train_set)} and {len(val_set)}")
    config = run_config(args, train_set)

    nn3d.manual_seed(args.seed)
    model = UNet3D(features=args.features)
    criterion = nn3d.MSELoss()
    optimizer = nn3d.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train_set), eta_min=args.lr_min)

    history = []
    path = resume_checkpoint(args.resume, args.out) if args.resume else None
    if path:
        state = load_checkpoint(path)
        restore(path, state, config, model, optimizer, scheduler)
        history = state["history"]
        print(f"resuming {path}: {len(history)} of {args.epochs} epochs done")
        write_history(args.out, history)  # the crash may have come between latest.npz and these
    elif os.path.exists(os.path.join(args.out, "latest.npz")):
        raise ValueError(f"{args.out} already holds a run (latest.npz): continue it with --resume latest, "
                         f"or choose another --out")

    print(f"UNet3D, features {' '.join(map(str, args.features))}: {model.num_parameters():,} parameters; "
          f"{len(train_set)} train / {len(val_set)} val patients; {args.epochs} epochs x "
          f"{len(train_set)} steps; {threads} threads; writing to {args.out}")
    best_val_loss = min((record["val_loss"] for record in history), default=math.inf)
    for epoch in range(len(history) + 1, args.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.lr
        train_loss = train_one_epoch(model, criterion, optimizer, scheduler, train_set, epoch, args.clip,
                                     label=f"epoch {epoch}/{args.epochs}")
        val_loss, val_mae_hu = validate(model, criterion, val_set)
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "val_mae_hu": val_mae_hu, "lr": lr, "seconds": seconds})
        is_best = val_loss < best_val_loss
        best_val_loss = min(best_val_loss, val_loss)
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "val_loss": val_loss, "history": history,
                 "config": config, "rng": {"seed": args.seed, "next_epoch": epoch + 1}}
        write_epoch_outputs(args.out, state, history, is_best, args.checkpoint_every, args.epochs)
        print(f"epoch {epoch:3d}/{args.epochs}  train loss {train_loss:.5f}  val loss {val_loss:.5f}  "
              f"val MAE {val_mae_hu:6.1f} HU  lr {lr:.2e}  {seconds:5.1f} s" + ("  *best" if is_best else ""),
              flush=True)
    if len(history) >= args.epochs:
        print(f"done: {args.out}/final.npz, best validation loss {best_val_loss:.5f}")


if __name__ == "__main__":
    cli.run(main)
