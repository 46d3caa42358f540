"""The worked example of docs/backprop.md: one 4^3 volume through Conv3d -> BatchNorm3d -> ReLU -> MSE.

    python docs/worked_example.py

Every number is float64 and comes from small integers and one-decimal weights, so a reader can redo
any of them by hand or in another library. docs/backprop.md quotes this output; tests/test_docs.py
checks that the quotes still match.

    x  (1, 1, 4, 4, 4)  --Conv3d(1, 1, 3, padding=1)-->  c  (1, 1, 4, 4, 4)
       --BatchNorm3d(1)-->  z  --ReLU-->  r  --MSE against t-->  L  (a number)
"""
import numpy as np

import nn3d

SEED = 0
SHAPE = (1, 1, 4, 4, 4)   # N, C, D, H, W
EPS = 1e-6                # finite-difference step (float64)


def show(title, volume_slice):
    """Print a 2-D slice, one row per line, 4 decimals."""
    print(title)
    for row in np.atleast_2d(volume_slice):
        print("   " + " ".join(f"{np.round(value, 4) + 0.0:8.4f}" for value in row))   # + 0.0: no "-0.0000"


def build():
    """The inputs, the target and the three layers, all float64, with the seeded values."""
    rng = np.random.default_rng(SEED)
    x = rng.integers(-2, 3, size=SHAPE).astype(np.float64)                  # (1, 1, 4, 4, 4) in {-2..2}
    target = rng.integers(0, 3, size=SHAPE).astype(np.float64) / 2          # (1, 1, 4, 4, 4) in {0, .5, 1}
    conv = nn3d.Conv3d(1, 1, kernel_size=3, padding=1).to(np.float64)
    conv.weight.data[...] = rng.integers(-5, 6, size=(1, 1, 3, 3, 3)) / 10  # (1, 1, 3, 3, 3) in {-.5..+.5}
    conv.bias.data[...] = 0.5                                               # (1,)
    bn = nn3d.BatchNorm3d(1).to(np.float64)                                 # gamma = 1, beta = 0
    return x, target, conv, bn, nn3d.ReLU(), nn3d.MSELoss()


def loss_of(x, target, conv, bn, relu, mse):
    """Forward only, training mode: L as a float (BN's running statistics move; L does not use them)."""
    return mse.forward(relu.forward(bn.forward(conv.forward(x))), target)


def central_difference(array, index, loss):
    """(L(a + eps) - L(a - eps)) / (2 eps) for the one entry array[index], restored afterwards."""
    original = array[index]
    array[index] = original + EPS
    loss_plus = loss()
    array[index] = original - EPS
    loss_minus = loss()
    array[index] = original
    return (loss_plus - loss_minus) / (2 * EPS)


