"""Synthesise a CT from a T1 MRI of any size, spacing and orientation, or from every MRI of a folder:

    python -m mri2ct.infer --checkpoint PATH --input MR.nii.gz --output SCT.nii.gz
    python -m mri2ct.infer --checkpoint PATH --input-dir MRS --output-dir SCTS
    mpiexec -n N python -m mri2ct.infer --checkpoint PATH --input-dir MRS --output-dir SCTS

    1. read the NIfTI once and check it: real-valued voxels, 3-D, finite after the header's scaling,
       a finite affine describing a real grid with voxel sizes of 0.1-10 mm, within the size limits
       (data/nifti.py: header checks before any voxel is read), not constant and positive somewhere
       (data/normalise.check_mr); the resampled grid within its limit (inference/sliding_window.py)
    2. reorder the axes to RAS (a permutation and flips, no interpolation; data/orientation.py)
    3. predict the CT in HU on that grid (sliding_window.synthesize_ct: robust clip, resample to
       the training spacing, normalise, Gaussian-blended sliding windows, back to the scan's grid)
    4. undo step 2 and write float32 HU with the input's affine and header, atomically (never a
       partial file), marked as infer's own: the header's descrip field says "mri2ct.infer <version>"

Every bad input stops with a one-line error naming the file and writes nothing; `--output` may not be
the input file itself (compared by device and inode, so links to it count too). An existing output
is replaced only if infer wrote it (its mark), or with --overwrite: any other file there (a CT, a
scan of another program) is refused.

A folder (--input-dir): every .nii and .nii.gz file directly in it, in name order, each predicted as
above into --output-dir under the same name. A bad scan gets its one-line error (naming it) and is
skipped; the others are still predicted, and the exit status is 2 if any was skipped. An output that
infer wrote is kept, not predicted again (so a rerun after a crash finishes the rest); any other file
in its place is refused as in one-scan mode, reported and skipped like a bad scan. --overwrite
predicts and replaces both. Under `mpiexec -n N` (common/distributed.py) rank r predicts scans r,
r + N, ...; rank 0 prints the summary.
"""
import os
import sys

import numpy as np

import nn3d
from mri2ct import __version__
from mri2ct.common import distributed, errors, flags
from mri2ct.data.nifti import description_of, load_image, save_volume
from mri2ct.data.normalise import check_mr
from mri2ct.data.orientation import from_ras, to_ras
from mri2ct.inference.sliding_window import synthesize_ct
from mri2ct.training.checkpoint import model_from_checkpoint, training_frame

WRITER = "mri2ct.infer"                 # the mark in the descrip field of every file infer writes


def read_mr(path):
    """(data (D, H, W) float32, image) of a checked NIfTI MR (step 1); ValueError otherwise."""
    data, image = load_image(path, "input MR")
    check_mr(data, f"input MR {path}")
    return data, image


def written_by_infer(path):
    """True if the file at `path` carries infer's mark."""
    return (description_of(path) or "").startswith(f"{WRITER} ")


def check_output(path, overwrite, flag="--output"):
    """ValueError unless `path` is free, or a file infer wrote, or `overwrite` allows replacing it."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a folder")
    if not (overwrite or written_by_infer(path)):
        raise ValueError(f"{flag} {path}: exists and was not written by {WRITER}; choose another file name, "
                         f"or give --overwrite to replace it")


def same_file(first, second):
    """True if both paths name one file: same device and inode (hard links, symlinks) or same real path."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        a, b = os.stat(first), os.stat(second)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def parse_args(argv=None):
    parser = flags.Parser(prog="python -m mri2ct.infer",
                          description="Synthesise a CT (HU) from a T1 MRI with a trained UNet3D.")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mri2ct.train (e.g. best.npz)")
    parser.add_argument("--input", help="T1 MRI, NIfTI (.nii or .nii.gz), any size/spacing")
    parser.add_argument("--output", help="synthetic CT to write (.nii or .nii.gz), in HU")
    parser.add_argument("--input-dir", metavar="DIR", help="predict every .nii/.nii.gz file of DIR instead")
    parser.add_argument("--output-dir", metavar="DIR", help="where --input-dir's CTs go, under the same names")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs that infer did not write, and predict again the "
                             "outputs of --output-dir that it did")
    flags.add_threads_argument(parser, "per rank under mpiexec")
    args = parser.parse_args(argv)
    one, folder = (args.input, args.output), (args.input_dir, args.output_dir)
    if not (all(one) and not any(folder) or all(folder) and not any(one)):
        parser.error("give --input and --output, or --input-dir and --output-dir")
    return args


