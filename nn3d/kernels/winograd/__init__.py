"""3x3x3 convolutions by Winograd's minimal filtering F(2^3, 3^3), in the order to read them:

    algorithm.py         the derivation, the matrices B^T, G, A^T, the notation, plain references
    filter_transform.py  U from the weights, packed; grad-input's U from the forward's
    tile_transforms.py   input, output and output-gradient transforms of a block of tiles
    products.py          the matrix products of a block (64 positions here, 216 for F(4^3, 3^3))
    convolution.py       forward and grad-input: the block kernel, the blocking rule, the bands
    grad_weight.py       grad-weight by the transposed algorithm

and F(4^3, 3^3), the forward and grad-input (nn3d/kernels/conv_algorithm.py), in the same order:

    algorithm4.py         F(4, 3)'s derivation, matrices B4^T, G4, A4^T, its notation, plain references
    filter_transform4.py  its U from the weights, packed
    tile_transforms4.py   input and output transforms of a block of 6x6x6 / 4x4x4 tiles
    convolution4.py       the forward: the block kernel (products.py's products over 216 positions)
"""
