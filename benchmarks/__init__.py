"""Benchmarks: nn3d's kernels and training step, always side by side with PyTorch in the same run."""
