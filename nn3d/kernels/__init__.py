"""Numba kernels: the hot loops, kept apart from the layer classes that hold parameters and state.

Every fast kernel has a slow, obvious NumPy reference with the same loop variable names, all of
them in one module, `reference.py` (read it first: it is the arithmetic without the optimisation);
the tests compare each pair. (One exception: Winograd's F(2^3, 3^3) keeps its reference,
`winograd_forward_reference`, at the top of `winograd.py`, beside the derivation it follows.)
`channel_sum.py` holds the one float64 reduction over voxels.
"""
