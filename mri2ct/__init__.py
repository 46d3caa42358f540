"""mri2ct: synthesise CT from T1 MRI with a 3-D U-Net built on nn3d."""
