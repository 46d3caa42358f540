"""BatchNorm3d: per-channel normalisation with batch statistics, then a learned affine map.

Source: Ioffe & Szegedy (2015), "Batch Normalization"; running statistics as documented for
torch.nn.BatchNorm3d (biased variance to normalise, unbiased variance in running_var, momentum
weighting the new value).

Notation: x (N, C, D, H, W); for channel c the M = N*D*H*W voxels are indexed by p = (n, d, h, w).

Forward, training mode
    mu_c      = 1/M sum_p x_pc                                                     (S1)  (C,)
    sigma2_c  = 1/M sum_p x_pc^2 - mu_c^2          (biased variance)               (S2)  (C,)
    inv_std_c = 1 / sqrt(sigma2_c + eps)                                                 (C,)
    x_hat_pc  = (x_pc - mu_c) inv_std_c                                                  (N, C, D, H, W)
    y_pc      = gamma_c x_hat_pc + beta_c  =  x_pc scale_c + shift_c                (F)   (N, C, D, H, W)
                with scale_c = gamma_c inv_std_c, shift_c = beta_c - mu_c scale_c
    running_mean_c <- (1 - momentum) running_mean_c + momentum mu_c
    running_var_c  <- (1 - momentum) running_var_c  + momentum sigma2_c M / (M - 1)   (unbiased)
    num_batches_tracked <- num_batches_tracked + 1
(S1) and (S2) are summed in float64: x^2 of a float32 is exact in float64, and the subtraction in
(S2) loses about log10(mu^2 / sigma2) of float64's 16 digits, harmless for activations.

Forward, eval mode: (F) with mu = running_mean, sigma2 = running_var; nothing is updated.

Backward. With dy_pc = dL/dy_pc:
    dL/dbeta_c  = sum_p dy_pc                                                      (B1)  (C,)
    dL/dgamma_c = sum_p dy_pc x_hat_pc = inv_std_c sum_p dy_pc (x_pc - mu_c)       (B2)  (C,)
Input gradient, training mode. x_qc reaches L through x_hat_pc for every p, because mu_c and
sigma2_c depend on all of channel c:
    d mu_c / d x_qc     = 1/M
    d sigma2_c / d x_qc = 2 (x_qc - mu_c) / M           (the mu-term drops: sum_p (x_pc - mu_c) = 0)
    d x_hat_pc / d x_qc = inv_std_c (delta_pq - 1/M) - 1/2 (x_pc - mu_c) inv_std_c^3 d sigma2_c / d x_qc
                        = inv_std_c (delta_pq - 1/M - x_hat_pc x_hat_qc / M)
    dL/dx_qc = sum_p gamma_c dy_pc d x_hat_pc / d x_qc
             = gamma_c inv_std_c ( dy_qc  -  1/M sum_p dy_pc  -  x_hat_qc 1/M sum_p dy_pc x_hat_pc )   (B3)
               the three terms: direct path, path through mu, path through sigma2.
In the kernel, x_hat is not stored: x_hat_qc (1/M) sum_p dy_pc x_hat_pc = (x_qc - mu_c) x_hat_coefficient_c
with x_hat_coefficient_c = inv_std_c (1/M) sum_p dy_pc x_hat_pc, i.e. (B2)'s sum reused.
Input gradient, eval mode: mu and sigma2 are constants, so only the direct path remains,
    dL/dx_qc = gamma_c inv_std_c dy_qc                                             (B3-eval)
the same kernel with the two mean terms set to zero.

Fused ReLU, BatchNorm3d(C, relu=True): the layer's output is r = max(0, y), as BatchNorm3d followed
by ReLU (the U-Net's blocks), in one pass over memory each way instead of two:
    r_pc = max(0, y_pc)                                                            (R)   (N, C, D, H, W)
    dL/dy_pc = dL/dr_pc [r_pc > 0]        (ReLU's backward, nn3d/relu.py: r > 0 exactly when y > 0)
and (B1)-(B3) with dy = dL/dy. The mask needs r, which the next layer keeps anyway, and x, which
BatchNorm keeps: the cache grows by a reference, not an array. The masked sums are channel_sums(...,
mask=r); the kernels take the flag and apply it per element.

Reference: batchnorm3d_reference in nn3d/kernels/reference.py is this whole layer in training mode
in fifteen lines of NumPy, x -> y and dy -> dx, dgamma, dbeta straight from (S1)-(B3): read it first.
batchnorm_affine_reference, batchnorm_backward_input_reference and channel_sums_reference there
compute the kernels' steps, (F), (B3) from precomputed per-channel numbers and the sums (S1), (S2),
(B1), (B2).

Memory: activations are channels-last, so an (N, C, D, H, W) view is a flat (P, C) array with
P = N*D*H*W; the kernels (nn3d/kernels/batchnorm3d.py) work on that. Backward saves the input x and
the per-channel mu, inv_std (x_hat is recomputed: one multiply, cheaper than storing it).
"""
from typing import NamedTuple

