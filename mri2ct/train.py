"""Train the UNet3D to synthesise CT from T1 MRI:  python -m mri2ct.train [options]

With no options it reproduces the original run: the synthetic cohort in data/cohort (generated if the
folder is missing: 60 patients, 64^3 at 3 mm), 100 epochs, batch 1, AdamW (lr 1e-4, weight decay
0.01), gradient clipping at 1.0, MSE on the network's CT scale (HU / 1000), random flips, validation
after every epoch, everything written to checkpoints/run. The learning rate follows a cosine from
--lr to --lr-min, advanced after every optimizer step. --data is a cohort or a folder of paired
scans (README.md, "Train on your own paired scans"); under `mpiexec -n N` or `srun` the ranks share
each step (README.md, "More than one machine"); `--resume latest` continues a run exactly.

Where each part lives: an epoch and validation in training/loop.py, the step in training/step.py,
the files of --out and the resume in training/run_folder.py.
"""
import argparse
import contextlib
import math
import os
import sys
import time

import numpy as np
from tqdm import tqdm

import nn3d
from nn3d.kernels.jit import compile_notice
from nn3d.warm_up import warm_up
from mri2ct.common import distributed, errors, flags
from mri2ct.common.atomic import remove_stray_temporaries
from mri2ct.data import PatientSet, choose_split, generate_cohort, native_spacing, open_data_folder
from mri2ct.data.nifti import MAX_SPACING_MM, MIN_SPACING_MM
from mri2ct.data.preprocess import default_cache_dir
from mri2ct.model import DEFAULT_FEATURES, UNet3D
from mri2ct.training.folder_lock import lock_folder
from mri2ct.training.loop import share_start, train_one_epoch, validate
from mri2ct.training.run_folder import (MIN_PATCH, UNET_MULTIPLE, run_config, start_history,
                                        write_epoch_outputs)

DEFAULT_DATA = os.path.join("data", "cohort")
DEFAULT_OUT = os.path.join("checkpoints", "run")
# A fresh install's compilation before the first step on 2 cores, in 2 processes (nn3d/warm_up.py):
# 28-29 s on a Zen 3 (AVX2, the 4-wide register tiles) and 28-30 s on a Zen 4 (AVX-512, the 8-wide
# ones) (docs/performance.md, "F(4^3, 3^3) grad-weight on AVX2" and "AVX-512 (Zen 4)").
COMPILE_SECONDS = 30
COMPILE_NOTICE = (f"compiling nn3d's kernels for this CPU (first run only, about {COMPILE_SECONDS} s; "
                  f"then cached in __pycache__) ...")


def parse_args(argv=None):
    parser = flags.Parser(
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
    parser.add_argument("--spacing", type=flags.number(MIN_SPACING_MM, MAX_SPACING_MM), metavar="MM",
                        help="isotropic training voxel size (default: the scans' own when all are "
                             "isotropic at one size, else 1.5 mm)")
    flags.add_cache_argument(parser)
    parser.add_argument("--patch", type=flags.multiple_of(UNET_MULTIPLE, MIN_PATCH), metavar="N",
                        help=f"train on random N^3 patches centred inside the mask (N a multiple of "
                             f"{UNET_MULTIPLE}, at least {MIN_PATCH}); default: whole volumes")
    parser.add_argument("--batch-size", type=flags.POSITIVE, default=1, metavar="B",
                        help="samples per micro-batch")
    parser.add_argument("--accumulate", type=flags.POSITIVE, default=1, metavar="K",
                        help="micro-batches whose gradients are averaged before each optimizer step "
                             "(per rank under mpiexec -n N: N x K in all)")
    parser.add_argument("--epochs", type=flags.POSITIVE, default=100, metavar="N", help="length of the run")
    parser.add_argument("--val-every", type=flags.POSITIVE, default=1, metavar="N",
                        help="validate every N epochs (and after the last)")
    parser.add_argument("--lr", type=flags.number(0, 1, low_open=True), default=1e-4,
                        help="AdamW learning rate at the start")
    parser.add_argument("--lr-min", type=flags.number(0, 1), default=1e-6,
                        help="learning rate at the end of the cosine schedule (at most --lr)")
    parser.add_argument("--weight-decay", type=flags.number(0, 1), default=0.01,
                        help="AdamW decoupled weight decay")
    parser.add_argument("--clip", type=flags.number(0, 1e6, low_open=True), default=1.0,
                        help="maximum L2 norm of all gradients")
    parser.add_argument("--features", type=flags.POSITIVE, nargs=4,
                        default=list(DEFAULT_FEATURES), metavar=("F1", "F2", "F3", "F4"),
                        help="channels of encoder levels 1-3 and of the bottleneck")
    flags.add_seed_argument(parser, "seed of the weight initialisation, the split and the data plan")
    flags.add_threads_argument(parser, "results are bit-reproducible for a fixed thread count")
    parser.add_argument("--checkpoint-every", type=flags.NON_NEGATIVE, default=10, metavar="N",
                        help="also keep epoch_NNN.npz every N epochs (0: never)")
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue a run, with the run's own flags: 'latest' is --out/latest.npz "
                             "(a fresh start if it does not exist yet), or give a checkpoint file")
    args = parser.parse_args(argv)
    if args.lr_min > args.lr:
        parser.error(f"argument --lr-min: must be at most --lr ({args.lr:g}), got {args.lr_min:g}")
    return args


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


def main(argv=None):
    args = parse_args(argv)
    world = distributed.world()
    with world.stop_all_on_error():
        threads = nn3d.set_num_threads(args.threads or world.default_threads())
        with lock_folder(args.out) if world.is_root else contextlib.nullcontext():
            if world.is_root:
                remove_stray_temporaries(args.out)
            with compile_notice(announce_compilation) if world.is_root else contextlib.nullcontext():
                run_training(args, threads, world)


def announce_compilation():
    """The one line a run prints when its first step has to wait for Numba (nn3d/kernels/jit.py)."""
    tqdm.write(COMPILE_NOTICE)                    # above the progress bar, when one is showing
    sys.stdout.flush()


def run_training(args, threads, world):
    """Open the data, build or resume the model, then train and validate epoch by epoch; rank 0 holds
    the lock of args.out and writes it."""
    config = None
    if world.is_root:             # first and alone: it may generate the cohort, and it fills the cache
        train_set, val_set, split = open_data(args)
        config = run_config(args, train_set, split, world.size)
        warm_up(np.float32, processes=threads)        # on a cold cache, compiles in `threads` processes
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
    errors.run(main)
