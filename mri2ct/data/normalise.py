"""What the network sees: MR divided by its white-matter level, CT in thousands of HU.

MR (T1 is not quantitative: only intensity relative to a reference tissue means anything):

    scale = white-matter peak of the MR histogram inside the mask (`white_matter_peak`)
    mr_net = clip(mr / scale, 0, MR_MAX)

    The white-matter peak does not depend on what else is in the field of view. The 99th percentile
    used before did: in a whole head the brightest tissue is fat and skin, in a skull-stripped brain it
    is white matter, so the same brain got two different scales (white matter predicted at -68 HU
    instead of 25 HU on a real skull-stripped T1). The peak is found as follows:
      1. keep the voxels inside the mask that are brighter than FOREGROUND x the 99.9th percentile
         (background air and the dark skull in a generous mask do not count);
      2. histogram those from their median up to their 99.9th percentile (one absurd voxel of 3e38
         cannot stretch the bins: a percentile ignores it), HISTOGRAM_BINS bins, Gaussian-smoothed;
      3. the scale is the centre of the tallest bin. Above the median of a T1 head or brain, the
         largest single tissue is white matter: grey matter, CSF and air lie mostly below the median,
         fat and skin are a thin shell and spread over a wider range, so their peak is lower.
    The clip at MR_MAX (fat is ~1.5 x white matter) keeps a few absurd voxels from reaching the network.
    docs/mr_normalisation.png (python -m mri2ct.data --figure-normalisation) shows the histograms.

CT:  x = hu / 1000 (hu_to_net), hu = 1000 x (net_to_hu): -1000..+1000 HU -> -1..1, no clipping.
     Bone up to ~1800 HU maps to 1.8; a linear map keeps the MSE proportional to HU^2 everywhere.

Plausibility, checked where a scan is read (folders.read_scan, infer), so that a file that is not
what its name says is refused with one line naming it instead of training or predicting nonsense:
    check_mr(mr, what)    not constant, and with positive values: T1 intensities are positive (air
                          near 0); an all-negative or offset MR is refused
    check_ct(ct, what)    air near -1000 HU: the lowest value is at most AIR_MAX_HU; a CT stored
                          without its -1024 offset (0..4095) is refused
"""
import numpy as np
from scipy import ndimage

HU_SCALE = 1000.0
MR_MAX = 3.0              # normalised MR is clipped to [0, MR_MAX]
FOREGROUND = 0.1          # voxels below this fraction of the 99.9th percentile are background
UPPER_PERCENTILE = 99.9   # top of the histogram range
HISTOGRAM_BINS = 128
HISTOGRAM_SMOOTHING = 2.0  # Gaussian sigma in bins
AIR_MAX_HU = -500.0       # a head CT holds air (about -1000 HU): its lowest value is below this


def check_mr(mr, what):
    """ValueError naming `what` unless the MR (D, H, W) varies and has positive values."""
    low, high = float(mr.min()), float(mr.max())
    if low == high:
        raise ValueError(f"{what}: empty image (every voxel has the same value, {low:.4g})")
    if high <= 0:
        raise ValueError(f"{what}: values from {low:.4g} to {high:.4g}, none positive; a T1 MR is positive "
                         f"(air near 0): is it offset or inverted?")


def check_ct(ct, what):
    """ValueError naming `what` unless the CT (D, H, W) in HU holds air (lowest value <= AIR_MAX_HU)."""
    low, high = float(ct.min()), float(ct.max())
    if low > AIR_MAX_HU:
        raise ValueError(f"{what}: values from {low:.0f} to {high:.0f}, no air; a CT in HU has air near "
                         f"-1000 HU: is it stored without its -1024 offset (0..4095)?")


def hu_to_net(hu):
    """CT in Hounsfield units -> network range: x = hu / 1000 (float32, no clipping)."""
    return (np.asarray(hu, dtype=np.float32) / np.float32(HU_SCALE)).astype(np.float32)


def net_to_hu(x):
    """Network output -> Hounsfield units: hu = 1000 x, the inverse of hu_to_net."""
    return (np.asarray(x, dtype=np.float32) * np.float32(HU_SCALE)).astype(np.float32)


def foreground_histogram(values):
    """(counts smoothed (HISTOGRAM_BINS,), bin edges (HISTOGRAM_BINS + 1,)) of steps 1-2 above.

    values: 1-D MR intensities inside the mask. ValueError if there is no foreground to speak of.
    """
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("MR normalisation: the mask is empty")
    top = float(np.percentile(values, UPPER_PERCENTILE))
    if not top > 0:
        raise ValueError(f"MR normalisation: the {UPPER_PERCENTILE}th percentile inside the mask is {top:.4g}, "
                         f"nothing bright to scale by (is the MR offset?)")
    foreground = values[(values > FOREGROUND * top) & (values <= top)]
    low = float(np.median(foreground))
    if not top > low:
        raise ValueError("MR normalisation: the image has a single intensity inside the mask")
    counts, edges = np.histogram(foreground, bins=HISTOGRAM_BINS, range=(low, top))
    return ndimage.gaussian_filter1d(counts.astype(np.float64), HISTOGRAM_SMOOTHING), edges


def white_matter_peak(values):
    """The MR intensity of the tallest histogram bin above the foreground median (step 3 above)."""
    counts, edges = foreground_histogram(values)
    peak = int(np.argmax(counts))
    return float((edges[peak] + edges[peak + 1]) / 2)


def normalise_mr(mr, mask=None):
    """(clip(mr / scale, 0, MR_MAX) as float32, scale), scale = white_matter_peak inside the mask.

    mr: (X, Y, Z) MR in scanner units; mask: (X, Y, Z), voxels > 0 count (None: the whole volume).
    Raises ValueError for an empty mask or image.
    """
    inside = mr[mask > 0] if mask is not None else mr.ravel()
    scale = white_matter_peak(np.asarray(inside, dtype=np.float64))
    normalised = np.clip(np.asarray(mr, dtype=np.float64) / scale, 0.0, MR_MAX)
    return normalised.astype(np.float32), scale
