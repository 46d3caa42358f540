"""Train the UNet3D to synthesise CT from T1 MRI:  python -m mri2ct.train [options]

With no options it reproduces the original run: the synthetic cohort in data/cohort (generated if the
folder is missing: 60 patients, 64^3 at 3 mm), 100 epochs, batch 1, AdamW (lr 1e-4, weight decay
0.01), gradient clipping at 1.0, MSE on the network's CT scale (HU / 1000), random flips, validation
after every epoch, everything written to checkpoints/run.

Data (--data DIR): a cohort written by `python -m mri2ct.data` (its manifest gives the split), or any
folder of paired scans, one subfolder per patient with mr and ct (.nii.gz, .nii or .mha) and
optionally a mask: the SynthRAD2023 layout (mri2ct/data/folders.py). Scans are reoriented to RAS,
resampled to --spacing, clipped and normalised once, and cached (mri2ct/data/preprocess.py). Without
a manifest, a 70/15/15 split is drawn from --seed, or read from --split FILE; either way it is written
to --out/split.json and kept in every checkpoint (mri2ct.evaluate reads it from there).

One epoch = every training patient once, in an order and with flips drawn from (seed, epoch), cut
into steps of B x P samples (B = --batch-size, P = micro-batches per step, below; the last step may
be smaller); with --patch N each sample is an N^3 patch centred on a mask voxel drawn from
(seed, epoch, step, sample) (`PatientSet.batch_plan`), else the whole volume. Every random choice is
a pure function of those numbers, so a resumed run reads exactly what the uninterrupted run would
have read. With P = 1, each step is the textbook one, `train_step.train_step`:

    model.zero_grad(); y = model.forward(x); loss = criterion.forward(y, target)
    model.backward(criterion.backward()); clip_grad_norm_(model.parameters(), clip)
    optimizer.step(); scheduler.step()

Micro-batches: P = N x K, N processes (ranks) started by `mpiexec -n N` or `srun` (distributed.py;
N = 1 for a plain `python -m mri2ct.train`) and K = --accumulate. Micro-batch j of a step holds the
step's samples j, j + P, j + 2P, ... (`deal`); rank r computes micro-batches r, r + N, ..., r + (K-1)N
one after the other: with K = 1, rank r takes samples r, r + N, ... of the step, and in one process
--batch-size B --accumulate K reads exactly what --batch-size BK reads. The gradient is
sum_j (n_j / n) dL_j/dW over the step's micro-batches (n_j of the step's n samples in micro-batch j):
the average over micro-batches, and in the epoch's last, smaller step one weight per sample, empty
micro-batches (n < P) adding nothing (`train_step.accumulated_step`). Each rank packs its share into
one flat float32 buffer, one allreduce sums it, and clipping and AdamW then run identically on every
rank. So N ranks x K give the parameters of one process with --accumulate N x K, to float32 rounding
of the different summation order (tests/test_mpi.py). BatchNorm normalises each micro-batch with its
own statistics (as DDP without SyncBN); its running statistics get one momentum update per step with
the average of the micro-batches' statistics, summed in the same allreduce, so they are the same on
every rank after every step. Parameters and optimizer state are broadcast from rank 0 at the start;
after each epoch the ranks compare a checksum of the parameters and statistics and stop with an
error if they differ. Validation gives patient i to rank i mod N and sums. Rank 0 alone holds the
lock, writes --out and prints; the others print nothing but errors. --threads is per rank (default:
the machine's cores shared among its ranks). An error on any rank, or a rank that dies, ends the
whole job (distributed.py); `--resume latest` continues it, with the same N and K.

The learning rate follows a cosine from --lr to --lr-min over the whole run, advanced after every
optimizer step (T_max = epochs x steps per epoch: smoother than per-epoch steps, and the last step
ends at --lr-min). Validation, every --val-every epochs and after the last, predicts each whole
validation scan with the sliding-window predictor that infer and evaluate use (mri2ct.predict; the
window is the patch, or the whole volume), in eval mode (BatchNorm with running statistics), and
reports the MSE (network scale) and the MAE in HU inside the mask, averaged over patients.

The run owns --out: it holds the lock `--out/.lock` from start to end (folder_lock.py), so a second
trainer on the same folder stops at once with a one-line error, and a run killed with kill -9 leaves
no stale lock. Temporary files a killed run left behind are deleted by the next write (atomic.py).
Every checkpoint records the training window (the patch, or the volume shape) and the voxel spacing,
so mri2ct.infer can always use it.

Files in --out, all written atomically (temporary file + rename) and refreshed every epoch:
    latest.npz           the last finished epoch, for --resume
    best.npz             the epoch with the lowest validation loss
    epoch_010.npz, ...   every --checkpoint-every epochs
    final.npz            the last epoch of the run, once it is reached
    split.json           the patients of train, val and test
    history.json         [{"epoch", "train_loss", "val_loss", "val_mae_hu", "lr", "seconds"}, ...]
                         (val_loss and val_mae_hu are null in epochs without validation)
    training_curves.png  loss (log scale), validation MAE and learning rate per epoch

Exact resume: a checkpoint holds the model, the optimizer's moments and step, the schedule's step,
the history and the config. The data plan is a pure function of (seed, epoch, step), so the seed and
the epoch are the whole random state. `--resume latest` after a crash (even kill -9 in the middle of an epoch) restarts
at the first unfinished epoch and gives the history the uninterrupted run would have given (bit for
bit with the same --threads; Numba's kernels are deterministic for a fixed thread count).
"""
import argparse
import contextlib
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