import numpy as np

from .core import arena
from .checks import check_forward_ran, check_grad_output, check_volume
from .grad_mode import is_grad_enabled
from .kernels.batchnorm3d import batchnorm_affine, batchnorm_backward_input
from .kernels.channel_sum import channel_sums
from .layout import from_channels_last, to_channels_last
from .module import Module, Parameter


class BatchNormCache(NamedTuple):
    """What forward keeps for backward (x_hat is recomputed from these)."""
    x_flat: np.ndarray        # (P, C) the input, channels-last, flat
    output_flat: np.ndarray   # (P, C) the output r with relu (its gradient mask), else None
    mean: np.ndarray          # (C,) float64 mu (batch statistics, or running_mean in eval)
    inv_std: np.ndarray       # (C,) float64 1 / sqrt(sigma2 + eps)
    training: bool            # which input gradient: (B3) or (B3-eval)
    input_shape: tuple        # (N, C, D, H, W)


class BatchNorm3d(Module):
    """BatchNorm3d(num_features, eps=1e-5, momentum=0.1, relu=False), as torch.nn.BatchNorm3d with
    affine=True; relu=True: followed by a ReLU, fused ((R) above; torch: BatchNorm3d then ReLU).

    Parameters: weight (gamma, ones), bias (beta, zeros), both (C,). Buffers: running_mean (zeros),
    running_var (ones), num_batches_tracked (int64, 0-d). The same state_dict with or without relu.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, relu=False):
        super().__init__()
        if not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"BatchNorm3d: num_features must be a positive integer, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm3d: momentum must be in [0, 1], got {momentum}")
        if eps <= 0:
            raise ValueError(f"BatchNorm3d: eps must be positive, got {eps}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.relu = bool(relu)
        self.weight = Parameter(np.ones(num_features, np.float32))        # gamma (C,)
        self.bias = Parameter(np.zeros(num_features, np.float32))         # beta  (C,)
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))   # (C,)
        self.register_buffer("running_var", np.ones(num_features, np.float32))     # (C,)
        self.register_buffer("num_batches_tracked", np.array(0, np.int64))         # ()
        self._cache = None

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}" + (", relu=True" if self.relu else "")

    def forward(self, x):
        dtype = self.weight.data.dtype
        check_volume(x, "BatchNorm3d", channels=self.num_features, dtype=dtype)
        x_cl = to_channels_last(x)                                   # (N, D, H, W, C)
        x_flat = x_cl.reshape(-1, self.num_features)                 # (P, C)
        count = x_flat.shape[0]                                      # M = N*D*H*W
        if self.training:
            if count < 2:
                raise ValueError(f"BatchNorm3d: training needs more than 1 value per channel to compute a "
                                 f"variance, got input shape {x.shape}")
            total, total_sq = channel_sums(x_flat, x_flat)           # (C,) float64 each: sum x, sum x^2
            mean = total / count                                     # (S1)
            var = np.maximum(total_sq / count - mean * mean, 0.0)    # (S2) biased
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean + m * mean
            self.running_var[...] = (1 - m) * self.running_var + m * var * (count / (count - 1))
            self.num_batches_tracked[...] += 1
        else:
            mean = self.running_mean.astype(np.float64)              # (C,)
            var = self.running_var.astype(np.float64)                # (C,)
        inv_std = 1.0 / np.sqrt(var + self.eps)                      # (C,) float64
        scale = self.weight.data * inv_std                           # (C,) gamma inv_std
        shift = self.bias.data - mean * scale                        # (C,) beta - mu scale
        y_flat = arena.empty_like(x_flat)                             # (P, C)
        batchnorm_affine(x_flat, scale.astype(dtype), shift.astype(dtype), self.relu, y_flat)   # (F), (R)
        self._cache = (BatchNormCache(x_flat, y_flat if self.relu else None, mean, inv_std, self.training,
                                      x.shape) if is_grad_enabled() else None)
        return from_channels_last(y_flat.reshape(x_cl.shape))       # (N, C, D, H, W) view

    # forward:  y_pc = gamma_c (x_pc - mu_c) inv_std_c + beta_c; with relu r_pc = max(0, y_pc)
    # backward: with relu dy = dr [r > 0] (R); dbeta = sum_p dy (B1); dgamma = sum_p dy x_hat (B2);
    #           dx = gamma inv_std (dy - mean_p dy - x_hat mean_p(dy x_hat)) (B3), or gamma inv_std dy in eval.
    def backward(self, grad_output):
        check_forward_ran(self._cache, "BatchNorm3d")
        x_flat, output_flat, mean, inv_std, training, input_shape = self._cache
        dtype = x_flat.dtype
        check_grad_output(grad_output, input_shape, dtype, "BatchNorm3d")
        self._cache = None                                           # consumed: x is freed after this pass
        grad_output_flat = to_channels_last(grad_output).reshape(x_flat.shape)     # (P, C)
        count = x_flat.shape[0]                                      # M
        sum_dy, sum_dy_xmu = channel_sums(grad_output_flat, x_flat, mean, output_flat)   # (C,) float64 each
                                                                     # (with relu: dy [r > 0], (R))
        grad_bias = sum_dy                                           # (B1) (C,)
        grad_weight = sum_dy_xmu * inv_std                           # (B2) (C,) sum_p dy x_hat
        scale = self.weight.data * inv_std                           # (C,) gamma inv_std
        if training:
            mean_dy = sum_dy / count                                 # (C,) 1/M sum_p dy
            mean_dy_x_hat = grad_weight / count                      # (C,) 1/M sum_p dy x_hat
            x_hat_coefficient = mean_dy_x_hat * inv_std              # (C,) x_hat mean(dy x_hat) = (x - mu) this
        else:
            mean_dy = np.zeros_like(sum_dy)                          # (B3-eval): no path through mu
            x_hat_coefficient = np.zeros_like(sum_dy)                # nor through sigma2
        grad_input = arena.empty_like(x_flat)                         # (P, C)
        mask = output_flat if self.relu else grad_output_flat       # (P, C) read only with relu
        batchnorm_backward_input(x_flat, grad_output_flat, mask, self.relu, mean.astype(dtype),
                                 scale.astype(dtype), mean_dy.astype(dtype), x_hat_coefficient.astype(dtype),
                                 grad_input)                         # (R), (B3)
        self.weight.grad += grad_weight.astype(dtype)
        self.bias.grad += grad_bias.astype(dtype)
        n_batch, channels, d, h, w = input_shape
        return from_channels_last(grad_input.reshape(n_batch, d, h, w, channels))   # (N, C, D, H, W) view