def main():
    x, target, conv, bn, relu, mse = build()
    w = conv.weight.data                                                    # (1, 1, 3, 3, 3)

    print("== 1. input and weights ==")
    show("x[0, 0, 1]  (the depth-1 slice of the input, rows h, columns w)", x[0, 0, 1])
    show("weight[0, 0, 1]  (the middle depth slice of the 3x3x3 kernel)", w[0, 0, 1])
    print(f"bias = {conv.bias.data[0]:.4f}")

    print("\n== 2. forward ==")
    c = conv.forward(x)                                                     # (1, 1, 4, 4, 4)
    show("c[0, 0, 1] = Conv3d(x)[0, 0, 1]", c[0, 0, 1])
    # The corner voxel (0, 0, 0) by hand: with padding 1 only kernel taps kz, ky, kx in {1, 2} land
    # inside the volume, at input voxel (kz - 1, ky - 1, kx - 1).
    terms = [(w[0, 0, kz, ky, kx], x[0, 0, kz - 1, ky - 1, kx - 1])
             for kz in (1, 2) for ky in (1, 2) for kx in (1, 2)]
    by_hand = conv.bias.data[0] + sum(a * b for a, b in terms)
    print("c[0, 0, 0, 0, 0] by hand = bias + " + " + ".join(f"({a:.1f})({b:.0f})" for a, b in terms))
    print(f"                         = {by_hand:.4f}   (Conv3d gives {c[0, 0, 0, 0, 0]:.4f})")
    mean = c.mean()
    var = c.var()                                                           # biased: divide by M = 64
    inv_std = 1 / np.sqrt(var + bn.eps)
    print(f"BatchNorm batch statistics over M = 64 voxels: mean = {mean:.4f}, var = {var:.4f} (biased), "
          f"inv_std = {inv_std:.4f}")
    z = bn.forward(c)                                                       # (1, 1, 4, 4, 4)
    show("z[0, 0, 1] = (c - mean) * inv_std   (gamma = 1, beta = 0)", z[0, 0, 1])
    print(f"running_mean = {bn.running_mean[0]:.4f}, running_var = {bn.running_var[0]:.4f} "
          f"(momentum 0.1, unbiased var {c.var(ddof=1):.4f})")
    r = relu.forward(z)                                                     # (1, 1, 4, 4, 4)
    show("r[0, 0, 1] = ReLU(z)[0, 0, 1]", r[0, 0, 1])
    show("target[0, 0, 1]", target[0, 0, 1])
    loss = mse.forward(r, target)
    print(f"L = mean((r - target)^2) = {loss:.6f}")

    print("\n== 3. backward ==")
    conv.zero_grad()
    bn.zero_grad()
    grad_r = mse.backward()                                                 # (1, 1, 4, 4, 4)
    show("dL/dr[0, 0, 1] = 2 (r - target) / 64", grad_r[0, 0, 1])
    grad_z = relu.backward(grad_r)
    show("dL/dz[0, 0, 1] = dL/dr * [z > 0]", grad_z[0, 0, 1])
    grad_c = bn.backward(grad_z)
    print(f"dL/dbeta = {bn.bias.grad[0]:.6f}   dL/dgamma = {bn.weight.grad[0]:.6f}")
    show("dL/dc[0, 0, 1]  (the three-term BatchNorm input gradient)", grad_c[0, 0, 1])
    # (B3) of nn3d/batchnorm3d.py by hand for one voxel q, with gamma = 1 and x_hat = z:
    q = (0, 0, 1, 0, 0)
    mean_g, mean_gz = grad_z.mean(), (grad_z * z).mean()
    three_terms = inv_std * (grad_z[q] - mean_g - z[q] * mean_gz)
    print(f"dL/dc[0, 0, 1, 0, 0] = inv_std (g_q - mean(g) - x_hat_q mean(g x_hat)) with g = dL/dz:\n"
          f"                     = {inv_std:.4f} ({grad_z[q]:.6f} - {mean_g:.6f} - {z[q]:.4f} x {mean_gz:.6f})"
          f" = {three_terms:.6f}")
    print(f"sum of dL/dc over all 64 voxels is 0 (to rounding): {abs(grad_c.sum()) < 1e-12}")
    grad_x = conv.backward(grad_c)
    bias_grad = conv.bias.grad[0]
    print(f"dL/dbias (conv) = sum of dL/dc, so 0 (to rounding): {abs(bias_grad) < 1e-12}")
    show("dL/dweight[0, 0, 1]", conv.weight.grad[0, 0, 1])
    show("dL/dx[0, 0, 1]", grad_x[0, 0, 1])

    print("\n== 4. finite-difference check ==")
    forward_loss = lambda: loss_of(x, target, conv, bn, relu, mse)          # noqa: E731
    for name, array, grad, index in (("weight", w, conv.weight.grad, (0, 0, 1, 1, 1)),
                                     ("x", x, grad_x, (0, 0, 1, 3, 1))):
        numeric = central_difference(array, index, forward_loss)
        analytic = grad[index]
        relative = abs(analytic - numeric) / abs(analytic)
        label = f"dL/d{name}{list(index)}"
        print(f"{label:<24} backward {analytic:.6f}   central difference {numeric:.6f}   "
              f"relative difference < 1e-6: {relative < 1e-6}")


if __name__ == "__main__":
    main()
