"""Look inside one training step: activations and gradients of every layer of the U-Net.

    python -m mri2ct.inspect --checkpoint checkpoints/run/best.npz --data data/cohort
                             [--split train] [--patient 0] [--out inspect.png] [--threads N]

Loads the checkpoint's weights, takes one patient of the cohort (default: the first of the training
split, without flips), and runs the forward-and-backward half of the training step that
mri2ct.train runs (training/step.py, forward_backward, in training mode, so BatchNorm uses batch
statistics; MSE on HU / 1000). The optimizer update is not applied: the checkpoint is only read.
For every layer, in forward order, it prints

    act mean / act std / act max    of the layer's output y                      (forward)
    |dL/dy|                         L2 norm of the gradient arriving at y        (backward)
    |dL/dW|, |dL/db|                L2 norm of each parameter's gradient         (backward)

and draws the same numbers as bar charts on a log scale (PNG, default `inspect.png` next to the
checkpoint). What to look for is in docs/backprop.md, section 10: gradient norms that fall or grow
by orders of magnitude from the head down to enc1, BatchNorm outputs with a std near 1 in a fresh
model (gamma = 1) whatever the convolution before them produced, and conv biases before a BatchNorm whose gradient is ~0.

How the numbers are taken without touching nn3d or the model: `record_layers(model)` is a context
manager that replaces, on each leaf layer instance, `forward` and `backward` by thin wrappers that
call the original and summarise what passes through (the output, and the incoming gradient
grad_output). Leaving the block deletes the wrappers, so the class methods are visible again.
"""
import contextlib
import os
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

import nn3d  # noqa: E402
from mri2ct.common import errors, flags  # noqa: E402
from mri2ct.common.drawing import picture_format, save_figure  # noqa: E402
from mri2ct.data import open_split  # noqa: E402
from mri2ct.training.checkpoint import model_from_checkpoint  # noqa: E402
from mri2ct.training.step import forward_backward  # noqa: E402


def l2_norm(array):
    """sqrt(sum of squares), accumulated in float64 (an activation can hold millions of values)."""
    return float(np.sqrt(np.sum(np.square(array, dtype=np.float64))))


@dataclass
class LayerRecord:
    """What one leaf layer saw during the step. Activation statistics are over the whole output
    (all samples, channels and voxels); norms are L2 norms over all elements."""
    name: str                        # dotted module name, e.g. "enc1.conv1"
    kind: str                        # class name, e.g. "Conv3d"
    shape: tuple = ()                # output shape (N, C, D, H, W)
    act_mean: float = np.nan
    act_std: float = np.nan
    act_max: float = np.nan
    grad_output_norm: float = np.nan          # |dL/dy|, y = this layer's output
    param_grad_norms: dict = field(default_factory=dict)   # {"weight": |dL/dW|, "bias": |dL/db|}


def leaf_modules(model):
    """(name, module) for every module without sub-modules: the layers that do the work."""
    return [(name, module) for name, module in model.named_modules() if name and not module._modules]


@contextlib.contextmanager
def record_layers(model):
    """Record each leaf layer's output statistics in forward and incoming-gradient norm in backward.

        with record_layers(model) as records:
            forward_backward(model, criterion, x, target)
        records  # {name: LayerRecord}, in forward order

    Wrappers are set on the instances (an instance attribute shadows the class's method, and
    Module.__setattr__ stores a plain function as an ordinary attribute); on exit they are deleted,
    or a previously set instance attribute is put back.
    """
    records = {}
    saved = []                                          # (module, attribute, previous instance value)
    missing = object()

    def wrap(name, module):
        original_forward, original_backward = module.forward, module.backward

        def forward(*inputs):
            output = original_forward(*inputs)           # (N, C, D, H, W)
            record = records.setdefault(name, LayerRecord(name, type(module).__name__))
            record.shape = output.shape
            record.act_mean = float(np.mean(output, dtype=np.float64))
            record.act_std = float(np.std(output, dtype=np.float64))
            record.act_max = float(np.max(output))
            return output

        def backward(grad_output):
            grad_input = original_backward(grad_output)  # adds into each parameter's .grad
            record = records.setdefault(name, LayerRecord(name, type(module).__name__))
            record.grad_output_norm = l2_norm(grad_output)
            return grad_input

        for attribute, wrapper in (("forward", forward), ("backward", backward)):
            saved.append((module, attribute, module.__dict__.get(attribute, missing)))
            setattr(module, attribute, wrapper)

    try:
        for name, module in leaf_modules(model):
            wrap(name, module)
        yield records
    finally:
        for module, attribute, previous in reversed(saved):
            if previous is missing:
                delattr(module, attribute)
            else:
                setattr(module, attribute, previous)


