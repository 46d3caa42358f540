"""Synthetic brain phantom: one patient's paired T1 MRI and CT, built from tissue shapes in millimetres.

The head is drawn in its own frame ("head frame", millimetres, x = right, y = anterior, z = superior,
centred on the head) and then scaled, rotated and shifted into the scanner's RAS frame. Tissues, from
outside in:

    air | skin/muscle | subcutaneous fat | skull: outer cortical table, diploe (trabecular), inner table
        | CSF | cortical grey matter, folded (sulci filled with CSF) | white matter
        | deep grey nuclei, lateral and third ventricles (CSF), interhemispheric fissure
    plus eyes in orbital fat inside a bony orbit, frontal and sphenoid sinuses (air in a bone shell),
    and a neck (muscle, fat, cervical spine, airway) below the skull, cut by the bottom of the grid.

Pipeline of `generate_patient`:
    1. draw the patient's parameters: size, pose, layer thicknesses, tissue values, noise levels
    2. label a grid `supersample` times finer per axis by painting tissues in order (later wins)
    3. give each fine voxel its CT value (HU) and T1 value, then average each supersample^3 block,
       so voxels on an edge mix the tissues by fraction (partial volume)
    4. CT: add Gaussian noise.  MR: multiply by a smooth bias field and a global gain, add Rician noise
    5. labels = the majority tissue of each block; mask = head (holes filled), dilated by ~3 mm

Randomness that varies in space (layer thickness, bone density, cortical folds, MR bias) comes from
smooth noise: Gaussian values on a coarse lattice in millimetres, interpolated with cubic B-splines.
The lattice lives in millimetres, not voxels, so a seed gives the same patient on any grid of the same
field of view (64^3 at 3 mm, 96^3 at 2 mm and 128^3 at 1.5 mm all span 192 mm).
"""
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GENERATOR_VERSION = "1.0"

# Tissue labels, as stored in labels.nii.gz.
AIR = 0              # outside the head
SKIN_MUSCLE = 1      # skin, scalp and neck muscle
FAT = 2              # subcutaneous and orbital fat
CORTICAL_BONE = 3    # outer and inner skull tables, orbit and sinus walls, spine shell
TRABECULAR_BONE = 4  # diploe and vertebral body
CSF = 5              # around the brain, in sulci, fissure and ventricles
GREY_MATTER = 6      # cortex
WHITE_MATTER = 7
DEEP_GREY = 8        # thalamus, caudate, putamen
EYE = 9              # vitreous body
SINUS_AIR = 10       # air inside the head: sinuses and airway
N_LABELS = 11

LABEL_NAMES = {
    AIR: "air", SKIN_MUSCLE: "skin/muscle", FAT: "fat", CORTICAL_BONE: "cortical bone",
    TRABECULAR_BONE: "trabecular bone", CSF: "CSF", GREY_MATTER: "grey matter",
    WHITE_MATTER: "white matter", DEEP_GREY: "deep grey", EYE: "eye", SINUS_AIR: "sinus air",
}

# Groups reported separately by the evaluation tool.
TISSUE_GROUPS = {
    "bone": (CORTICAL_BONE, TRABECULAR_BONE),
    "soft_tissue": (SKIN_MUSCLE, FAT, EYE),
    "brain": (CSF, GREY_MATTER, WHITE_MATTER, DEEP_GREY),
}

