"""Radiological drawing that the figures share: CT window, views, direction letters, picture files.

Views follow the radiological convention, for a volume in RAS order (data/orientation.py):
    axial     seen from the feet: anterior up, the patient's right on the image's left
    coronal   seen from the front: superior up, the patient's right on the image's left
    sagittal  seen from the patient's left side: superior up, anterior on the image's left
Each panel is drawn in millimetres (its aspect follows the voxel spacing) and carries the direction
letters at its edges.

Figures are written atomically with matplotlib's Agg backend (no display), in a picture format
chosen by the file's suffix (PICTURE_FORMATS); any other suffix is refused, so a typo can never
replace a scan with a picture.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from mri2ct.common.atomic import atomic_path  # noqa: E402

PICTURE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg", "tif", "tiff")
CT_WINDOW = (-1000.0, 1500.0)     # HU shown from black to white: air to dense bone
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


def draw_edge_letters(panel, view):
    """The direction letters of `view` (one of VIEWS) at the four edges of a slice panel."""
    for (x, y, align), letter in zip(EDGE_POSITIONS, EDGE_LETTERS[view]):
        panel.text(x, y, letter, transform=panel.transAxes, color="yellow", fontsize=8,
                   ha=align[0], va=align[1])
