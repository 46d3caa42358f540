"""Plain NumPy references: every kernel's arithmetic, written the obvious way.

Read these first. The tests compare every fast kernel with its reference here, and the layer
docstrings point here. Arrays are channels-last, (N, D, H, W, C); the numbered lines are those of
the layer files (nn3d/conv3d.py, ...). Most references compute in float64 and return the input's
dtype.

    Conv3d           (1) forward, (2) grad-input (the scatter form), (4) grad-weight
    ConvTranspose3d  (1) forward, (3) grad-input, (4) grad-weight, any kernel / stride / padding,
                     written as the Conv3d references they equal (identity (A) of its layer file)
    BatchNorm3d      the whole layer in training mode, x -> y and dy -> dx, dgamma, dbeta, from the
                     formulas alone; then the kernels' two steps: (F) the affine map and (B3) the
                     input gradient from precomputed per-channel numbers, each with the fused ReLU (R)
    MaxPool3d        (F), (A) forward with argmax, (B) backward
    ReLU             (F) forward, (B) backward
    channel_sums     every float64 sum over voxels (BatchNorm (S1), (S2), (B1), (B2); conv bias
                     gradients (5); MSELoss (F))
    padding          a strided, offset copy into zeros (every convolution's zero-haloed input)
    Winograd         its references sit with its derivation: nn3d/kernels/winograd/algorithm.py
                     (forward, filter transform) and winograd/grad_weight.py (grad-weight)

Names. The references and the kernels share the names of arrays (x_pad, weight, grad_output,
grad_input, argmax, ...) and of indices (n; (od, oh, ow) an output voxel; (kz, ky, kx) a kernel or
window offset; ci, co, c channels; p a voxel of a flat (P, C) array). Their loops are the same for
BatchNorm3d, ReLU and channel_sums (one element, or one row p, at a time; the references write the
row loop as a NumPy expression over all rows) and for MaxPool3d (the same scan of each window,
ties to the first maximum; the kernels put the channel loop inside the window loop). For the
convolutions they differ, as follows:
- Conv3d forward (1) and grad-weight (4): the references loop over the kernel offsets (kz, ky, kx)
  and do one matrix product over all voxels per offset. The kernels (conv3d.py,
  conv3d_grad_weight.py) loop over output rows (n, od, oh) and blocks cb of 16 output channels,
  fuse kx and ci into one index j = kx*Cin + ci (for a fixed (kz, ky) the kW*Cin input values of
  one output voxel are one contiguous run), read the weight packed to match (w_packed[kz, ky, cb,
  j, c] = weight[16*cb + c, ci, kz, ky, kx], weight_packing.py), and keep a register tile of
  BLOCK_W voxels (forward) or BLOCK_J positions j (grad-weight) x 16 output channels.
- Conv3d grad-input: the reference computes the scatter (2); the kernels compute the gather (3),
  the forward kernel applied to the spread output gradient S with the flipped, in/out-swapped
  weight. nn3d/conv3d.py derives (3) from (2); the tests check that the two agree.
- ConvTranspose3d: the kernels handle kernel == stride, padding 0 only (the U-Net's), as one
  product per input voxel written into (or read from) its own block (conv_transpose3d.py); the
  references are the general Conv3d sums above. Any other kernel, stride or padding runs the Conv3d
  kernels with the transposed convolution's arguments (`python -m nn3d.kernels.check
  conv_transpose3d` checks both).
"""
import numpy as np

from ..core.shapes import transposed_output_size, window_output_size


# ---- Conv3d (nn3d/conv3d.py; fast kernels in conv3d.py) -------------------------------------------
def window(kz, ky, kx, stride, out_size):
    """Index of the padded-input voxels that kernel offset (kz, ky, kx) meets, one per output voxel:
    x_pad[window(...)][n, od, oh, ow, ci] = x_pad[n, od*sd + kz, oh*sh + ky, ow*sw + kx, ci]."""
    offsets = (kz, ky, kx)
    return (slice(None), *(slice(k, k + s * (o - 1) + 1, s) for k, s, o in zip(offsets, stride, out_size)),
            slice(None))


def conv3d_forward_reference(x_pad, weight, bias, stride):
    """Line (1), plainly: one matrix product per kernel offset (kz, ky, kx)."""
    cout, cin, kernel_d, kernel_h, kernel_w = weight.shape
    out_size = window_output_size(x_pad.shape[1:4], weight.shape[2:], stride)
    y = np.zeros((x_pad.shape[0], *out_size, cout), dtype=np.float64)         # (N, Do, Ho, Wo, Cout)
    for kz in range(kernel_d):
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                x_window = x_pad[window(kz, ky, kx, stride, out_size)]       # (N, Do, Ho, Wo, Cin)
                y += x_window @ weight[:, :, kz, ky, kx].T.astype(np.float64)    # (Cin, Cout)
    if bias is not None:
        y += bias
    return y.astype(x_pad.dtype)


