"""Figures: the training curves, and orthogonal slices of MR, CT, synthetic CT and their error.

    python -m mri2ct.visualize --mri MR.nii.gz --ct CT.nii.gz --pred SCT.nii.gz --out FIG.png
                               [--mask MASK.nii.gz]

The slice figure has one row per view (axial, coronal, sagittal, through the volume's centre) and one
column per image: MR, CT, synthetic CT, |CT - sCT|, each HU column with a colour bar. Without --ct
it shows MR and sCT only. The metrics (mri2ct.inference.metrics) go in the title, inside --mask if
given, else over the whole volume.

Views follow the radiological convention whatever the files' axis order (each volume is reordered
to RAS once, data/orientation.py), drawn as common/drawing.py describes; every panel of a row shows
the same field of view. The picture format follows the --out suffix; any other suffix is refused.
"""
import os

import matplotlib.pyplot as plt
import numpy as np

from mri2ct.common import errors, flags
from mri2ct.common.drawing import (CT_WINDOW, PICTURE_FORMATS, VIEWS, central_slices, draw_edge_letters,
                                   picture_format, save_figure)
from mri2ct.data.nifti import check_same_grid, load_volume
from mri2ct.data.orientation import to_ras
from mri2ct.inference.metrics import calculate_metrics

ERROR_WINDOW = (0.0, 500.0)       # HU


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
            draw_edge_letters(panel, VIEWS[row])
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
    parser = flags.Parser(prog="python -m mri2ct.visualize", description=__doc__.split("\n")[0])
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
    errors.run(main)
