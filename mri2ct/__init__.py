"""mri2ct: synthesise CT from T1 MRI with a 3-D U-Net built on nn3d."""

__version__ = "0.1.0"   # the project's version: pyproject.toml reads it from here