def conv3d_grad_input_reference(grad_output, weight, input_size, stride, padding):
    """Line (2), plainly, the scatter: each output voxel sends grad_output @ weight back to the
    k^3 input voxels it read; the padding is cut off at the end."""
    cout, cin, kernel_d, kernel_h, kernel_w = weight.shape
    n_batch, *out_size, _ = grad_output.shape
    padded = [size + 2 * pad for size, pad in zip(input_size, padding)]
    grad_x_pad = np.zeros((n_batch, *padded, cin), dtype=np.float64)        # (N, D+2pd, H+2ph, W+2pw, Cin)
    for kz in range(kernel_d):
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                grad_x_pad[window(kz, ky, kx, stride, out_size)] += (
                    grad_output @ weight[:, :, kz, ky, kx].astype(np.float64))  # (Cout, Cin)
    pd, ph, pw = padding
    d, h, w = input_size
    return grad_x_pad[:, pd:pd + d, ph:ph + h, pw:pw + w, :].astype(grad_output.dtype)


def conv3d_grad_weight_reference(x_pad, grad_output, kernel_size, stride):
    """Line (4), plainly: for each kernel offset, (input window)^T @ grad_output over all voxels."""
    n_batch, *out_size, cout = grad_output.shape
    cin = x_pad.shape[4]
    kernel_d, kernel_h, kernel_w = kernel_size
    grad_weight = np.zeros((cout, cin, kernel_d, kernel_h, kernel_w), dtype=np.float64)
    g_flat = grad_output.reshape(-1, cout).astype(np.float64)                 # (N*Do*Ho*Wo, Cout)
    for kz in range(kernel_d):
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                x_window = x_pad[window(kz, ky, kx, stride, out_size)]       # (N, Do, Ho, Wo, Cin)
                grad_weight[:, :, kz, ky, kx] = g_flat.T @ x_window.reshape(-1, cin)
    return grad_weight.astype(x_pad.dtype)


# ---- ConvTranspose3d (nn3d/conv_transpose3d.py; fast kernels in conv_transpose3d.py) --------------
def conv_transpose3d_forward_reference(x, weight, bias, stride, padding):
    """Line (1), through identity (2) of nn3d/conv_transpose3d.py: y = A^T x + b, where A^T is the
    input gradient (2) of the Conv3d that maps y's shape back to x's (weight read as (Cout_conv = Cin,
    Cin_conv = Cout)): every input voxel scatters x @ weight[:, :, kz, ky, kx] into the output."""
    out_size = transposed_output_size(x.shape[1:4], weight.shape[2:], stride, padding)
    y = conv3d_grad_input_reference(x, weight, out_size, stride, padding).astype(np.float64)
    if bias is not None:
        y += bias
    return y.astype(x.dtype)


def conv_transpose3d_grad_full(grad_output, padding):
    """grad_output (N, Do, Ho, Wo, Cout) zero-padded by `padding` back to the size of y_full."""
    pd, ph, pw = padding
    return np.pad(grad_output, ((0, 0), (pd, pd), (ph, ph), (pw, pw), (0, 0)))


def conv_transpose3d_grad_input_reference(grad_output, weight, stride, padding):
    """Line (3): dL/dx = A dy, Conv3d's forward (1) of dy_full by the same weight, no bias: every input
    voxel gathers grad_full @ weight[:, :, kz, ky, kx]^T from the output voxels it was added into."""
    return conv3d_forward_reference(conv_transpose3d_grad_full(grad_output, padding), weight, None, stride)


def conv_transpose3d_grad_weight_reference(x, grad_output, kernel_size, stride, padding):
    """Line (4): Conv3d's grad-weight (4) with dy_full as its input and x as its output gradient:
    for each kernel offset, x^T @ (the output-gradient voxels it was added into)."""
    grad_full = conv_transpose3d_grad_full(grad_output, padding)
    return conv3d_grad_weight_reference(grad_full, x, kernel_size, stride).astype(x.dtype)


# ---- zero-haloed buffers (fast kernels in padding.py) ---------------------------------------------
def embed_strided_reference(x, stride, offset, length):
    """x (N, D, H, W, C) placed into zeros (N, *length, C), one voxel at a time: voxel (o_d, o_h, o_w)
    goes to (o_d*s_d + offset_d, ...) where that lies inside `length`, and is dropped where it does
    not. Zero padding by p is the case stride 1, offset p, length D + 2p."""
    out = np.zeros((x.shape[0], *length, x.shape[4]), x.dtype)
    for voxel in np.ndindex(*x.shape[1:4]):
        target = tuple(o * s + f for o, s, f in zip(voxel, stride, offset))
        if all(0 <= t < size for t, size in zip(target, length)):
            out[(slice(None), *target)] = x[(slice(None), *voxel)]
    return out


