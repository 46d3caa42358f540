"""Figures: the training curves, and orthogonal slices of MR, CT, synthetic CT and their error.

    python -m mri2ct.visualize --mri MR.nii.gz --ct CT.nii.gz --pred SCT.nii.gz --out FIG.png
                               [--mask MASK.nii.gz]

The slice figure has one row per view (axial, coronal, sagittal, through the volume's centre) and one
column per image: MR, CT, synthetic CT, |CT - sCT|, each HU column with a colour bar. Without --ct
it shows MR and sCT only. The metrics (mri2ct.metrics) go in the title, inside --mask if given, else
over the whole volume.

Views follow the radiological convention, whatever the files' axis order (each volume is reordered
to RAS once, orientation.py):
    axial     seen from the feet: anterior up, the patient's right on the image's left
    coronal   seen from the front: superior up, the patient's right on the image's left
    sagittal  seen from the patient's left side: superior up, anterior on the image's left
Each panel is drawn in millimetres (its aspect follows the voxel spacing) and carries the direction
letters at its edges; every panel of a row shows the same field of view.

Figures are written atomically with matplotlib's Agg backend (no display), in a picture format
chosen by the file's suffix (PICTURE_FORMATS); any other suffix is refused, so a typo can never
replace a scan with a picture.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from mri2ct import cli  # noqa: E402
from mri2ct.atomic import atomic_path  # noqa: E402
from mri2ct.metrics import calculate_metrics  # noqa: E402
from mri2ct.nifti import check_same_grid, load_volume  # noqa: E402
from mri2ct.orientation import to_ras  # noqa: E402

PICTURE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg", "tif", "tiff")
CT_WINDOW = (-1000.0, 1500.0)     # HU shown from black to white: air to dense bone
ERROR_WINDOW = (0.0, 500.0)       # HU
VIEWS = ("axial", "coronal", "sagittal")
# Direction letters at the (left, right, top, bottom) edges of each view, radiological convention.
EDGE_LETTERS = {"axial": "RLAP", "coronal": "RLSI", "sagittal": "APSI"}
EDGE_POSITIONS = [(0.02, 0.5, ("left", "center")), (0.98, 0.5, ("right", "center")),   # in axes units
                  (0.5, 0.98, ("center", "top")), (0.5, 0.02, ("center", "bottom"))]


def picture_format(path):
    """The format matplotlib writes for `path`, from its suffix; ValueError if it is not a picture."""
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if suffix not in PICTURE_FORMATS:
        raise ValueError(f"{path}: not a picture file name; give one ending in "
                         f"{', '.join('.' + name for name in PICTURE_FORMATS)}")
    return suffix


def save_figure(figure, path):
    """Write a matplotlib figure to `path` atomically, in the format its suffix names, and release it."""
    file_format = picture_format(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=file_format, dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)


def plot_training_curves(history, path):
    """Train/validation loss (log scale), validation MAE in HU, and the learning rate, per epoch.

    history: the list of per-epoch dicts that mri2ct.train writes to history.json.
    """
    epochs = [record["epoch"] for record in history]
    validated = [record for record in history if record["val_loss"] is not None]   # --val-every
    figure, (loss_axes, mae_axes, lr_axes) = plt.subplots(1, 3, figsize=(15, 4))
    loss_axes.semilogy(epochs, [r["train_loss"] for r in history], "o-", ms=3, label="train")
    loss_axes.semilogy([r["epoch"] for r in validated], [r["val_loss"] for r in validated], "o-", ms=3,
                       label="validation")
    loss_axes.set(xlabel="epoch", ylabel="MSE of HU / 1000", title="loss")
    loss_axes.legend()
    mae_axes.semilogy([r["epoch"] for r in validated], [r["val_mae_hu"] for r in validated], "o-", ms=3,
                      color="C1")
    mae_axes.set(xlabel="epoch", ylabel="HU", title="validation MAE inside the head mask")
    lr_axes.semilogy(epochs, [r["lr"] for r in history], "o-", ms=3, color="C2")
    lr_axes.set(xlabel="epoch", ylabel="learning rate", title="learning rate (start of epoch)")
    for axes in (loss_axes, mae_axes, lr_axes):
        axes.grid(True, which="both", alpha=0.3)
    save_figure(figure, path)


def central_slices(volume, spacing):
    """[(2-D image, (width, height) mm)] for the axial, coronal and sagittal planes through the centre.

    volume: (D, H, W) in RAS order (D towards Right, H Anterior, W Superior); spacing: (3,) mm.
    Each image is (rows, columns), to be drawn with origin="lower" (row 0 at the bottom): the
    transpose puts A (axial) or S (coronal, sagittal) up, and reversing the columns puts the
    patient's right (axial, coronal) or anterior (sagittal) on the image's left.
    """
    d, h, w = (size // 2 for size in volume.shape)
    sd, sh, sw = spacing
    views = [(volume[:, :, w], sd, sh),        # axial:    R-L across, A up
             (volume[:, h, :], sd, sw),        # coronal:  R-L across, S up
             (volume[d, :, :], sh, sw)]        # sagittal: A-P across, S up
    return [(plane.T[:, ::-1], (plane.shape[0] * across, plane.shape[1] * up))
            for plane, across, up in views]


def format_metrics(metrics, where):
    return (f"MAE {metrics['mae']:.1f} HU, RMSE {metrics['rmse']:.1f} HU, PSNR {metrics['psnr']:.2f} dB, "
            f"SSIM {metrics['ssim']:.4f} ({where})")


def plot_slices(mri, pred_hu, spacing, path, ct_hu=None, title=""):
    """The slice figure described in the module docstring. Volumes (D, H, W) in RAS order, HU for CT."""
    columns = [("MR", mri, "gray", np.percentile(mri, (0.5, 99.5)), None)]
    if ct_hu is not None:
        columns.append(("CT", ct_hu, "gray", CT_WINDOW, "HU"))
    columns.append(("synthetic CT", pred_hu, "gray", CT_WINDOW, "HU"))
    if ct_hu is not None:
        columns.append(("|CT - sCT|", np.abs(ct_hu - pred_hu), "magma", ERROR_WINDOW, "HU"))

    figure, axes = plt.subplots(len(VIEWS), len(columns), figsize=(3.3 * len(columns), 3.3 * len(VIEWS)),
                                squeeze=False)
    for column, (name, volume, colours, (low, high), unit) in enumerate(columns):
        for row, (image, (width, height)) in enumerate(central_slices(volume, spacing)):
            panel = axes[row, column]
            shown = panel.imshow(image, cmap=colours, vmin=low, vmax=high, origin="lower",
                                 extent=(0, width, 0, height), aspect="equal")   # millimetres
            panel.set_xticks([]), panel.set_yticks([])
            for (x, y, align), letter in zip(EDGE_POSITIONS, EDGE_LETTERS[VIEWS[row]]):
                panel.text(x, y, letter, transform=panel.transAxes, color="yellow", fontsize=8,
                           ha=align[0], va=align[1])
            if row == 0:
                panel.set_title(name)
            if column == 0:
                panel.set_ylabel(VIEWS[row])
        if unit:  # a colour bar inset under the column's last panel: it takes no room from the panels
            bar_axes = axes[-1, column].inset_axes([0.05, -0.14, 0.9, 0.05])
            figure.colorbar(shown, cax=bar_axes, orientation="horizontal", label=unit)
    figure.suptitle(title)
    save_figure(figure, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mri2ct.visualize", description=__doc__.split("\n")[0])
    parser.add_argument("--mri", required=True, help="input T1 MRI (NIfTI)")
    parser.add_argument("--pred", required=True, help="synthetic CT in HU (NIfTI), e.g. from mri2ct.infer")
    parser.add_argument("--ct", help="true CT in HU (NIfTI); adds the CT and error panels and the metrics")
    parser.add_argument("--mask", help="head mask (NIfTI) for the metrics; default: the whole volume")
    parser.add_argument("--out", required=True,
                        help=f"picture to write ({', '.join('.' + name for name in PICTURE_FORMATS)})")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    picture_format(args.out)                                   # refuse a non-picture before any work
    files = [(args.mri, "MR"), (args.pred, "sCT")] + ([(args.ct, "CT")] if args.ct else []) \
        + ([(args.mask, "mask")] if args.mask else [])
    loaded = {name: (path, *load_volume(path, name)) for path, name in files}
    check_same_grid(list(loaded.values()))
    affine = loaded["MR"][2]
    volumes, spacing = {}, None
    for name, (path, array, _) in loaded.items():              # one reorientation per volume
        volumes[name], _, spacing = to_ras(array, affine, f"{name} {path}")
    title = os.path.basename(args.pred)
    if args.ct:
        where = "inside the mask" if args.mask else "whole volume"
        metrics = calculate_metrics(volumes["sCT"], volumes["CT"], volumes.get("mask"))
        title = f"{title}\n{format_metrics(metrics, where)}"
    plot_slices(volumes["MR"], volumes["sCT"], spacing, args.out, ct_hu=volumes.get("CT"), title=title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