# Nominal CT value (HU) of each tissue and the half-width of its uniform per-patient jitter.
TISSUE_HU = {
    AIR: (-1000.0, 0.0), SKIN_MUSCLE: (40.0, 8.0), FAT: (-100.0, 15.0),
    CORTICAL_BONE: (1350.0, 200.0), TRABECULAR_BONE: (450.0, 80.0), CSF: (15.0, 5.0),
    GREY_MATTER: (40.0, 4.0), WHITE_MATTER: (25.0, 4.0), DEEP_GREY: (37.0, 4.0),
    EYE: (10.0, 5.0), SINUS_AIR: (-1000.0, 0.0),
}
# Nominal T1 signal relative to white matter, and the relative half-width of its per-patient jitter.
# Cortical bone and air give no signal, so they look alike, as in a real T1 scan.
TISSUE_T1 = {
    AIR: (0.0, 0.0), SKIN_MUSCLE: (0.65, 0.05), FAT: (1.5, 0.05), CORTICAL_BONE: (0.0, 0.0),
    TRABECULAR_BONE: (1.0, 0.08), CSF: (0.3, 0.1), GREY_MATTER: (0.7, 0.04),
    WHITE_MATTER: (1.0, 0.0), DEEP_GREY: (0.8, 0.04), EYE: (0.25, 0.1), SINUS_AIR: (0.0, 0.0),
}

# Skin surface of the nominal head: an ellipsoid of 140 x 172 x 154 mm (x, y, z). That is the
# average adult head of about 150 x 185 x 165 mm scaled by 0.93, so that a +10% patient still nearly
# fits the default 192 mm field of view; those that do not (about 1 in 3 once rotated and shifted,
# with a 5 mm margin) are shrunk to fit, by at most ~7%. Smaller fields of view shrink every head
# (64^3 at 1 mm: a miniature head).
HEAD_SEMI_AXES_MM = np.array([70.0, 86.0, 77.0])
SIZE_JITTER = 0.10       # per-axis scale drawn from 1 +- 0.10
ROTATION_DEG = 10.0      # rotation about each axis drawn from +-10 degrees
SHIFT_MM = 4.0           # translation along each axis drawn from +-4 mm
SKIN_BUMP_MM = 1.5       # std of the skin surface roughness, clipped at 2 std
FOV_MARGIN_MM = 5.0      # a head (before roughness) larger than the field of view minus this is shrunk

# Cubic B-spline: the variance of noise interpolated from a lattice of unit-variance values is
# (integral of B^2)^3 = (151/315)^3; dividing the lattice by its square root gives unit variance.
_BSPLINE_STD = (151.0 / 315.0) ** 1.5


@dataclass
class Phantom:
    """One synthetic patient on a grid of shape (D, H, W) = (x, y, z) voxels, RAS orientation."""
    mr: np.ndarray       # (D, H, W) float32, T1 signal in arbitrary scanner units
    ct: np.ndarray       # (D, H, W) int16, Hounsfield units
    labels: np.ndarray   # (D, H, W) uint8, majority tissue of each voxel
    mask: np.ndarray     # (D, H, W) uint8, 1 inside the (dilated) head
    affine: np.ndarray   # (4, 4) voxel index -> RAS millimetres
    params: dict         # the drawn patient parameters, JSON-serialisable


