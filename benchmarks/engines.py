"""The engines the step benchmark runs against nn3d, each built as one function that runs one pass.

    run = build("onnxruntime", size=64, mode="eval", threads=2, nn3d_model=model, onnx_path=path)
    output = run()          # the eval forward's output array, or a training step's loss

Training step (mode "train"): PyTorch eager in its default NCDHW format and in channels_last_3d, and
`torch.compile` of the same model in both formats (the model's forward and backward compiled, the
optimizer step eager; its first call compiles). Eval forward (mode "eval"): PyTorch eager in both
formats, ONNX Runtime and OpenVINO; the last two run the PyTorch twin (benchmarks/torch_unet.py)
exported once to ONNX with BatchNorm in eval mode and left in the graph, so each engine folds it
into the convolution itself, as nn3d does.

Every engine gets `threads` threads: ONNX Runtime on its CPU provider with every graph
optimisation, OpenVINO on its CPU device with f32 inference precision and the latency hint. An
engine that cannot be built (not installed, failed to export) raises; benchmarks/step.py reports it
as "not run" with the first line of the error.
"""
import functools

import numpy as np

LEARNING_RATE, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0

# name: (label, the modes it runs)
ENGINES = {
    "torch_ncdhw": ("PyTorch eager NCDHW", ("train", "eval")),
    "torch_channels_last": ("PyTorch eager channels_last_3d", ("train", "eval")),
    "torch_compile_ncdhw": ("torch.compile NCDHW", ("train",)),
    "torch_compile_channels_last": ("torch.compile channels_last_3d", ("train",)),
    "onnxruntime": ("ONNX Runtime", ("eval",)),
    "openvino": ("OpenVINO", ("eval",)),
}


def engines_for(mode):
    """The names of the engines that run `mode` ("train" or "eval"), in table order."""
    return [name for name, (_, modes) in ENGINES.items() if mode in modes]


def make_input(size, seed=0):
    """A (1, 1, S, S, S) MR-like input and CT-like target, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 1, size, size, size)).astype(np.float32)
    target = rng.standard_normal((1, 1, size, size, size)).astype(np.float32)
    return x, target


def ours_runner(size, mode):
    """nn3d's model and a function running one training step (returns the loss) or one eval forward
    (returns the output)."""
    import nn3d
    from mri2ct.model import UNet3D
    from mri2ct.training.step import train_step

    nn3d.manual_seed(0)
    model = UNet3D()
    x, target = make_input(size)
    criterion = nn3d.MSELoss()
    optimizer = nn3d.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=1000, eta_min=1e-6)

    def eval_forward():
        with nn3d.no_grad():              # as torch.no_grad in torch_runner: no backward caches
            return model.forward(x)

    if mode == "train":
        model.train()
        return model, functools.partial(train_step, model, criterion, optimizer, scheduler, x, target, CLIP)
    model.eval()
    return model, eval_forward


def torch_runner(size, mode, channels_last, compiled=False, nn3d_model=None):
    """The same step in PyTorch, eager or under torch.compile; weights copied from `nn3d_model` when
    given. Returns the loss (train) or the output (eval), as nn3d's runner does."""
    import torch

    from .torch_unet import TorchUNet3D, torch_twin

    model = torch_twin(nn3d_model) if nn3d_model is not None else TorchUNet3D()
    x, target = (torch.from_numpy(a) for a in make_input(size))
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        target = target.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000, eta_min=1e-6)
    criterion = torch.nn.MSELoss()
    network = torch.compile(model) if compiled else model    # same parameters, compiled on first call

    def train_step():
        loss = criterion(network(x), target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        return loss.item()

    def eval_forward():
        with torch.no_grad():
            return network(x)

    if mode == "train":
        model.train()
        return train_step
    model.eval()
    return eval_forward


def export_onnx(path, size, nn3d_model=None):
    """Write the PyTorch twin, in eval mode, as an ONNX graph for a (1, 1, S, S, S) input named "x".
    The exporter's own graph optimisation is off, so the BatchNormalization nodes stay for the
    engines to fold."""
    import torch

    from .torch_unet import TorchUNet3D, torch_twin

    model = torch_twin(nn3d_model) if nn3d_model is not None else TorchUNet3D()
    model.eval()
    x = torch.from_numpy(make_input(size)[0])
    torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], dynamo=True,
                      optimize=False, external_data=False, verbose=False)


def onnxruntime_runner(size, threads, onnx_path):
    """ONNX Runtime's eval forward of the exported graph: CPU provider, every graph optimisation,
    `threads` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    x = make_input(size)[0]
    return lambda: session.run(None, {"x": x})[0]


def openvino_runner(size, threads, onnx_path):
    """OpenVINO's eval forward of the exported graph: CPU device, f32 inference precision, the
    latency performance hint, `threads` threads."""
    import openvino

    compiled = openvino.Core().compile_model(onnx_path, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    x = make_input(size)[0]

    def eval_forward():
        request.infer({"x": x})
        return request.get_output_tensor(0).data
    return eval_forward


def build(name, size, mode, threads, nn3d_model=None, onnx_path=None):
    """A function running engine `name`'s training step or eval forward once. PyTorch's thread count
    is the caller's to set (torch.set_num_threads); the ONNX engines take `threads` here and need
    `onnx_path` (export_onnx)."""
    if name.startswith("torch_"):
        return torch_runner(size, mode, channels_last=name.endswith("channels_last"),
                            compiled=name.startswith("torch_compile"), nn3d_model=nn3d_model)
    if onnx_path is None:
        raise RuntimeError("no ONNX graph: the export failed")
    if name == "onnxruntime":
        return onnxruntime_runner(size, threads, onnx_path)
    return openvino_runner(size, threads, onnx_path)


def first_line(error):
    """An exception as "Type: first line of its message", for a "not run" entry."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
