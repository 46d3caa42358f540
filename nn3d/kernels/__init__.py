"""Numba kernels: the hot loops, kept apart from the layer classes that hold parameters and state.

Every fast kernel has a slow, obvious NumPy reference with the same loop variable names, all of
them in one module, `reference.py` (read it first: it is the arithmetic without the optimisation);
the tests compare each pair. `channel_sum.py` holds the one float64 reduction over voxels.
"""