import nn3d
from mri2ct import cli, distributed
from mri2ct.atomic import remove_stray_temporaries, write_text
from mri2ct.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from mri2ct.data import PatientSet, choose_split, generate_cohort, hu_to_net, native_spacing, open_data_folder
from mri2ct.data.preprocess import default_cache_dir
from mri2ct.folder_lock import lock_folder
from mri2ct.model import DEFAULT_FEATURES, UNet3D
from mri2ct.predict import predict_sliding_window, prediction_to_hu
from mri2ct.train_step import accumulated_step
from mri2ct.visualize import plot_training_curves

DEFAULT_DATA = os.path.join("data", "cohort")
DEFAULT_OUT = os.path.join("checkpoints", "run")
# Config entries that decide the run's trajectory: a resumed run must use the same values.
RESUME_MUST_MATCH = ("features", "epochs", "lr", "lr_min", "weight_decay", "clip", "seed", "patch",
                     "batch_size", "accumulate", "ranks", "spacing", "split")
CONFIG_DEFAULTS = {"accumulate": 1, "ranks": 1}   # entries added later: their value in older checkpoints
UNET_MULTIPLE = 8   # the U-Net halves the grid three times: every input side must divide by 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mri2ct.train",
        description="Train the 3-D U-Net (nn3d) to synthesise CT from T1 MRI.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                        help="a cohort (manifest.json) or a folder of paired scans, one subfolder per "
                             "patient with mr and ct (.nii.gz/.nii/.mha) and optionally mask; if DIR does "
                             "not exist, the default synthetic cohort (60 patients, 64^3 at 3 mm) is "
                             "generated into it")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder for checkpoints, split.json, history.json and training_curves.png")
    parser.add_argument("--split", metavar="FILE",
                        help="split.json with the patient ids of train, val and test (default: the "
                             "cohort's manifest, or a 70/15/15 split drawn from --seed)")
    parser.add_argument("--spacing", type=float, metavar="MM",
                        help="isotropic training voxel size (default: the scans' own when all are "
                             "isotropic at one size, else 1.5 mm)")
    cli.add_cache_argument(parser)
    parser.add_argument("--patch", type=int, metavar="N",
                        help="train on random N^3 patches centred inside the mask (N a multiple of 8); "
                             "default: whole volumes")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B", help="samples per micro-batch")
    parser.add_argument("--accumulate", type=int, default=1, metavar="K",
                        help="micro-batches whose gradients are averaged before each optimizer step "
                             "(per rank under mpiexec -n N: N x K in all)")
    parser.add_argument("--epochs", type=int, default=100, metavar="N", help="length of the run")
    parser.add_argument("--val-every", type=int, default=1, metavar="N",
                        help="validate every N epochs (and after the last)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate at the start")
    parser.add_argument("--lr-min", type=float, default=1e-6,
                        help="learning rate at the end of the cosine schedule")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay")
    parser.add_argument("--clip", type=float, default=1.0, help="maximum L2 norm of all gradients")
    parser.add_argument("--features", type=int, nargs=4, default=list(DEFAULT_FEATURES),
                        metavar=("F1", "F2", "F3", "F4"),
                        help="channels of encoder levels 1-3 and of the bottleneck")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weight initialisation, the split and the data plan")
    cli.add_threads_argument(parser, "results are bit-reproducible for a fixed thread count")
    parser.add_argument("--checkpoint-every", type=int, default=10, metavar="N",
                        help="also keep epoch_NNN.npz every N epochs (0: never)")
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue a run, with the run's own flags: 'latest' is --out/latest.npz "
                             "(a fresh start if it does not exist yet), or give a checkpoint file")
    args = parser.parse_args(argv)
    for name in ("epochs", "lr", "clip", "batch_size", "accumulate", "val_every"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.lr_min <= args.lr:
        parser.error(f"--lr-min must be between 0 and --lr, got {args.lr_min}")
    if min(args.features) < 1 or args.checkpoint_every < 0:
        parser.error("--features must be positive and --checkpoint-every non-negative")
    if args.patch is not None and not (args.patch > 0 and args.patch % UNET_MULTIPLE == 0):
        parser.error(f"--patch must be a positive multiple of {UNET_MULTIPLE}, got {args.patch}")
    if args.spacing is not None and not 0.1 <= args.spacing <= 10:        # also false for nan
        parser.error(f"--spacing must be between 0.1 and 10 mm, got {args.spacing}")
    return args


# ---- one epoch ----------------------------------------------------------------------------------
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
    scans, each predicted by sliding windows (mri2ct.predict), in eval mode; rank r of N predicts
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


# ---- the run ------------------------------------------------------------------------------------
def open_data(args):
    """(train PatientSet, val PatientSet, split): the folder (the default cohort is generated first
    when --data does not exist), its split and the training spacing."""
    if not os.path.exists(args.data):
        print(f"{args.data} does not exist: generating the default synthetic cohort into it")
        generate_cohort(args.data)
    folder = open_data_folder(args.data)
    split = choose_split(folder, args.seed, args.split)
    spacing = args.spacing or native_spacing(folder)
    cache = args.cache or default_cache_dir()
    train_set = PatientSet(folder, split["train"], spacing, cache, augment=True, seed=args.seed)
    val_set = PatientSet(folder, split.get("val", []), spacing, cache, seed=args.seed)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{args.data}: training needs at least one training and one validation "
                         f"patient, the split has {len(train_set)} and {len(val_set)}")
    return train_set, val_set, split


