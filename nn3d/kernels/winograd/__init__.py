"""3x3x3 convolutions by Winograd's minimal filtering F(2^3, 3^3), in the order to read them:

    algorithm.py         the derivation, the matrices B^T, G, A^T, the notation, plain references
    filter_transform.py  U from the weights, packed; grad-input's U from the forward's
    tile_transforms.py   input, output and output-gradient transforms of a block of tiles
    products.py          the 64 matrix products of a block
    convolution.py       forward and grad-input: the block kernel, the blocking rule, the bands
    grad_weight.py       grad-weight by the transposed algorithm
"""
