"""python -m mri2ct.data: write a synthetic cohort or paired folder, report tissue statistics, or draw
the documentation figures.

    python -m mri2ct.data --out data/cohort                                   # 60 patients, 64^3, 3 mm
    python -m mri2ct.data --out data/pairs --layout paired --patients 20      # SynthRAD-style, 1 mm
    python -m mri2ct.data --stats data/cohort
    python -m mri2ct.data --figure docs/patient_slices.png
    python -m mri2ct.data --figure-normalisation docs/mr_normalisation.png
"""
import time

from mri2ct.common import errors, flags
from mri2ct.data.cohort import LAYOUTS, MAX_SUPERSAMPLE, MIN_SIZE, SPACING_RANGE_MM, generate_cohort
from mri2ct.data.stats import format_statistics, tissue_statistics

DEFAULT_SHAPE = {"cohort": [64], "paired": [160, 192, 176]}
DEFAULT_SPACING = {"cohort": 3.0, "paired": 1.0}


def parse_args(argv=None):
    parser = flags.Parser(prog="python -m mri2ct.data",
                          description="Generate synthetic paired brain MRI and CT, report tissue "
                                      "statistics of a cohort, or draw the data figures.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", metavar="DIR", help="folder to write (new or empty; see --overwrite)")
    action.add_argument("--stats", metavar="DIR", help="cohort folder to report mean HU and MR per label")
    action.add_argument("--figure", metavar="PNG", help="draw patient 0 of the default cohort (MR, CT, "
                                                        "labels), e.g. docs/patient_slices.png")
    action.add_argument("--figure-normalisation", metavar="PNG",
                        help="draw the MR histograms and white-matter peaks, e.g. docs/mr_normalisation.png")
    parser.add_argument("--layout", choices=LAYOUTS, default="cohort",
                        help="cohort: manifest, split, labels, 64^3 at 3 mm; paired: SynthRAD-style folders, "
                             "per-patient fields of view, mixed orientations and dtypes, 1 mm")
    parser.add_argument("--patients", type=flags.POSITIVE, default=60)
    flags.add_seed_argument(parser, "seed of the patients and the split")
    parser.add_argument("--shape", type=flags.integer(MIN_SIZE), nargs="+", metavar="N",
                        help="voxels per axis: one size (cube) or three (default: 64 for a cohort, "
                             "160 192 176 for a paired folder, each shrunk by up to 15%% per patient)")
    parser.add_argument("--spacing", type=flags.number(*SPACING_RANGE_MM),
                        help="isotropic voxel size in mm (default: 3 for a cohort, 1 for a paired folder)")
    parser.add_argument("--supersample", type=flags.integer(1, MAX_SUPERSAMPLE), default=2,
                        help="partial-volume supersampling factor")
    parser.add_argument("--workers", type=flags.POSITIVE, default=None,
                        help="processes (default: up to 2; never more than the patients or the cores)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --out folder this command wrote before (its whole content is "
                             "deleted); a folder it did not write is never replaced")
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 3):
        parser.error(f"argument --shape: takes one or three sizes, got {len(args.shape)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.stats:
        print(format_statistics(tissue_statistics(args.stats)))
        return
    if args.figure or args.figure_normalisation:
        from mri2ct.data import figures  # matplotlib only when a figure is asked for
        path = figures.patient_figure(args.figure) if args.figure else \
            figures.normalisation_figure(args.figure_normalisation)
        print(f"wrote {path}")
        return
    shape = args.shape or DEFAULT_SHAPE[args.layout]
    spacing = args.spacing if args.spacing is not None else DEFAULT_SPACING[args.layout]
    start = time.perf_counter()
    record = generate_cohort(args.out, args.patients, args.seed, shape if len(shape) == 3 else shape[0],
                             spacing, args.supersample, args.workers, args.layout, args.overwrite)
    if record is None:
        print(f"{args.out}: already holds this {args.layout} folder ({args.patients} patients, seed "
              f"{args.seed}); nothing to do")
        return
    sizes = " x ".join(map(str, shape)) if len(shape) == 3 else f"{shape[0]}^3"
    split = ""
    if args.layout == "cohort":
        split = " (" + "/".join(str(len(record["split"][name])) for name in ("train", "val", "test")) + \
                " train/val/test)"
    print(f"{args.out}: {args.patients} patients{split} at {sizes} x {spacing} mm in "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    errors.run(main)
