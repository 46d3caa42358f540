"""Max-pooling kernels on channels-last memory (N, D, H, W, C); the layer (nn3d/maxpool3d.py) derives them.

    maxpool3d_forward(x, KD, KH, KW, SD, SH, SW, y, argmax)       (F) and (A) of the derivation
    maxpool3d_backward(grad_output, argmax, KD, KH, KW, SD, SH, SW, grad_input)   (B)

argmax[n, od, oh, ow, c] is the window position a = (kd * KH + kh) * KW + kw of the maximum
(uint8: windows of at most 256 voxels). Ties go to the FIRST maximum in the scan order kd, kh, kw
(lexicographic), as PyTorch: a later value replaces the running maximum only if strictly greater.
A NaN replaces it too, so NaN propagates, as in PyTorch.

Each kernel has a plain NumPy reference with the same loop names; tests compare the pairs.
"""
import numpy as np
from numba import prange

from .jit import parallel_kernel


@parallel_kernel
def maxpool3d_forward(x, KD, KH, KW, SD, SH, SW, y, argmax):
    """x: (N, D, H, W, C); y: (N, OD, OH, OW, C) same dtype; argmax: (N, OD, OH, OW, C) uint8.

    Each prange iteration owns one (n, od) slab of y and argmax. The channel loop is innermost, so
    the comparisons run over contiguous memory.
    """
    N, OD, OH, OW, C = y.shape
    for job in prange(N * OD):
        n = job // OD
        od = job % OD
        for oh in range(OH):
            for ow in range(OW):
                d0 = od * SD
                h0 = oh * SH
                w0 = ow * SW
                for c in range(C):                       # window position a = 0 starts the scan
                    y[n, od, oh, ow, c] = x[n, d0, h0, w0, c]
                    argmax[n, od, oh, ow, c] = 0
                a = 0
                for kd in range(KD):
                    for kh in range(KH):
                        for kw in range(KW):
                            for c in range(C):
                                value = x[n, d0 + kd, h0 + kh, w0 + kw, c]
                                if value > y[n, od, oh, ow, c] or value != value:   # strict: first max wins
                                    y[n, od, oh, ow, c] = value
                                    argmax[n, od, oh, ow, c] = a
                            a += 1


def maxpool3d_forward_reference(x, KD, KH, KW, SD, SH, SW, y, argmax):
    N, OD, OH, OW, C = y.shape
    for n in range(N):
        for od in range(OD):
            for oh in range(OH):
                for ow in range(OW):
                    d0, h0, w0 = od * SD, oh * SH, ow * SW
                    window = x[n, d0:d0 + KD, h0:h0 + KH, w0:w0 + KW, :].reshape(KD * KH * KW, C)  # (a, C)
                    argmax[n, od, oh, ow, :] = np.argmax(window, axis=0)     # np.argmax: first maximum
                    y[n, od, oh, ow, :] = window.max(axis=0)


@parallel_kernel
def maxpool3d_backward(grad_output, argmax, KD, KH, KW, SD, SH, SW, grad_input):
    """grad_input (N, D, H, W, C), zero on entry, receives grad_output (N, OD, OH, OW, C) at each argmax.

    Windows overlap along d when SD < KD; output planes od and od + phases (phases = ceil(KD / SD))
    never do. So the od planes are visited in `phases` rounds; within a round each prange iteration
    owns one (n, od) window slab and no two iterations write the same element.
    """
    N, OD, OH, OW, C = grad_output.shape
    phases = (KD + SD - 1) // SD
    for phase in range(min(phases, OD)):
        planes = (OD - phase + phases - 1) // phases     # od = phase, phase + phases, ... < OD
        for job in prange(N * planes):
            n = job // planes
            od = phase + (job % planes) * phases
            for oh in range(OH):
                for ow in range(OW):
                    for c in range(C):
                        a = np.int64(argmax[n, od, oh, ow, c])
                        kd = a // (KH * KW)
                        kh = (a // KW) % KH
                        kw = a % KW
                        grad_input[n, od * SD + kd, oh * SH + kh, ow * SW + kw, c] += grad_output[n, od, oh, ow, c]


def maxpool3d_backward_reference(grad_output, argmax, KD, KH, KW, SD, SH, SW, grad_input):
    N, OD, OH, OW, C = grad_output.shape
    for n in range(N):
        for od in range(OD):
            for oh in range(OH):
                for ow in range(OW):
                    for c in range(C):
                        kd, kh, kw = np.unravel_index(argmax[n, od, oh, ow, c], (KD, KH, KW))
                        grad_input[n, od * SD + kd, oh * SH + kh, ow * SW + kw, c] += grad_output[n, od, oh, ow, c]