def grid_affine(shape, spacing):
    """(4, 4) RAS affine of an isotropic grid of `shape` voxels centred on the origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing
    return affine


def axis_centres(n, spacing):
    """(n,) millimetre coordinates of the voxel centres along one axis of a centred grid."""
    return (np.arange(n) - (n - 1) / 2.0) * spacing


def bspline3(s):
    """Cubic B-spline kernel B(s), support |s| < 2, integral 1."""
    a = np.abs(s)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


class SmoothNoise:
    """Smooth Gaussian random field(s) with unit variance and correlation length ~`lattice_mm`.

    Values on a lattice with spacing `lattice_mm` covering a cube of half-width `half_mm`,
    interpolated by cubic B-splines:  f(x, y, z) = sum_abc L[a, b, c] B(tx - a) B(ty - b) B(tz - c),
    with t = (coordinate + half_mm) / lattice_mm.
    """

    def __init__(self, rng, lattice_mm, half_mm, channels=1):
        self.lattice_mm = lattice_mm
        self.half_mm = half_mm
        n = int(np.ceil(2 * half_mm / lattice_mm)) + 1
        self.values = rng.standard_normal((channels, n, n, n)) / _BSPLINE_STD  # (C, n, n, n)

    def weights(self, coords):
        """(len(coords), n) interpolation weights B(t_i - a) of 1-D millimetre coordinates."""
        t = (np.asarray(coords, dtype=np.float64) + self.half_mm) / self.lattice_mm
        return bspline3(t[:, None] - np.arange(self.values.shape[1])[None, :])

    def on_grid(self, x, y, z):
        """(C, len(x), len(y), len(z)) float32 field on the grid spanned by three 1-D coordinate axes.

        The sum is separable, so it is three small matrix products instead of 64 terms per point.
        """
        wx, wy, wz = (self.weights(c).astype(np.float32) for c in (x, y, z))
        c, n = self.values.shape[:2]
        f = self.values.astype(np.float32).transpose(1, 0, 2, 3).reshape(n, -1)  # (a, C*b*c)
        f = (wx @ f).reshape(len(x), c, n, n).transpose(1, 0, 2, 3)  # (C, X, b, c)
        f = wy @ f                                                     # (C, X, Y, c)
        return f @ wz.T                                                # (C, X, Y, Z)


def rotation_matrix(degrees):
    """(3, 3) rotation about x, then y, then z by the given angles in degrees."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_patient(rng, fov_mm):
    """Draw one patient's anatomy and acquisition parameters (a dict of floats and arrays).

    The draw order is fixed, so a random generator in a given state always gives the same patient.
    """
    p = {}
    scale = 1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER, 3)
    rotation = rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3)
    shift = rng.uniform(-SHIFT_MM, SHIFT_MM, 3)
    # Half-extent along world axis i of the rotated, scaled ellipsoid: sqrt(sum_j (R_ij s_j a_j)^2).
    half_extent = np.sqrt(((rotation_matrix(rotation) * (scale * HEAD_SEMI_AXES_MM)) ** 2).sum(1))
    room = fov_mm / 2 - FOV_MARGIN_MM - np.abs(shift)
    fit = min(1.0, float(np.min(room / half_extent)))  # < 1 only when the head would not fit
    p["scale"] = scale * fit
    p["fov_fit"] = fit
    p["rotation_deg"] = rotation
    p["shift_mm"] = shift
    # Layer thicknesses in millimetres of the nominal head (before scaling).
    p["skin_mm"] = rng.uniform(2.5, 4.0)
    p["fat_mm"] = rng.uniform(3.0, 6.0)
    p["outer_table_mm"] = rng.uniform(1.5, 2.2)
    p["diploe_mm"] = rng.uniform(2.5, 4.5)
    p["inner_table_mm"] = rng.uniform(1.2, 1.8)
    p["csf_mm"] = rng.uniform(1.5, 3.0)
    p["cortex_mm"] = rng.uniform(2.3, 3.0)
    p["sulcus_depth_mm"] = rng.uniform(14.0, 20.0)
    p["ventricle_scale"] = rng.uniform(0.7, 1.4)
    p["hu"] = np.array([m + rng.uniform(-j, j) for m, j in (TISSUE_HU[t] for t in range(N_LABELS))])
    p["t1"] = np.array([m * (1 + rng.uniform(-j, j)) for m, j in (TISSUE_T1[t] for t in range(N_LABELS))])
    p["ct_noise_hu"] = rng.uniform(5.0, 10.0)
    p["mr_gain"] = float(np.exp(rng.uniform(np.log(200.0), np.log(2000.0))))
    p["mr_noise"] = rng.uniform(0.025, 0.035)  # Rician sigma as a fraction of white matter
    p["mr_bias"] = rng.uniform(0.05, 0.09)     # std of the log bias field: +-10-18% at 2 sigma
    return p


def ellipsoid(ux, uy, uz, centre, radii):
    """Boolean: points (head frame, mm) inside the axis-aligned ellipsoid."""
    return (((ux - centre[0]) / radii[0]) ** 2 + ((uy - centre[1]) / radii[1]) ** 2
            + ((uz - centre[2]) / radii[2]) ** 2) < 1


