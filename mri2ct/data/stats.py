"""Per-tissue statistics of a synthetic cohort (`python -m mri2ct.data --stats DIR`): what the phantom
actually produced, to compare with the tissue values it was asked for (phantom.py)."""
import numpy as np

from mri2ct.data import phantom
from mri2ct.data.folders import open_data_folder, read_scan


def _interior(labels):
    """(X, Y, Z) bool: voxels whose six face neighbours carry the same label (no partial volume)."""
    same = np.ones(labels.shape, bool)
    for axis in range(3):
        for step in (1, -1):
            same &= labels == np.roll(labels, step, axis=axis)
    return same


def tissue_statistics(root):
    """Per-label statistics over all patients of a cohort (a folder with labels.nii.gz per patient).

    Returns {label: {"voxels", "hu_mean", "hu_std", "mr_mean", "interior_voxels", "interior_hu_mean",
    "interior_mr_mean"}}; MR is relative to each patient's median white-matter signal. Interior voxels
    are those whose six neighbours share the label, so partial volume does not blur their mean.
    """
    folder = open_data_folder(root)
    sums = np.zeros((phantom.N_LABELS, 7))  # n, sum hu, sum hu^2, sum mr; interior: n, sum hu, sum mr
    for patient in folder.ids:
        scan = read_scan(folder, patient)
        if scan.labels is None:
            raise ValueError(f"{root}/{patient}: no labels.nii.gz; --stats needs a synthetic cohort")
        labels, interior = scan.labels, _interior(scan.labels)
        white = scan.mr[(labels == phantom.WHITE_MATTER) & interior]
        mr = scan.mr / np.median(white if white.size else scan.mr[labels == phantom.WHITE_MATTER])
        hu = scan.ct.astype(np.float64)
        for label in range(phantom.N_LABELS):
            voxels, core = labels == label, (labels == label) & interior
            sums[label] += (voxels.sum(), hu[voxels].sum(), (hu[voxels] ** 2).sum(), mr[voxels].sum(),
                            core.sum(), hu[core].sum(), mr[core].sum())
    table = {}
    for label in range(phantom.N_LABELS):
        n, hu_sum, hu_square, mr_sum, n_core, core_hu, core_mr = sums[label]
        mean = hu_sum / n if n else float("nan")
        table[label] = {
            "voxels": int(n), "hu_mean": mean,
            "hu_std": float(np.sqrt(max(hu_square / n - mean**2, 0))) if n else float("nan"),
            "mr_mean": mr_sum / n if n else float("nan"), "interior_voxels": int(n_core),
            "interior_hu_mean": core_hu / n_core if n_core else float("nan"),
            "interior_mr_mean": core_mr / n_core if n_core else float("nan"),
        }
    return table


def format_statistics(table):
    """The tissue statistics as a Markdown table."""
    lines = ["| label | tissue | voxels | HU mean | HU std | MR/WM | interior voxels | interior HU | "
             "interior MR/WM |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in table.items():
        lines.append(f"| {label} | {phantom.LABEL_NAMES[label]} | {row['voxels']} | {row['hu_mean']:.0f} | "
                     f"{row['hu_std']:.0f} | {row['mr_mean']:.2f} | {row['interior_voxels']} | "
                     f"{row['interior_hu_mean']:.0f} | {row['interior_mr_mean']:.2f} |")
    return "\n".join(lines)