# ---- BatchNorm3d (nn3d/batchnorm3d.py; fast kernels in batchnorm3d.py) ----------------------------
def batchnorm3d_reference(x, gamma, beta, grad_output, eps=1e-5, relu=False):
    """The whole layer in training mode, from its formulas alone: x -> y, then grad_output ->
    (grad_input, grad_gamma, grad_beta), in float64. x, grad_output: (P, C), the M = P voxels of
    each channel in a column; gamma, beta: (C,). The layer computes the same from channel_sums and
    the two kernels below."""
    x, dy = x.astype(np.float64), grad_output.astype(np.float64)            # (P, C)
    mean = x.mean(axis=0)                                                   # (S1) (C,)
    var = ((x - mean) ** 2).mean(axis=0)                                    # (S2) biased (C,)
    inv_std = 1 / np.sqrt(var + eps)                                        # (C,)
    x_hat = (x - mean) * inv_std                                            # (P, C)
    y = gamma * x_hat + beta                                                # (F) (P, C)
    if relu:
        y = np.maximum(y, 0)                                                # (R)
        dy = np.where(y > 0, dy, 0)                                         # ReLU's backward first
    grad_beta = dy.sum(axis=0)                                              # (B1) (C,)
    grad_gamma = (dy * x_hat).sum(axis=0)                                   # (B2) (C,)
    grad_input = gamma * inv_std * (dy - dy.mean(axis=0) - x_hat * (dy * x_hat).mean(axis=0))   # (B3)
    return y, grad_input, grad_gamma, grad_beta


def batchnorm_affine_reference(x, scale, shift, relu, y):
    """(F): y[p, c] = x[p, c] * scale[c] + shift[c]; with relu, (R): y = max(0, that)."""
    y[...] = x * scale + shift
    if relu:
        relu_forward_reference(y, y)


def batchnorm_backward_input_reference(x, grad_output, output, relu, mean, scale, mean_dy, x_hat_coefficient,
                                       grad_input):
    """(B3): grad_input[p, c] = scale[c] (dy[p, c] - mean_dy[c] - (x[p, c] - mean[c]) x_hat_coefficient[c]),
    dy = grad_output, or with relu (R) dy = grad_output [output > 0] (ReLU's backward first)."""
    dy = np.empty_like(grad_output)
    if relu:
        relu_backward_reference(output, grad_output, dy)
    else:
        dy[...] = grad_output
    grad_input[...] = scale * (dy - mean_dy - (x - mean) * x_hat_coefficient)


# ---- MaxPool3d (nn3d/maxpool3d.py; fast kernels in maxpool3d.py) ----------------------------------
def maxpool3d_forward_reference(x, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w, y, argmax):
    n_batch, out_d, out_h, out_w, channels = y.shape
    for n in range(n_batch):
        for od in range(out_d):
            for oh in range(out_h):
                for ow in range(out_w):
                    d0, h0, w0 = od * stride_d, oh * stride_h, ow * stride_w
                    window = x[n, d0:d0 + kernel_d, h0:h0 + kernel_h, w0:w0 + kernel_w, :]
                    window = window.reshape(kernel_d * kernel_h * kernel_w, channels)   # (a, C)
                    argmax[n, od, oh, ow, :] = np.argmax(window, axis=0)     # np.argmax: first maximum
                    y[n, od, oh, ow, :] = window.max(axis=0)


def maxpool3d_backward_reference(grad_output, argmax, kernel_d, kernel_h, kernel_w, stride_d, stride_h,
                                 stride_w, grad_input):
    n_batch, out_d, out_h, out_w, channels = grad_output.shape
    for n in range(n_batch):
        for od in range(out_d):
            for oh in range(out_h):
                for ow in range(out_w):
                    for c in range(channels):
                        kz, ky, kx = np.unravel_index(argmax[n, od, oh, ow, c],
                                                      (kernel_d, kernel_h, kernel_w))
                        grad_input[n, od * stride_d + kz, oh * stride_h + ky, ow * stride_w + kx, c] += (
                            grad_output[n, od, oh, ow, c])


# ---- ReLU (nn3d/relu.py; fast kernels in relu.py) -------------------------------------------------
def relu_forward_reference(x, y):
    y[...] = np.where(x <= 0, 0, x)


def relu_backward_reference(y, grad_output, grad_input):
    grad_input[...] = np.where(y > 0, grad_output, 0)


# ---- float64 sums over voxels (fast kernel in channel_sum.py) -------------------------------------
def channel_sums_reference(a, b=None, shift=None, mask=None):
    """sum_p a[p, c], and with b also sum_p a[p, c] (b[p, c] - shift[c]), in float64, over the p with
    mask[p, c] > 0 when a mask is given. a, b, mask: (P, C)."""
    a = a.astype(np.float64)                                       # (P, C)
    if mask is not None:
        a = np.where(mask > 0, a, 0.0)
    if b is None:
        return a.sum(axis=0)
    shift = 0.0 if shift is None else shift
    return a.sum(axis=0), (a * (b.astype(np.float64) - shift)).sum(axis=0)
