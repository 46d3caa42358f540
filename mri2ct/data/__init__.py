"""The data pipeline, in the order data flows through it:

    phantom.py                 a synthetic patient: paired T1 MR and CT, tissue labels, mask
    cohort.py                  synthetic patients written to disk (the cohort, or a paired folder)
    nifti.py                   one volume read (header checked first) or written, atomically
    folders.py                 a folder of paired scans read back: cohort or SynthRAD-style, .nii/.mha
    orientation.py             a volume's axes put in RAS order and back, without interpolation
    preprocess.py              RAS axes, resampled to the training spacing, CT clipped, mask; cached
    normalise.py               what the network sees: MR / white-matter peak, CT / 1000
    dataset.py                 the patients of a split and the seeded plan of each step's (patch) batch
    stats.py, figures.py       tissue statistics and figures of the phantom
    streams.py                 the independent random streams all of the above draw from

`python -m mri2ct.data` (__main__.py) writes a cohort (--out), reports its statistics (--stats) or
draws the documentation figures (--figure, --figure-normalisation).
"""
from mri2ct.data.cohort import VOLUME_FILES, generate_cohort, patient_id, split_patients
from mri2ct.data.dataset import PatientSet, Sample, apply_flips, open_split
from mri2ct.data.folders import (MANIFEST, choose_split, native_spacing, open_data_folder, read_manifest,
                                 read_scan)
from mri2ct.data.normalise import hu_to_net, net_to_hu, normalise_mr
from mri2ct.data.preprocess import PatientVolumes, compute_mask, default_cache_dir, load_patient

__all__ = ["MANIFEST", "VOLUME_FILES", "PatientSet", "PatientVolumes", "Sample", "apply_flips",
           "choose_split", "compute_mask", "default_cache_dir", "generate_cohort", "hu_to_net",
           "load_patient", "native_spacing", "net_to_hu", "normalise_mr", "open_data_folder", "open_split", "patient_id",
           "read_manifest", "read_scan", "split_patients"]
