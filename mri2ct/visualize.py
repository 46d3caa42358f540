"""Figures: the training curves, and orthogonal slices of MR, CT, synthetic CT and their error.

    python -m mri2ct.visualize --mri MR.nii.gz --ct CT.nii.gz --pred SCT.nii.gz --out FIG.png
                               [--mask MASK.nii.gz]

The slice figure has one row per view (axial, coronal, sagittal, through the volume's centre) and one
column per image: MR, CT, synthetic CT, |CT - sCT|, each HU column with a colour bar. Without --ct
it shows MR and sCT only. The metrics (mri2ct.metrics) go in the title, inside --mask if given, else
over the whole volume. Figures are written atomically with matplotlib's Agg backend (no display).
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from mri2ct.atomic import atomic_path  # noqa: E402
from mri2ct.cli import exit_on_user_error  # noqa: E402
from mri2ct.metrics import calculate_metrics  # noqa: E402
from mri2ct.nifti import check_same_grid, load_volume  # noqa: E402
from mri2ct.orientation import to_ras  # noqa: E402

CT_WINDOW = (-1000.0, 1500.0)     # HU shown from black to white: air to dense bone
ERROR_WINDOW = (0.0, 500.0)       # HU
VIEWS = ("axial", "coronal", "sagittal")


def save_figure(figure, path):
    """Write a matplotlib figure to `path` (PNG) atomically and release it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_training_curves(history, path):
    """Train/validation loss (log scale), validation MAE in HU, and the learning rate, per epoch.

    history: the list of per-epoch dicts that mri2ct.train writes to history.json.
    """
    epochs = [record["epoch"] for record in history]
    figure, (loss_axes, mae_axes, lr_axes) = plt.subplots(1, 3, figsize=(15, 4))
    loss_axes.semilogy(epochs, [r["train_loss"] for r in history], "o-", ms=3, label="train")
    loss_axes.semilogy(epochs, [r["val_loss"] for r in history], "o-", ms=3, label="validation")
    loss_axes.set(xlabel="epoch", ylabel="MSE of HU / 1000", title="loss")
    loss_axes.legend()
    mae_axes.semilogy(epochs, [r["val_mae_hu"] for r in history], "o-", ms=3, color="C1")
    mae_axes.set(xlabel="epoch", ylabel="HU", title="validation MAE inside the head mask")
    lr_axes.semilogy(epochs, [r["lr"] for r in history], "o-", ms=3, color="C2")
    lr_axes.set(xlabel="epoch", ylabel="learning rate", title="learning rate (start of epoch)")
    for axes in (loss_axes, mae_axes, lr_axes):
        axes.grid(True, which="both", alpha=0.3)
    save_figure(figure, path)


def central_slices(volume, spacing):
    """[(2-D image, aspect)] for the axial, coronal and sagittal planes through the centre.

    volume: (X, Y, Z) in RAS order. Images are transposed so that, drawn with origin="lower",
    anterior (axial) or superior (coronal, sagittal) is up; aspect = vertical / horizontal mm.
    """
    x, y, z = (size // 2 for size in volume.shape)
    sx, sy, sz = spacing
    return [(volume[:, :, z].T, sy / sx),      # axial:    R horizontal, A vertical
            (volume[:, y, :].T, sz / sx),      # coronal:  R horizontal, S vertical
            (volume[x, :, :].T, sz / sy)]      # sagittal: A horizontal, S vertical


def format_metrics(metrics, where):
    return (f"MAE {metrics['mae']:.1f} HU, RMSE {metrics['rmse']:.1f} HU, PSNR {metrics['psnr']:.2f} dB, "
            f"SSIM {metrics['ssim']:.4f} ({where})")


def plot_slices(mri, pred_hu, spacing, path, ct_hu=None, title=""):
    """The slice figure described in the module docstring. Volumes (X, Y, Z) in RAS order, HU for CT."""
    columns = [("MR", mri, "gray", np.percentile(mri, (0.5, 99.5)), None)]
    if ct_hu is not None:
        columns.append(("CT", ct_hu, "gray", CT_WINDOW, "HU"))
    columns.append(("synthetic CT", pred_hu, "gray", CT_WINDOW, "HU"))
    if ct_hu is not None:
        columns.append(("|CT - sCT|", np.abs(ct_hu - pred_hu), "magma", ERROR_WINDOW, "HU"))

    figure, axes = plt.subplots(len(VIEWS), len(columns), figsize=(3.3 * len(columns), 3.3 * len(VIEWS)),
                                squeeze=False)
    for column, (name, volume, colours, (low, high), unit) in enumerate(columns):
        for row, (image, aspect) in enumerate(central_slices(volume, spacing)):
            panel = axes[row, column]
            shown = panel.imshow(image, cmap=colours, vmin=low, vmax=high, origin="lower", aspect=aspect)
            panel.set_xticks([]), panel.set_yticks([])
            if row == 0:
                panel.set_title(name)
            if column == 0:
                panel.set_ylabel(VIEWS[row])
        if unit:  # one horizontal colour bar under the column
            figure.colorbar(shown, ax=axes[:, column], orientation="horizontal", fraction=0.04, pad=0.03,
                            label=unit)
    figure.suptitle(title)
    save_figure(figure, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mri2ct.visualize", description=__doc__.split("\n")[0])
    parser.add_argument("--mri", required=True, help="input T1 MRI (NIfTI)")
    parser.add_argument("--pred", required=True, help="synthetic CT in HU (NIfTI), e.g. from mri2ct.infer")
    parser.add_argument("--ct", help="true CT in HU (NIfTI); adds the CT and error panels and the metrics")
    parser.add_argument("--mask", help="head mask (NIfTI) for the metrics; default: the whole volume")
    parser.add_argument("--out", required=True, help="PNG file to write")
    return parser.parse_args(argv)


def run(args):
    files = [(args.mri, "MR"), (args.pred, "sCT")] + ([(args.ct, "CT")] if args.ct else []) \
        + ([(args.mask, "mask")] if args.mask else [])
    loaded = {name: (path, *load_volume(path, name)) for path, name in files}
    check_same_grid(list(loaded.values()))
    affine = loaded["MR"][2]
    volumes = {name: to_ras(array, affine)[0] for name, (_, array, _) in loaded.items()}
    spacing = to_ras(loaded["MR"][1], affine)[2]
    title = os.path.basename(args.pred)
    if args.ct:
        where = "inside the mask" if args.mask else "whole volume"
        metrics = calculate_metrics(volumes["sCT"], volumes["CT"], volumes.get("mask"))
        title = f"{title}\n{format_metrics(metrics, where)}"
    plot_slices(volumes["MR"], volumes["sCT"], spacing, args.out, ct_hu=volumes.get("CT"), title=title)
    print(f"wrote {args.out}")


def main(argv=None):
    args = parse_args(argv)
    with exit_on_user_error():
        run(args)


if __name__ == "__main__":
    main()
