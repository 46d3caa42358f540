"""Gradient checking by central finite differences: proof of a backward pass without PyTorch.

For a layer y = f(x) and a fixed random upstream gradient dy = dL/dy, the scalar

    L(x) = sum(f(x) * dy)

has dL/dx = backward(dy). Central differences estimate each component:

    dL/dx[i] ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)        error O(eps^2)

In float64 with eps = 1e-6 the truncation error (~eps^2 * f''') and the rounding error
(~1e-16 * |L| / eps) are both near 1e-10 relative, so a correct backward matches to ~1e-7 or better
and a wrong one (a flipped kernel, a missing term) is off by far more (1e-2 and up). A random dy
matters: with dy = 1 many wrong gradients (a transposed weight, a flipped kernel) still sum to the
right number, and for BatchNorm dy = 1 gives dL/dx = 0 exactly, whatever the variance term says.

float32: the rounding error ~6e-8 * |L| / eps dominates unless eps is large (the CLI uses 1e-2 and
accepts 5e-2 relative), and a large eps straddles kinks (an input within eps of 0 before a ReLU,
two near-equal values in a pooling window), where the difference quotient is meaningless. Prove
gradients in float64; use float32 only against PyTorch (--torch), which rounds like we do.

    python -m nn3d.gradcheck batchnorm3d --torch      # docs/backprop.md, section 9, shows the output
    NN3D_CONV=winograd python -m nn3d.gradcheck conv3d   # Conv3d by Winograd F(2^3, 3^3) (default: direct
                                                         # for these 2 -> 3 channels, conv_algorithm.py)
"""
import numpy as np


def numerical_gradient(loss, array, eps=1e-6):
    """dloss/darray by central differences. `loss()` recomputes the scalar from the current values
    of `array`, which is perturbed in place one element at a time and restored afterwards."""
    grad = np.zeros(array.shape, dtype=np.float64)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + eps
        loss_plus = loss()
        array[index] = original - eps
        loss_minus = loss()
        array[index] = original
        grad[index] = (loss_plus - loss_minus) / (2 * eps)
    return grad


def max_relative_error(ours, reference):
    """max |ours - reference| / max |reference|: the error relative to the tensor's own scale.

    (Element-wise relative error explodes where the reference is near zero, which says nothing
    about the gradient's quality, so errors are measured against the largest magnitude.)
    """
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {reference.shape}")
    scale = np.max(np.abs(reference)) if reference.size else 0.0
    return float(np.max(np.abs(ours - reference)) / max(scale, 1e-30)) if ours.size else 0.0


def max_absolute_error(ours, reference):
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(ours - reference))) if ours.size else 0.0


# ---- checking one layer ---------------------------------------------------------------------------

def check_layer(layer, inputs, eps=1e-6, seed=0):
    """Compare `layer.backward` with central differences for every input and every parameter.

    inputs: list of float64 arrays, passed as `layer.forward(*inputs)`.
    Returns a list of (tensor name, analytic gradient, numerical gradient).
    """
    rng = np.random.default_rng(seed)
    output = layer.forward(*inputs)
    grad_output = rng.standard_normal(output.shape).astype(output.dtype)  # random dy: see above

    def loss():
        return float(np.sum(layer.forward(*inputs) * grad_output))

    layer.zero_grad()
    layer.forward(*inputs)
    grad_inputs = layer.backward(grad_output)
    if not isinstance(grad_inputs, tuple):
        grad_inputs = (grad_inputs,)
    results = []
    for index, (array, analytic) in enumerate(zip(inputs, grad_inputs)):
        name = "input" if len(inputs) == 1 else f"input[{index}]"
        results.append((name, analytic, numerical_gradient(loss, array, eps)))
    for name, param in layer.named_parameters():
        results.append((name, param.grad.copy(), numerical_gradient(loss, param.data, eps)))
    return results


def check_mse(criterion, pred, target, eps=1e-6):
    """MSELoss is a scalar already: compare backward() with central differences of forward()."""
    criterion.forward(pred, target)
    analytic = criterion.backward()
    numeric = numerical_gradient(lambda: criterion.forward(pred, target), pred, eps)
    return [("pred", analytic, numeric)]


