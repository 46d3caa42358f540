"""Write a trained model as an ONNX file that any ONNX runtime runs, without nn3d or PyTorch:

    python -m mri2ct.export --checkpoint best.npz --onnx sct.onnx

    1. read the checkpoint and check it as inference does (a complete config, finite weights)
    2. build the U-Net's eval-mode graph, each BatchNorm folded into its convolution, and the metadata
       a deployment needs to reproduce `mri2ct.infer`'s pre- and post-processing
       (inference/onnx_graph.py)
    3. check the file with the onnx checker (full check, with shape inference) and write it atomically

`--onnx` may replace only a file this exporter wrote (its producer_name says so): any other existing
file is refused, as is anything that does not end in .onnx. Every bad input stops with one line on
stderr and writes nothing. Needs the onnx package (pip install -e '.[export]'); never imports PyTorch.
"""
import os

from mri2ct.common import errors, flags
from mri2ct.common.atomic import atomic_path
from mri2ct.training.checkpoint import model_from_checkpoint, training_frame


def parse_args(argv=None):
    parser = flags.Parser(prog="python -m mri2ct.export",
                          description="Write a trained UNet3D as an ONNX file (opset 17).")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mri2ct.train (e.g. best.npz)")
    parser.add_argument("--onnx", required=True, help="the ONNX file to write (.onnx)")
    return parser.parse_args(argv)


def check_output_path(path, onnx_graph):
    """ValueError unless `path` ends in .onnx and is free or a file this exporter wrote."""
    if not path.endswith(".onnx"):
        raise ValueError(f"--onnx {path}: give a .onnx file name")
    if not os.path.lexists(path):
        return
    if not os.path.isfile(path):
        raise ValueError(f"--onnx {path}: exists and is not a file")
    if onnx_graph.producer_of(path) != onnx_graph.PRODUCER:
        raise ValueError(f"--onnx {path}: exists and was not written by {onnx_graph.PRODUCER}; choose "
                         f"another file name or delete it")


def main(argv=None):
    args = parse_args(argv)
    try:
        import onnx
        from mri2ct.inference import onnx_graph
    except ModuleNotFoundError as error:
        if error.name != "onnx":
            raise
        raise ValueError("exporting needs the onnx package: pip install -e '.[export]'") from None
    check_output_path(args.onnx, onnx_graph)
    model, state = model_from_checkpoint(args.checkpoint)
    window, spacing = training_frame(state, args.checkpoint)
    onnx_model = onnx_graph.unet_model(model, state, window, spacing)
    onnx.checker.check_model(onnx_model, full_check=True)
    with atomic_path(args.onnx) as temporary:
        onnx.save(onnx_model, temporary)
    size = os.path.getsize(args.onnx) / 2 ** 20
    print(f"wrote {args.onnx}: UNet3D features {list(model.features)}, opset {onnx_graph.OPSET}, {size:.1f} MB")


if __name__ == "__main__":
    errors.run(main)