def inspect_step(model, x, target):
    """Forward, MSE, backward in training mode; returns (loss, [LayerRecord] in forward order,
    total gradient norm over all parameters). Parameter gradients are left in `.grad`."""
    model.train()
    model.zero_grad()
    with record_layers(model) as records:
        loss = forward_backward(model, nn3d.MSELoss(), x, target)
    for name, module in leaf_modules(model):
        if name in records:
            records[name].param_grad_norms = {key: l2_norm(param.grad)
                                              for key, param in module._parameters.items()}
    total = float(np.sqrt(sum(l2_norm(param.grad) ** 2 for param in model.parameters())))
    return loss, list(records.values()), total


# ---- output -------------------------------------------------------------------------------------
def format_table(records):
    """One line per layer: output statistics, output-gradient norm, parameter-gradient norms."""
    header = (f"{'layer':<18}{'kind':<17}{'output shape':<22}{'act mean':>10}{'act std':>10}"
              f"{'act max':>10}{'|dL/dy|':>11}{'|dL/dW|':>11}{'|dL/db|':>11}")
    lines = [header, "-" * len(header)]
    for r in records:
        weight = r.param_grad_norms.get("weight")
        bias = r.param_grad_norms.get("bias")
        lines.append(f"{r.name:<18}{r.kind:<17}{str(tuple(r.shape)):<22}{r.act_mean:>10.3g}{r.act_std:>10.3g}"
                     f"{r.act_max:>10.3g}{r.grad_output_norm:>11.3e}"
                     f"{'-' if weight is None else f'{weight:.3e}':>11}{'-' if bias is None else f'{bias:.3e}':>11}")
    return "\n".join(lines)


def positive(values):
    """Values for a log-scale bar: exact zeros and non-finite values are left out (NaN)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def plot_records(records, path, title):
    """Three log-scale bar charts over the layers, in forward order: activation std and |max|,
    gradient norm at each layer's output, and the parameter gradient norms."""
    names = [r.name for r in records]
    positions = np.arange(len(records))
    width = max(10, 0.28 * len(records))
    figure, (act_axes, grad_axes, param_axes) = plt.subplots(3, 1, figsize=(width, 12), sharex=True)
    act_axes.bar(positions - 0.2, positive([r.act_std for r in records]), 0.4, label="std")
    act_axes.bar(positions + 0.2, positive([abs(r.act_max) for r in records]), 0.4, label="|max|")
    act_axes.set(yscale="log", ylabel="activation", title=f"{title}\nforward: each layer's output")
    act_axes.legend()
    grad_axes.bar(positions, positive([r.grad_output_norm for r in records]), 0.6, color="C2")
    grad_axes.set(yscale="log", ylabel="|dL/dy|", title="backward: gradient norm at each layer's output")
    param_axes.bar(positions - 0.2, positive([r.param_grad_norms.get("weight", np.nan) for r in records]),
                   0.4, label="|dL/dW|", color="C3")
    param_axes.bar(positions + 0.2, positive([r.param_grad_norms.get("bias", np.nan) for r in records]),
                   0.4, label="|dL/db|", color="C4")
    param_axes.set(yscale="log", ylabel="gradient norm", title="parameter gradients")
    param_axes.legend()
    param_axes.set_xticks(positions)
    param_axes.set_xticklabels(names, rotation=90, fontsize=7)
    for axes in (act_axes, grad_axes, param_axes):
        axes.grid(True, axis="y", which="both", alpha=0.3)
    save_figure(figure, path)


# ---- command line -------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = flags.Parser(
        prog="python -m mri2ct.inspect",
        description="One training step on one patient: per-layer activation statistics and gradient "
                    "norms, as a table and as log-scale bar charts.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a .npz checkpoint of mri2ct.train")
    parser.add_argument("--data", required=True, metavar="DIR", help="cohort folder with manifest.json")
    parser.add_argument("--split", default="train", help="split to take the patient from (default: train)")
    parser.add_argument("--patient", type=flags.NON_NEGATIVE, default=0, metavar="INDEX",
                        help="index of the patient within the split (default: 0, the first)")
    parser.add_argument("--out", metavar="PNG",
                        help="figure to write (default: inspect.png next to the checkpoint)")
    flags.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.out:
        picture_format(args.out)                                     # refuse a non-picture before any work
    nn3d.set_num_threads(args.threads)
    model, _ = model_from_checkpoint(args.checkpoint)
    dataset = open_split(args.data, args.split)
    if not 0 <= args.patient < len(dataset):
        raise ValueError(f"{args.data}: --patient {args.patient} is out of range, the {args.split} split "
                         f"has {len(dataset)} patients")
    x, target = dataset[args.patient]                                # (1, 1, D, H, W) each
    patient = dataset.ids[args.patient]
    loss, records, total = inspect_step(model, x, target)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "inspect.png")
    print(f"{args.checkpoint}: UNet3D features {' '.join(map(str, model.features))}, {args.split} patient "
          f"{patient}, input {x.shape}")
    print(f"loss (MSE of HU / 1000) {loss:.6g}; gradient norm over all parameters {total:.4e} "
          f"(before clipping)\n")
    print(format_table(records))
    plot_records(records, out, f"{os.path.basename(args.checkpoint)}, {patient}: loss {loss:.4g}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    errors.run(main)