def paint_head(ux, uy, uz, thickness, bump, folds, p):
    """Tissue labels of points given in head-frame millimetres.

    ux, uy, uz: (X, Y, Z) head-frame coordinates of the fine grid points.
    thickness:  (4, X, Y, Z) smooth noise modulating skin, fat, diploe and CSF thickness.
    bump:       (X, Y, Z) smooth noise roughening the skin surface.
    folds:      callable (qx, qy, qz) -> fold noise at points on the skin surface, head frame.
    Returns (X, Y, Z) uint8 labels.
    """
    # Depth below the skin along the ray from the head centre:  a point at ellipsoidal radius r and
    # distance rad from the centre lies rad * (1/r - 1) millimetres inside the ellipsoid r = 1.
    r = np.sqrt((ux / HEAD_SEMI_AXES_MM[0]) ** 2 + (uy / HEAD_SEMI_AXES_MM[1]) ** 2
                + (uz / HEAD_SEMI_AXES_MM[2]) ** 2)
    r = np.maximum(r, 1e-3)
    rad = np.sqrt(ux**2 + uy**2 + uz**2)
    depth = rad * (1 / r - 1) + SKIN_BUMP_MM * np.clip(bump, -2, 2)

    # Layer boundaries, cumulative depth in mm; thickness varies by about +-30% over the head.
    vary = np.exp(0.3 * thickness)  # (4, X, Y, Z)
    b_skin = p["skin_mm"] * vary[0]
    b_fat = b_skin + p["fat_mm"] * vary[1]
    b_outer = b_fat + p["outer_table_mm"]
    b_diploe = b_outer + p["diploe_mm"] * vary[2]
    b_inner = b_diploe + p["inner_table_mm"]
    b_csf = b_inner + p["csf_mm"] * vary[3]

    labels = np.zeros(ux.shape, np.uint8)
    labels[depth > 0] = SKIN_MUSCLE
    labels[depth > b_skin] = FAT
    labels[depth > b_fat] = CORTICAL_BONE
    labels[depth > b_outer] = TRABECULAR_BONE
    labels[depth > b_diploe] = CORTICAL_BONE
    labels[depth > b_inner] = CSF
    brain = depth > b_csf
    brain_depth = depth - b_csf  # mm below the brain surface
    labels[brain] = WHITE_MATTER

    # Cortex: a grey band under the surface, folded into gyri. Sulci are sheets where the fold noise,
    # taken at the point's projection onto the skin surface (so sheets run radially), is near zero.
    cortex = p["cortex_mm"]
    labels[brain & (brain_depth <= cortex)] = GREY_MATTER
    fold_zone = brain & (brain_depth < p["sulcus_depth_mm"] + cortex)
    fold = np.abs(folds(ux[fold_zone] / r[fold_zone], uy[fold_zone] / r[fold_zone],
                        uz[fold_zone] / r[fold_zone]))
    zone_labels = labels[fold_zone]
    zone_labels[fold < 0.6] = GREY_MATTER
    zone_labels[(fold < 0.15) & (brain_depth[fold_zone] < p["sulcus_depth_mm"])] = CSF
    labels[fold_zone] = zone_labels

    # Interhemispheric fissure above the corpus callosum, lined by the medial cortex.
    above_callosum = brain & (uz > 12)
    labels[above_callosum & (np.abs(ux) < 1.0 + cortex)] = GREY_MATTER
    labels[above_callosum & (np.abs(ux) < 1.0)] = CSF

    # The head is left-right symmetric, so paired structures are tested on |x| against the right one.
    side_x = np.abs(ux)

    # Deep grey nuclei, then the ventricles (CSF) that border them.
    for centre, radii in (((11, -8, 2), (8, 13, 8)),     # thalamus
                          ((13, 14, 12), (5, 10, 7)),    # caudate head
                          ((24, 4, 2), (5, 15, 8))):     # putamen
        labels[brain & ellipsoid(side_x, uy, uz, centre, radii)] = DEEP_GREY
    v = p["ventricle_scale"]
    lateral = ellipsoid(side_x, uy, uz, (3 + 4 * v, 0, 14), (4 * v, 25, 6 * v))
    third = (side_x < 1.5 * v) & (np.abs(uy + 6) < 10) & (np.abs(uz - 1) < 7)
    labels[brain & (lateral | third)] = CSF

    # Eyes: vitreous in orbital fat, in a bony cup open to the front.
    eye_centre = (31, 56, -30)
    in_head = depth > 0
    labels[in_head & ellipsoid(side_x, uy, uz, eye_centre, (18, 18, 18)) & (uy < eye_centre[1])] = CORTICAL_BONE
    labels[in_head & ellipsoid(side_x, uy, uz, eye_centre, (16, 16, 16))] = FAT
    labels[in_head & ellipsoid(side_x, uy, uz, eye_centre, (12, 12, 12))] = EYE

    # Sinuses: air in a 2 mm cortical shell, inside the outer skull table.
    inside_skull = depth > b_fat
    for centre, radii in (((0, 74, -6), (12, 4, 8)),       # frontal sinus, in the forehead bone
                          ((0, 44, -46), (11, 20, 12))):   # sphenoid/ethmoid sinuses and nasal cavity
        labels[inside_skull & ellipsoid(ux, uy, uz, centre, np.add(radii, 2))] = CORTICAL_BONE
        labels[inside_skull & ellipsoid(ux, uy, uz, centre, radii)] = SINUS_AIR

    # Neck below the skull, outside the head ellipsoid: muscle under skin and fat, the cervical
    # spine (trabecular body in a cortical shell) behind, the airway in front.
    neck_r = np.sqrt((ux / 50) ** 2 + ((uy + 8) / 55) ** 2)
    neck_depth = (1 - neck_r) * 52
    neck = (depth <= 0) & (uz < -40) & (neck_depth > 0)
    labels[neck] = SKIN_MUSCLE
    labels[neck & (neck_depth > 1.5) & (neck_depth < 6)] = FAT
    spine_r = np.sqrt(ux**2 + (uy + 15) ** 2)
    labels[neck & (spine_r < 10)] = CORTICAL_BONE
    labels[neck & (spine_r < 8)] = TRABECULAR_BONE
    labels[neck & (np.sqrt(ux**2 + (uy - 18) ** 2) < 7)] = SINUS_AIR
    return labels