# ---- the command line: python -m nn3d.gradcheck LAYER ---------------------------------------------

LAYERS = ("conv3d", "conv_transpose3d", "batchnorm3d", "relu", "maxpool3d", "concat", "mse")
DEFAULT_SHAPES = {  # small: every element costs two forward passes
    "conv3d": (2, 2, 5, 4, 3), "conv_transpose3d": (2, 3, 3, 2, 3), "batchnorm3d": (2, 3, 4, 3, 5),
    "relu": (2, 2, 3, 4, 5), "maxpool3d": (2, 2, 4, 6, 5), "concat": (2, 2, 3, 4, 2),
    "mse": (2, 1, 3, 4, 5),
}


def build_case(name, shape, dtype, rng):
    """(layer, inputs, torch twin factory) for one layer kind: the nn3d layer in `dtype`, random
    inputs of `shape`, and a function that builds the equivalent torch module from the layer."""
    import nn3d

    channels = shape[1]

    def randn(*size):
        return rng.standard_normal(size).astype(dtype)

    if name == "conv3d":
        layer = nn3d.Conv3d(channels, 3, kernel_size=3, stride=1, padding=1)
        twin = lambda torch: torch.nn.Conv3d(channels, 3, kernel_size=3, stride=1, padding=1)
        inputs = [randn(*shape)]
    elif name == "conv_transpose3d":
        layer = nn3d.ConvTranspose3d(channels, 2, kernel_size=2, stride=2)
        twin = lambda torch: torch.nn.ConvTranspose3d(channels, 2, kernel_size=2, stride=2)
        inputs = [randn(*shape)]
    elif name == "batchnorm3d":
        layer = nn3d.BatchNorm3d(channels)
        layer.weight.data[...] = rng.uniform(0.5, 1.5, channels)   # away from gamma=1, beta=0
        layer.bias.data[...] = rng.standard_normal(channels)
        twin = lambda torch: torch.nn.BatchNorm3d(channels)
        inputs = [randn(*shape)]
    elif name == "relu":
        layer = nn3d.ReLU()
        twin = lambda torch: torch.nn.ReLU()
        inputs = [randn(*shape)]
    elif name == "maxpool3d":
        layer = nn3d.MaxPool3d(2)
        twin = lambda torch: torch.nn.MaxPool3d(2)
        inputs = [randn(*shape)]
    elif name == "concat":
        layer = nn3d.Concat()
        twin = lambda torch: (lambda *tensors: torch.cat(tensors, dim=1))
        inputs = [randn(*shape), randn(shape[0], channels + 1, *shape[2:])]
    elif name == "mse":
        layer = nn3d.MSELoss()
        twin = lambda torch: torch.nn.MSELoss()
        inputs = [randn(*shape), randn(*shape)]
    else:
        raise ValueError(f"unknown layer '{name}'; choose one of {', '.join(LAYERS)}")
    if name != "mse":
        layer.to(dtype)
    return layer, inputs, twin


