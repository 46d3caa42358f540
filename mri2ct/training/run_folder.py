"""What a run keeps in its folder (--out): the config, the checkpoints, the history, and a resume.

A folder holds one run. The run owns --out: it holds the lock `--out/.lock` from start to end
(folder_lock.py), so a second trainer on the same folder stops at once with a one-line error, and a
run killed with kill -9 leaves no stale lock. A fresh start into a folder holding a run is refused,
and so is a resume of another run's checkpoint into it (`same_run`). Temporary files a killed run
left behind are deleted by the next write (common/atomic.py). Every checkpoint records the training
window (the patch, or the volume shape) and the voxel spacing, so mri2ct.infer can always use it.

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
the history and the config, with the fingerprint of the run's data (data/fingerprint.py): a resume
on data that changed under the same patient ids is refused. The data plan is a pure function of
(seed, epoch, step), so the seed and the epoch are the whole random state. `--resume latest` after
a crash (even kill -9 in the middle of an epoch) restarts at the first unfinished epoch and gives
the history the uninterrupted run would have given (bit for bit with the same --threads; Numba's
kernels are deterministic for a fixed thread count).
"""
import json
import os

from tqdm import tqdm

from mri2ct.common.atomic import write_text
from mri2ct.data.fingerprint import check_same_data, data_fingerprint
from mri2ct.training.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from mri2ct.training.curves import plot_training_curves

# Config entries that decide the run's trajectory: a resumed run must use the same values.
RESUME_MUST_MATCH = ("features", "epochs", "lr", "lr_min", "weight_decay", "clip", "seed", "patch",
                     "batch_size", "accumulate", "ranks", "spacing", "split")
CONFIG_DEFAULTS = {"accumulate": 1, "ranks": 1}   # entries added later: their value in older checkpoints
UNET_MULTIPLE = 8   # the U-Net halves the grid three times: every input side must divide by 8
MIN_PATCH = 2 * UNET_MULTIPLE   # a patch of 8 reaches the bottleneck as one voxel: nothing for BatchNorm


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
            "spacing": train_set.spacing, "split": split,
            "data_fingerprint": data_fingerprint(train_set.folder, split)}


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
    """Load a checkpoint's model, optimizer and schedule; CheckpointError if it is another run or
    was trained on other data (checkpoints older than the data fingerprint are not checked for it)."""
    load_model_state(model, state, path)
    for key in RESUME_MUST_MATCH:
        trained = state["config"].get(key, CONFIG_DEFAULTS.get(key))
        if trained != config[key]:
            raise CheckpointError(f"{path}: checkpoint was trained with {key} = {trained}, "
                                  f"this run has {config[key]}; resume with the run's own settings")
    check_same_data(state["config"].get("data_fingerprint"), config["data_fingerprint"], path, config["data"],
                    "resume on the run's own data, or start a new run with another --out")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: optimizer or scheduler state does not fit ({error})") from None


def same_run(state, held):
    """True if the checkpoint `state` belongs to the run whose latest checkpoint is `held`: their
    histories agree on every epoch both have (an earlier checkpoint of the run, or a later one)."""
    common = min(len(state["history"]), len(held["history"]))
    return state["history"][:common] == held["history"][:common]


def check_folder_holds_this_run(path, state, out_dir):
    """ValueError if `out_dir` holds a run (its latest.npz) other than the one of checkpoint `path`."""
    latest = os.path.join(out_dir, "latest.npz")
    if os.path.exists(latest) and not os.path.samefile(path, latest) and \
            not same_run(state, load_checkpoint(latest)):
        raise ValueError(f"{out_dir} already holds another run (its latest.npz has another history than "
                         f"{path}); resume into an empty or new --out")


def start_history(args, config, model, optimizer, scheduler):
    """Rank 0: load --resume's checkpoint into the model, optimizer and schedule and return its
    history, or [] for a fresh start (refused if --out holds a run, and a resume if --out holds
    another run); writes split.json."""
    history = []
    path = resume_checkpoint(args.resume, args.out) if args.resume else None
    if path:
        state = load_checkpoint(path)
        check_folder_holds_this_run(path, state, args.out)
        restore(path, state, config, model, optimizer, scheduler)
        history = state["history"]
        print(f"resuming {path}: {len(history)} of {args.epochs} epochs done")
        write_history(args.out, history)  # the crash may have come between latest.npz and these
    elif os.path.exists(os.path.join(args.out, "latest.npz")):
        raise ValueError(f"{args.out} already holds a run (latest.npz): continue it with --resume latest, "
                         f"or choose another --out")
    write_text(os.path.join(args.out, "split.json"), json.dumps(config["split"], indent=1) + "\n")
    return history


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
    """history.json and training_curves.png, from the history of the finished epochs."""
    write_text(os.path.join(out_dir, "history.json"), json.dumps(history, indent=1) + "\n")
    plot_training_curves(history, os.path.join(out_dir, "training_curves.png"))