def training_window(dataset, patch):
    """The window the network trains on, kept in the checkpoint: the patch, or the one volume shape
    of every training scan (an int for a cube, else three ints). Preprocesses (caches) every scan."""
    shapes = {tuple(int(n) for n in dataset.patient(index).mr.shape)
              for index in tqdm(range(len(dataset)), desc="preprocessing", unit="scan", leave=False,
                                disable=None)}
    if patch is not None:
        return patch
    shape = shapes.pop()
    if shapes or any(n % UNET_MULTIPLE for n in shape):
        raise ValueError(f"{dataset.folder.root}: whole-volume training needs every scan at one shape with "
                         f"sides divisible by {UNET_MULTIPLE}, these have {sorted(shapes | {shape})[:3]}...; "
                         f"train on patches (--patch N)")
    return shape[0] if len(set(shape)) == 1 else list(shape)


def run_config(args, train_set, split, ranks):
    """Everything that defines the run, stored in every checkpoint (JSON-able)."""
    return {"data": os.path.abspath(args.data), "features": list(args.features), "epochs": args.epochs,
            "lr": args.lr, "lr_min": args.lr_min, "weight_decay": args.weight_decay, "clip": args.clip,
            "seed": args.seed, "batch_size": args.batch_size, "accumulate": args.accumulate, "ranks": ranks,
            "patch": args.patch,
            "loss": "mse of hu / 1000", "shape": training_window(train_set, args.patch),
            "spacing": train_set.spacing, "split": split}


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
        trained = state["config"].get(key, CONFIG_DEFAULTS.get(key))
        if trained != config[key]:
            raise CheckpointError(f"{path}: checkpoint was trained with {key} = {trained}, "
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
    world = distributed.world()
    with world.stop_all_on_error():
        threads = nn3d.set_num_threads(args.threads or world.default_threads())
        with lock_folder(args.out) if world.is_root else contextlib.nullcontext():
            if world.is_root:
                remove_stray_temporaries(args.out)
            run_training(args, threads, world)


def start_history(args, config, model, optimizer, scheduler):
    """Rank 0: load --resume's checkpoint into the model, optimizer and schedule and return its
    history, or [] for a fresh start (refused if --out holds a run); writes split.json."""
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
    write_text(os.path.join(args.out, "split.json"), json.dumps(config["split"], indent=1) + "\n")
    return history


def share_start(world, model, optimizer, scheduler, history):
    """Rank 0's parameters, statistics, optimizer state, schedule and history on every rank."""
    start = world.broadcast({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "history": history} if world.is_root else None)
    if not world.is_root:
        model.load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    return start["history"]


def run_training(args, threads, world):
    """The run described in the module docstring; rank 0 holds the lock of args.out."""
    config = None
    if world.is_root:             # first and alone: it may generate the cohort, and it fills the cache
        train_set, val_set, split = open_data(args)
        config = run_config(args, train_set, split, world.size)
    config = world.broadcast(config)
    if not world.is_root:
        train_set, val_set, _ = open_data(args)
    window = tuple(np.broadcast_to(np.asarray(config["shape"]), (3,)).tolist())
    parts = world.size * args.accumulate
    steps_per_epoch = math.ceil(len(train_set) / (args.batch_size * parts))

    nn3d.manual_seed(args.seed)
    model = UNet3D(features=args.features)
    criterion = nn3d.MSELoss()
    optimizer = nn3d.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch, eta_min=args.lr_min)
    history = start_history(args, config, model, optimizer, scheduler) if world.is_root else None
    history = share_start(world, model, optimizer, scheduler, history)

    if world.is_root:
        micro = (f" x {parts} micro-batches ({world.size} ranks x accumulate {args.accumulate})" if parts > 1
                 else "")
        print(f"UNet3D, features {' '.join(map(str, args.features))}: {model.num_parameters():,} parameters; "
              f"{len(train_set)} train / {len(val_set)} val patients at {train_set.spacing} mm; "
              f"{'patches ' + str(args.patch) + '^3' if args.patch else 'whole volumes'}, batch "
              f"{args.batch_size}{micro}; {args.epochs} epochs x {steps_per_epoch} steps; {threads} threads"
              f"{' per rank' if world.size > 1 else ''}; writing to {args.out}")
    best_val_loss = min((record["val_loss"] for record in history if record["val_loss"] is not None),
                        default=math.inf)
    for epoch in range(len(history) + 1, args.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.lr
        train_loss = train_one_epoch(model, criterion, optimizer, scheduler, train_set, epoch, args, world,
                                     label=f"epoch {epoch}/{args.epochs}")
        world.check_identical([value for value in model.state_dict().values()], f"after epoch {epoch}")
        val_loss = val_mae_hu = None
        if epoch % args.val_every == 0 or epoch == args.epochs:
            val_loss, val_mae_hu = validate(model, val_set, window, world)
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "val_mae_hu": val_mae_hu, "lr": lr, "seconds": seconds})
        is_best = val_loss is not None and val_loss < best_val_loss
        best_val_loss = min(best_val_loss, val_loss if val_loss is not None else math.inf)
        if world.is_root:
            state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "val_loss": val_loss, "history": history,
                     "config": config, "rng": {"seed": args.seed, "next_epoch": epoch + 1}}
            write_epoch_outputs(args.out, state, history, is_best, args.checkpoint_every, args.epochs)
            validation = (f"val loss {val_loss:.5f}  val MAE {val_mae_hu:6.1f} HU" if val_loss is not None
                          else "(no validation)")
            print(f"epoch {epoch:3d}/{args.epochs}  train loss {train_loss:.5f}  {validation}  lr {lr:.2e}  "
                  f"{seconds:5.1f} s" + ("  *best" if is_best else ""), flush=True)
        world.barrier()                                   # the others wait for the checkpoint
    if world.is_root and len(history) >= args.epochs:
        print(f"done: {args.out}/final.npz, best validation loss {best_val_loss:.5f}")


if __name__ == "__main__":
    cli.run(main)
