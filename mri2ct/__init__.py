"""mri2ct: synthesise CT from T1 MRI with a 3-D U-Net built on nn3d.

The commands on top, one module per `python -m mri2ct.X`, each parsing its flags and calling the
library below:

    data (data/__main__.py)   write the synthetic cohort, its statistics and figures
    train                     train the U-Net, writing checkpoints into a run folder
    evaluate                  score a checkpoint on a split: MAE, RMSE, PSNR, SSIM
    infer                     synthetic CT for any T1 scan, or a folder of them
    inspect                   activations and gradients of one training step
    visualize                 slices of MR, CT, synthetic CT and the error
    export                    the trained U-Net as an ONNX file, for ONNX Runtime, OpenVINO, ...

model.py is the U-Net. The library, by pipeline stage, in the order data flows:

    data/        a patient from the phantom or a folder of scans: NIfTI, RAS axes, resampling,
                 normalisation, the seeded plan of each step's samples
    training/    the step, the epoch loop and validation, checkpoints and the run folder
    inference/   sliding-window prediction of a whole scan, and the metrics that score it
    common/      what every stage shares: one-line errors, shared flags, atomic writes,
                 MPI ranks, radiological drawing

Dependencies point down only: the commands import the library; training imports model.py, inference,
data and common; inference imports data and common; data imports common; common imports none of them.
"""

__version__ = "0.1.0"   # the project's version: pyproject.toml reads it from here
