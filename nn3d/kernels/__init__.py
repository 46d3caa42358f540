"""Numba kernels: the hot loops, kept apart from the layer classes that hold parameters and state.

Each kernel module pairs a fast kernel with a slow, obvious NumPy reference that uses the same loop
variable names; the tests compare the two.
"""