def predict_scan(model, window, train_spacing, mr, image, input_path, output_path):
    """Steps 2-4 of the module docstring for the scan (mr, image) read from input_path (read_mr);
    returns the line that reports it. A ValueError names input_path."""
    try:
        mr_ras, orientation, spacing = to_ras(mr, image.affine, f"input MR {input_path}")
        ct_ras = synthesize_ct(model, mr_ras, spacing, window, train_spacing)
    except ValueError as error:
        if input_path in str(error):
            raise
        raise ValueError(f"input MR {input_path}: {error}") from None
    save_volume(output_path, from_ras(ct_ras, orientation).astype(np.float32), image.affine, image.header,
                description=f"{WRITER} {__version__}")
    return f"wrote {output_path}: {mr.shape} voxels, HU {ct_ras.min():.0f} to {ct_ras.max():.0f}"


def scan_names(folder):
    """Names of the .nii and .nii.gz files directly in `folder`, sorted; ValueError if there are none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--input-dir {folder}: no such folder")
    names = sorted(name for name in os.listdir(folder)
                   if name.endswith((".nii", ".nii.gz")) and os.path.isfile(os.path.join(folder, name)))
    if not names:
        raise ValueError(f"--input-dir {folder}: no .nii or .nii.gz files in it")
    return names


def predict_folder(args, world):
    """Every scan of --input-dir into --output-dir, rank r taking scans r, r + N, ...; returns the
    names that failed (on every rank)."""
    names = scan_names(args.input_dir)
    if same_file(args.input_dir, args.output_dir):
        raise ValueError(f"--output-dir {args.output_dir} is the input folder; choose another folder")
    model, state = model_from_checkpoint(args.checkpoint)
    window, train_spacing = training_frame(state, args.checkpoint)
    os.makedirs(args.output_dir, exist_ok=True)
    written, kept, failed = [], [], []
    for index in world.share(len(names)):
        name = names[index]
        output_path = os.path.join(args.output_dir, name)
        if os.path.exists(output_path) and written_by_infer(output_path) and not args.overwrite:
            print(f"kept {output_path}: infer wrote it (--overwrite predicts it again)", flush=True)
            kept.append(name)
            continue
        input_path = os.path.join(args.input_dir, name)
        try:
            check_output(output_path, args.overwrite, "--output-dir")
            mr, image = read_mr(input_path)
            print(predict_scan(model, window, train_spacing, mr, image, input_path, output_path), flush=True)
            written.append(name)
        except (ValueError, OSError, errors.RunError, MemoryError) as error:
            message = str(error) if name in str(error) else f"{input_path}: {error}"
            print(f"error: {message} (skipped)", file=sys.stderr, flush=True)
            failed.append(name)
    results = world.collect((written, kept, failed), limit=None)
    written, kept, failed = (sorted(sum((result[part] for result in results), [])) for part in range(3))
    if world.is_root:
        ranks = f" on {world.size} ranks" if world.size > 1 else ""
        print(f"{len(written)} of {len(names)} scans predicted into {args.output_dir}{ranks}, {len(kept)} kept, "
              f"{len(failed)} skipped" + (f": {', '.join(failed)}" if failed else ""))
    return failed


def main(argv=None):
    args = parse_args(argv)
    world = distributed.world()
    if args.input_dir:
        with world.stop_all_on_error():
            nn3d.set_num_threads(args.threads or world.default_threads())
            failed = predict_folder(args, world)
        if failed:
            raise SystemExit(errors.USAGE_ERROR)      # the errors are printed; every rank exits alike
        return
    if world.size > 1:
        raise ValueError("--input is one scan, for one process; under mpiexec give --input-dir and --output-dir")
    if not args.output.endswith((".nii", ".nii.gz")):
        raise ValueError(f"--output {args.output}: give a .nii or .nii.gz file name")
    if same_file(args.input, args.output):
        raise ValueError(f"--output {args.output} is the input MR itself; choose another file name")
    check_output(args.output, args.overwrite)
    nn3d.set_num_threads(args.threads)
    mr, image = read_mr(args.input)
    model, state = model_from_checkpoint(args.checkpoint)
    window, train_spacing = training_frame(state, args.checkpoint)
    print(predict_scan(model, window, train_spacing, mr, image, args.input, args.output))


if __name__ == "__main__":
    errors.run(main)