def torch_comparison(layer, torch_module, inputs, seed=0):
    """Run an nn3d layer and its PyTorch twin on the same inputs and the same random upstream gradient.

    torch_module: a torch.nn.Module (its state is first copied from `layer`, and it computes in the
    inputs' dtype; torch's global default dtype is left alone) or a function of tensors (torch.cat).
    Returns (tensor name, ours, torch's) for the output, the gradient of every input and of every
    parameter; for MSELoss, the loss and dL/dpred. The one comparison with PyTorch: the tests and
    `python -m nn3d.gradcheck --torch` both call it.
    """
    import torch

    dtype = np.asarray(inputs[0]).dtype
    if isinstance(torch_module, torch.nn.Module):
        torch_module = torch_module.to(torch.float64 if dtype == np.float64 else torch.float32)
        if hasattr(layer, "state_dict"):
            torch_module.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(value))
                                          for key, value in layer.state_dict().items()})
    tensors = [torch.from_numpy(np.ascontiguousarray(x)).requires_grad_() for x in inputs]
    reference = torch_module(*tensors)
    if not hasattr(layer, "named_parameters"):                # MSELoss: L is the end of the chain
        loss = layer.forward(*inputs)
        reference.backward()
        return [("loss", np.array(loss), reference.detach().numpy()),
                ("grad pred", layer.backward(), tensors[0].grad.numpy())]
    output = layer.forward(*inputs)
    grad_output = np.random.default_rng(seed).standard_normal(output.shape).astype(output.dtype)  # dy
    reference.backward(torch.from_numpy(grad_output))
    layer.zero_grad()
    grads = layer.backward(grad_output)
    grads = grads if isinstance(grads, tuple) else (grads,)
    rows = [("output", output, reference.detach().numpy())]
    rows += [(f"grad input[{i}]" if len(grads) > 1 else "grad input", grad, tensor.grad.numpy())
             for i, (grad, tensor) in enumerate(zip(grads, tensors))]
    torch_params = dict(torch_module.named_parameters()) if hasattr(torch_module, "named_parameters") else {}
    rows += [(f"grad {key}", param.grad, torch_params[key].grad.numpy())
             for key, param in layer.named_parameters()]
    return rows


def print_table(title, rows, tolerance):
    """Print one row per tensor; return True when every relative error is within `tolerance`."""
    print(f"\n{title}  (pass: max relative error <= {tolerance:.0e})")
    print(f"{'tensor':<22}{'shape':<22}{'max abs err':>14}{'max rel err':>14}  result")
    all_pass = True
    for tensor, ours, reference in rows:
        relative = max_relative_error(ours, reference)
        passed = relative <= tolerance
        all_pass &= passed
        print(f"{tensor:<22}{str(np.shape(reference)):<22}{max_absolute_error(ours, reference):>14.3e}"
              f"{relative:>14.3e}  {'pass' if passed else 'FAIL'}")
    return all_pass


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nn3d.gradcheck",
        description="Check one layer's backward pass against central finite differences "
                    "(and, with --torch, against PyTorch).")
    parser.add_argument("layer", choices=LAYERS, help="the layer to check")
    parser.add_argument("--shape", type=int, nargs=5, metavar=("N", "C", "D", "H", "W"),
                        help="input shape (default: a small odd shape per layer)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="precision of the check (float64: errors ~1e-8; float32 is only "
                             "meaningful against --torch, finite differences need float64)")
    parser.add_argument("--torch", action="store_true",
                        help="also compare output and gradients with PyTorch (needs torch)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of inputs and weights")
    args = parser.parse_args(argv)

    import nn3d

    nn3d.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dtype = np.dtype(args.dtype)
    shape = tuple(args.shape) if args.shape else DEFAULT_SHAPES[args.layer]
    layer, inputs, twin = build_case(args.layer, shape, dtype, rng)
    # float64 differences are accurate to ~1e-9; float32 ones only to ~1e-2 (eps^2 vs rounding).
    tolerance = 1e-6 if dtype == np.float64 else 5e-2
    eps = 1e-6 if dtype == np.float64 else 1e-2
    if args.layer == "mse":
        rows = check_mse(layer, inputs[0], inputs[1], eps)
    else:
        rows = check_layer(layer, inputs, eps, args.seed)
    name = f"conv3d ({layer._algorithm(inputs[0].shape)})" if args.layer == "conv3d" else args.layer  # NN3D_CONV
    ok = print_table(f"{name} {shape} {dtype}: backward vs central differences", rows, tolerance)

    if args.torch:
        try:
            import torch  # the only import of torch in nn3d: a test-only dependency, on request
        except ImportError:
            print("error: --torch needs PyTorch: pip install -e '.[test]'")
            return 2
        torch_rows = torch_comparison(layer, twin(torch), inputs, args.seed)
        ok &= print_table(f"{args.layer}: nn3d vs PyTorch ({dtype})", torch_rows,
                          1e-10 if dtype == np.float64 else 1e-4)
    print("\nall gradients pass" if ok else "\nGRADIENT CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
