"""Every fast kernel against its plain reference, from the command line: what `nn3d.gradcheck` is for
a layer's backward pass, this is for the kernels under it.

    python -m nn3d.kernels.check                        # every kernel (the first run compiles them)
    python -m nn3d.kernels.check winograd relu_backward # kernels by name, or a family of them
    python -m nn3d.kernels.check --list                 # names; where each kernel and reference live

Each kernel runs through the public function the layers call, on small odd shapes (non-cubic, odd
sizes, batch 2, C = 1 where it means something, channel counts that are not multiples of 16), in
float32 and float64, and the convolutions at every register-tile width (`tile_widths`: 8 and 4;
Winograd's products `PRODUCT_WIDTHS`: 8, 6 and 4 rows; the width is an argument of the kernels, so
every one runs on any CPU). The transposed convolution runs both of its layer's paths: the
kernel == stride block kernels, and the general path (any kernel, stride and padding) through the
direct convolution's functions, called with the transposed convolution's arguments as the layer
calls them. Its reference runs in float64 on the same values (float32 inputs widened exactly), so
the error shown is the kernel's own, against exact arithmetic: max |kernel - reference| and that
over max |reference| (gradcheck's measure).
Exit status: 0 when every row passes, 1 when one fails, 2 for a name that is not a kernel.

The references: nn3d/kernels/reference.py (direct and transposed convolution, the pointwise head as
a 1x1x1 convolution, BatchNorm, ReLU, max-pool, channel sums, the zero-haloed buffers of
padding.py); nn3d/kernels/winograd/algorithm.py (Winograd's forward and its filter transforms) and
algorithm4.py (F(4^3, 3^3)'s);
winograd_grad_weight_reference in nn3d/kernels/winograd/grad_weight.py. Winograd's grad-input has
no reference of its own: it is checked against the direct conv3d_grad_input_reference, the
convolution it must equal.

Tolerances, on the relative error (`tolerance`):
- float64: 1e-12. A sum of L terms rounds to ~1.1e-16 * sqrt(L) of its scale (measured here: at
  most 4e-15); a wrong index or a missing term is off by 1e-2 or more (no grey zone, as in gradcheck).
- float32: 10 * eps * sqrt(L), eps = 2^-23 and L the length of the float32 sums behind each output
  (Cin * k^3 for a forward pass, the voxels for a grad-weight; 1 where the kernel sums in float64
  and rounds once). The rounding errors of L additions add up like a random walk, ~eps * sqrt(L)
  at most relative to the output's scale; 10x covers the maximum over all outputs and Winograd's
  transforms, whose intermediate values exceed the outputs (measured: 1/100 to 1/15 of it). The
  largest here is 3e-5 (L = 660), still 300x below a missing term.
- exact (tolerance 0): kernels that only select or move values (ReLU, max-pool's maximum and
  argmax, the tiled max-pool backward, the flipped filter transform's gather, padding).

The files: registry.py (what a check is: `checks`, `KERNELS`, `tolerance`, the tile widths),
runner.py (running them, the table, `main`), and one module of cases per kernel family.
"""
# importing a module of cases registers its checks in KERNELS, in this order (the table's and --list's)
from . import (convolution_cases, winograd_cases, winograd4_cases, conv_transpose3d_cases,  # noqa: F401
               batchnorm_relu_cases, maxpool3d_cases, channel_sum_cases, padding_cases)
from .registry import KERNELS, PRODUCT_WIDTHS, tile_widths, tolerance  # noqa: F401
from .runner import main, row_name, rows_of  # noqa: F401