def block_mean(fine, k):
    """(X, Y, Z) mean of each k^3 block of a (kX, kY, kZ) array."""
    x, y, z = (n // k for n in fine.shape)
    return fine.reshape(x, k, y, k, z, k).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def block_majority(fine_labels, k):
    """(X, Y, Z) most frequent label of each k^3 block (ties go to the lower label)."""
    x, y, z = (n // k for n in fine_labels.shape)
    blocks = fine_labels.reshape(x, k, y, k, z, k).transpose(0, 2, 4, 1, 3, 5).reshape(-1, k**3)
    block_index = np.repeat(np.arange(blocks.shape[0]), k**3)
    counts = np.bincount(block_index * N_LABELS + blocks.ravel(), minlength=blocks.shape[0] * N_LABELS)
    return counts.reshape(-1, N_LABELS).argmax(1).astype(np.uint8).reshape(x, y, z)


def generate_patient(rng, shape=64, spacing=3.0, supersample=2):
    """Generate one patient on a grid of `shape` voxels of `spacing` mm, centred on the origin.

    rng: numpy Generator; all randomness comes from it, in a fixed order.
    shape: an int (cubic grid) or three sizes (X, Y, Z); a cubic grid draws exactly as three equal sizes.
    Returns a Phantom with (X, Y, Z) volumes.
    """
    size = np.broadcast_to(np.asarray(shape, dtype=int), (3,))
    nx, ny, nz = (int(n) for n in size)
    k = int(supersample)
    fov = size * spacing                                     # (3,) field of view in mm
    p = draw_patient(rng, fov)
    half = max(float(fov.max()) / 2, 128.0) + 30.0  # noise lattices cover at least a 256 mm cube
    thickness = SmoothNoise(rng, 30.0, half, channels=4)
    bump = SmoothNoise(rng, 25.0, half)
    bone_density = SmoothNoise(rng, 15.0, half)
    bias = SmoothNoise(rng, 60.0, half)
    fold_noise = SmoothNoise(rng, 5.5, 100.0)  # head frame, evaluated on the skin surface

    # Fold noise sampled once on a 1.5 mm head-frame grid, then read by trilinear interpolation.
    fold_axis = np.arange(-100.0, 100.0 + 1e-9, 1.5)
    fold_grid = fold_noise.on_grid(fold_axis, fold_axis, fold_axis)[0]

    def folds(qx, qy, qz):
        idx = (np.stack([qx, qy, qz]) + 100.0) / 1.5
        return ndimage.map_coordinates(fold_grid, idx, order=1, mode="nearest")

    # World -> head frame:  u = R^T (x - shift) / scale.
    rot = rotation_matrix(p["rotation_deg"])
    fine_x, fine_y, fine_z = (axis_centres(n * k, spacing / k) for n in (nx, ny, nz))
    labels = np.empty((nx, ny, nz), np.uint8)
    hu = np.empty((nx, ny, nz), np.float32)
    t1 = np.empty((nx, ny, nz), np.float32)
    slab = max(1, 2_100_000 // (k**3 * ny * nz))  # output planes per slab: ~2M fine points at a time
    for start in range(0, nx, slab):
        stop = min(nx, start + slab)
        fx = fine_x[start * k:stop * k]
        x, y, z = np.meshgrid(fx, fine_y, fine_z, indexing="ij", sparse=True)
        rel = [x - p["shift_mm"][0], y - p["shift_mm"][1], z - p["shift_mm"][2]]
        ux, uy, uz = ((rel[0] * rot[0, j] + rel[1] * rot[1, j] + rel[2] * rot[2, j]).astype(np.float32)
                      / np.float32(p["scale"][j]) for j in range(3))
        fine = paint_head(ux, uy, uz, thickness.on_grid(fx, fine_y, fine_z),
                          bump.on_grid(fx, fine_y, fine_z)[0], folds, p)

        fine_hu = p["hu"].astype(np.float32)[fine]
        fine_t1 = p["t1"].astype(np.float32)[fine]
        density = bone_density.on_grid(fx, fine_y, fine_z)[0]
        cortical, trabecular = fine == CORTICAL_BONE, fine == TRABECULAR_BONE
        fine_hu[cortical] = np.clip(fine_hu[cortical] * (1 + 0.15 * density[cortical]), 900, 1800)
        fine_hu[trabecular] = np.clip(fine_hu[trabecular] * (1 + 0.2 * density[trabecular]), 300, 600)
        fine_t1[trabecular] *= 1 + 0.1 * density[trabecular]

        labels[start:stop] = block_majority(fine, k)
        hu[start:stop] = block_mean(fine_hu, k)
        t1[start:stop] = block_mean(fine_t1, k)

    log_bias = p["mr_bias"] * bias.on_grid(*(axis_centres(n, spacing) for n in (nx, ny, nz)))[0]
    signal = t1 * np.exp(log_bias) * p["mr_gain"]
    sigma = p["mr_noise"] * p["mr_gain"]
    noise_re, noise_im, noise_ct = rng.standard_normal((3, nx, ny, nz), dtype=np.float32)
    mr = np.sqrt((signal + sigma * noise_re) ** 2 + (sigma * noise_im) ** 2).astype(np.float32)
    ct = np.rint(hu + p["ct_noise_hu"] * noise_ct).astype(np.int16)

    head = ndimage.binary_fill_holes(labels != AIR)
    mask = ndimage.binary_dilation(head, iterations=max(1, round(3.0 / spacing))).astype(np.uint8)
    params = {key: (value.round(4).tolist() if isinstance(value, np.ndarray) else round(float(value), 4))
              for key, value in p.items()}
    return Phantom(mr=mr, ct=ct, labels=labels, mask=mask, affine=grid_affine((nx, ny, nz), spacing),
                   params=params)
