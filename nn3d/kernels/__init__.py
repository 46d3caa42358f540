"""Numba kernels: the hot loops, kept apart from the layer classes that hold parameters and state.

Every fast kernel has a slow, obvious NumPy reference with the same loop variable names, all of
them in one module, `reference.py` (read it first: it is the arithmetic without the optimisation);
the tests compare each pair. (One exception: Winograd's F(2^3, 3^3) keeps its references in
`winograd/algorithm.py`, beside the derivation they follow.) `register_tile.py` is the vocabulary
every convolution kernel shares (channel blocks, tile widths, the 16-lane helpers);
`channel_sum.py` holds the one float64 reduction over voxels.
"""
