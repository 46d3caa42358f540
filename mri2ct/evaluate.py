"""Test-set metrics of a trained checkpoint:

    python -m mri2ct.evaluate --checkpoint PATH --data DIR [--split test] [--out metrics.csv]

For every patient of the split: the synthetic CT (the same sliding-window prediction as mri2ct.infer,
mri2ct.predict, on the cohort's own normalised MR), then
    mae, rmse, psnr, ssim     inside the head mask, as in SynthRAD2023 (mri2ct.metrics)
    mae_whole                 over the whole volume, air included
    mae_bone, mae_soft_tissue, mae_brain
                              over the voxels of each tissue group (mri2ct.phantom.TISSUE_GROUPS)
Writes one CSV row per patient (default: metrics_<split>.csv next to the checkpoint) and prints
a table of mean ± std and median over patients.
"""
import argparse
import csv
import io
import os

import numpy as np

import nn3d
from mri2ct import cli
from mri2ct.atomic import write_text
from mri2ct.checkpoint import model_from_checkpoint, training_frame
from mri2ct.data import CohortDataset
from mri2ct.metrics import calculate_metrics
from mri2ct.orientation import check_affine
from mri2ct.phantom import TISSUE_GROUPS
from mri2ct.predict import predict_sliding_window, prediction_to_hu

COLUMNS = ("mae", "rmse", "psnr", "ssim", "mae_whole") + tuple(f"mae_{group}" for group in TISSUE_GROUPS)
UNITS = {"psnr": "dB", "ssim": ""}  # the others are HU


def evaluate_patient(model, patient, window):
    """{column: value} for one PatientVolumes (see the module docstring)."""
    pred_hu = prediction_to_hu(predict_sliding_window(model, patient.mr, window))   # (D, H, W)
    row = calculate_metrics(pred_hu, patient.ct_hu, patient.mask)
    error = np.abs(pred_hu - patient.ct_hu)                                   # (D, H, W)
    row["mae_whole"] = float(error.mean())
    for group, labels in TISSUE_GROUPS.items():
        voxels = np.isin(patient.labels, labels)
        row[f"mae_{group}"] = float(error[voxels].mean()) if voxels.any() else float("nan")
    return row


def summary_table(rows):
    """Markdown table: one line per metric, mean ± std and median over patients."""
    lines = ["| metric | mean ± std | median |", "|---|---:|---:|"]
    for column in COLUMNS:
        values = np.array([row[column] for row in rows], dtype=np.float64)
        unit = UNITS.get(column, "HU")
        digits = 4 if column == "ssim" else 2 if column == "psnr" else 1
        lines.append(f"| {column} ({unit or 'unitless'}) | {np.nanmean(values):.{digits}f} ± "
                     f"{np.nanstd(values):.{digits}f} | {np.nanmedian(values):.{digits}f} |")
    return "\n".join(lines)


def to_csv(rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=("patient",) + COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value)
                         for key, value in row.items()})
    return text.getvalue()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mri2ct.evaluate",
                                     description="Per-patient metrics of a checkpoint on a cohort split.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mri2ct.train (e.g. best.npz)")
    parser.add_argument("--data", required=True, metavar="DIR", help="cohort folder with manifest.json")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--out",
                        help="CSV file to write (default: metrics_<split>.csv beside the checkpoint)")
    cli.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.out and not args.out.endswith(".csv"):
        raise ValueError(f"--out {args.out}: give a .csv file name")
    nn3d.set_num_threads(args.threads)
    model, state = model_from_checkpoint(args.checkpoint)
    window, train_spacing = training_frame(state, args.checkpoint)
    dataset = CohortDataset(args.data, args.split)
    if len(dataset) == 0:
        raise ValueError(f"{args.data}: the {args.split} split has no patients")
    spacing = tuple(float(s) for s in check_affine(dataset.patient(0).affine, args.data))
    if not np.allclose(spacing, train_spacing, rtol=1e-3):
        raise ValueError(f"{args.data}: voxel spacing {spacing} mm, but {args.checkpoint} was trained at "
                         f"{train_spacing} mm; run mri2ct.infer on each scan instead")
    rows = []
    for index in range(len(dataset)):
        patient = dataset.patient(index)
        rows.append({"patient": patient.id, **evaluate_patient(model, patient, window)})
        print(f"{patient.id}: MAE {rows[-1]['mae']:.1f} HU, PSNR {rows[-1]['psnr']:.2f} dB, "
              f"SSIM {rows[-1]['ssim']:.4f}", flush=True)
    out = args.out or os.path.join(os.path.dirname(args.checkpoint), f"metrics_{args.split}.csv")
    write_text(out, to_csv(rows))
    print(f"\n{args.checkpoint} (epoch {state['epoch']}) on {len(rows)} {args.split} patients; wrote {out}\n")
    print(summary_table(rows))


if __name__ == "__main__":
    cli.run(main)
