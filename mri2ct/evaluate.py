"""Test-set metrics of a trained checkpoint:

    python -m mri2ct.evaluate --checkpoint PATH --data DIR [--split test] [--split-file FILE] [--out CSV]
                              [--other-data]

DIR is a cohort or a folder of paired scans, as for mri2ct.train. The patients of the split come from
--split-file, else the split the checkpoint was trained with (its config, = the run's split.json).
For every patient: the scan preprocessed as in training at the checkpoint's spacing (RAS, resampled,
normalised; data/preprocess.py, cached), the synthetic CT by the sliding-window predictor that train
and infer use (inference/sliding_window.py), then brought back to the patient's ORIGINAL grid (resampled
trilinearly to the scan's own voxels, axes put back in the file's order), where it is compared with
the original CT inside the original mask (or, without a mask file, the mask computed from the
original MR), as a SynthRAD participant reports:
    mae, rmse, psnr, ssim     inside the mask, as in SynthRAD2023 (inference/metrics.py)
    mae_whole                 over the whole volume, air included
    mae_bone, mae_soft_tissue, mae_brain
                              over the voxels of each tissue group (data/phantom.py, TISSUE_GROUPS;
                              only cohorts have tissue labels, elsewhere these are empty)
A checkpoint records the fingerprint of the data it was trained on (data/fingerprint.py); on a
folder whose scans differ, evaluate refuses unless --other-data says that is meant.
Writes one CSV row per patient (default: metrics_<split>.csv next to the checkpoint) and prints
a table of mean ± std and median over patients.
"""
import csv
import io
import os

import numpy as np

import nn3d
from mri2ct.common import errors, flags
from mri2ct.common.atomic import write_text
from mri2ct.data import PatientSet, choose_split, compute_mask, open_data_folder, read_scan
from mri2ct.data.fingerprint import check_same_data, data_fingerprint
from mri2ct.data.orientation import from_ras, to_ras
from mri2ct.data.phantom import TISSUE_GROUPS
from mri2ct.data.preprocess import default_cache_dir, resample
from mri2ct.inference.metrics import calculate_metrics
from mri2ct.inference.sliding_window import predict_sliding_window, prediction_to_hu
from mri2ct.training.checkpoint import model_from_checkpoint, training_frame

COLUMNS = ("mae", "rmse", "psnr", "ssim", "mae_whole") + tuple(f"mae_{group}" for group in TISSUE_GROUPS)
UNITS = {"psnr": "dB", "ssim": ""}  # the others are HU


def predict_original_grid(model, patient, window):
    """(X, Y, Z) sCT in HU on the patient's original grid, in the file's axis order.

    patient: PatientVolumes (preprocessed); its `source` gives the RAS shape and file orientation."""
    pred_hu = prediction_to_hu(predict_sliding_window(model, np.asarray(patient.mr), window))  # (X', Y', Z')
    ras_shape = tuple(patient.source["ras_shape"])
    if pred_hu.shape != ras_shape:
        pred_hu = resample(pred_hu, ras_shape)                                      # (X, Y, Z) RAS
    return from_ras(pred_hu, np.asarray(patient.source["orientation"]))


def evaluate_patient(model, patient, scan, window):
    """{column: value} for one patient: PatientVolumes (for the prediction) and its original Scan."""
    pred_hu = predict_original_grid(model, patient, window)
    mask = scan.mask if scan.mask is not None else original_mask(scan)
    row = calculate_metrics(pred_hu, scan.ct, mask)
    error = np.abs(pred_hu - scan.ct)                                              # (X, Y, Z)
    row["mae_whole"] = float(error.mean())
    for group, labels in TISSUE_GROUPS.items():
        voxels = np.isin(scan.labels, labels) if scan.labels is not None else np.zeros(error.shape, bool)
        row[f"mae_{group}"] = float(error[voxels].mean()) if voxels.any() else float("nan")
    return row


def original_mask(scan):
    """The mask training computed for a scan without one (compute_mask), on the scan's own grid."""
    mr_ras, orientation, _ = to_ras(scan.mr, scan.affine)
    return from_ras(compute_mask(mr_ras), orientation)


def summary_table(rows):
    """Markdown table: one line per metric, mean ± std and median over patients."""
    lines = ["| metric | mean ± std | median |", "|---|---:|---:|"]
    for column in COLUMNS:
        values = np.array([row[column] for row in rows], dtype=np.float64)
        if np.isnan(values).all():
            continue                      # e.g. tissue groups of scans without labels
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
    parser = flags.Parser(prog="python -m mri2ct.evaluate",
                          description="Per-patient metrics of a checkpoint on a cohort split.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mri2ct.train (e.g. best.npz)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a cohort or a folder of paired scans (as for mri2ct.train)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--split-file", metavar="FILE",
                        help="split.json to take the patients from (default: the checkpoint's own split)")
    flags.add_cache_argument(parser)
    parser.add_argument("--out",
                        help="CSV file to write (default: metrics_<split>.csv beside the checkpoint)")
    parser.add_argument("--other-data", action="store_true",
                        help="evaluate on data other than the checkpoint was trained on (its recorded data "
                             "fingerprint differs from DIR's)")
    flags.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.out and not args.out.endswith(".csv"):
        raise ValueError(f"--out {args.out}: give a .csv file name")
    nn3d.set_num_threads(args.threads)
    model, state = model_from_checkpoint(args.checkpoint)
    window, train_spacing = training_frame(state, args.checkpoint)
    folder = open_data_folder(args.data)
    trained = state["config"].get("data_fingerprint")
    if trained is not None and not args.other_data:
        check_same_data(trained, data_fingerprint(folder, state["config"].get("split") or {}), args.checkpoint, args.data,
                        "evaluate it on its own data, or add --other-data")
    if args.split_file or state["config"].get("split") is None:
        splits = choose_split(folder, state["config"].get("seed", 0), args.split_file, "--split-file")
    else:
        splits = state["config"]["split"]
    if args.split not in splits:
        raise ValueError(f"{args.data}: no split {args.split!r} (has {', '.join(splits)})")
    unknown = [id for id in splits[args.split] if id not in folder.paths]
    if unknown:
        raise ValueError(f"{args.data}: {args.checkpoint} was trained on a split with patient {unknown[0]!r}, "
                         f"which this folder does not have; give --split-file")
    if len(set(train_spacing)) != 1:
        raise ValueError(f"{args.checkpoint}: trained at anisotropic spacing {train_spacing}; evaluate needs "
                         f"isotropic training voxels")
    dataset = PatientSet(folder, splits[args.split], train_spacing[0], args.cache or default_cache_dir())
    if len(dataset) == 0:
        raise ValueError(f"{args.data}: the {args.split} split has no patients")
    rows = []
    for index in range(len(dataset)):
        patient = dataset.patient(index)
        scan = read_scan(folder, patient.id)
        rows.append({"patient": patient.id, **evaluate_patient(model, patient, scan, window)})
        print(f"{patient.id}: MAE {rows[-1]['mae']:.1f} HU, PSNR {rows[-1]['psnr']:.2f} dB, "
              f"SSIM {rows[-1]['ssim']:.4f}", flush=True)
    out = args.out or os.path.join(os.path.dirname(args.checkpoint), f"metrics_{args.split}.csv")
    write_text(out, to_csv(rows))
    print(f"\n{args.checkpoint} (epoch {state['epoch']}) on {len(rows)} {args.split} patients, original "
          f"grids; wrote {out}\n")
    print(summary_table(rows))


if __name__ == "__main__":
    errors.run(main)
