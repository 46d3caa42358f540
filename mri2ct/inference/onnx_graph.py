"""The trained U-Net as an ONNX graph, so that any ONNX runtime runs it without nn3d or PyTorch.

`unet_model` writes UNet3D's eval-mode forward (mri2ct/model.py) with the onnx package's helpers,
opset 17. Each BatchNorm is folded into the convolution before it by nn3d's own function
(nn3d/batchnorm_folding.py, the one nn3d's inference runs), so the graph holds five kinds of node:

    mr    (N, 1, D, H, W)  the normalised MR; N, D, H, W free, D, H, W multiples of 8
    enc1 = block(mr)                     block = Conv 3^3 pad 1 (BatchNorm folded in) -> Relu, twice
    enc2 = block(MaxPool 2 (enc1))       enc3, bottleneck: the same, one level down each
    dec3 = block(Concat(ConvTranspose 2 stride 2 (bottleneck), enc3))        dec2, dec1: the same
    ct    (N, 1, D, H, W) = Conv 1^3 (dec1)   on the network's scale: HU = hu_scale x ct

Tensors and weights are named after the layers (`enc1.conv1`, `enc1.conv1.weight`, ...).

What a deployment needs to reproduce `mri2ct.infer` around the network travels in the file as
metadata_props, read from the checkpoint's config and this project's constants
(`deployment_metadata`): every value is a JSON document (ONNX metadata values are strings). ONNX
Runtime returns them as `session.get_modelmeta().custom_metadata_map`. The producer_name marks the
files this exporter wrote (`PRODUCER`, read back by `producer_of`).
"""
import json

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from mri2ct import __version__
from mri2ct.data.normalise import (FOREGROUND, HISTOGRAM_BINS, HISTOGRAM_SMOOTHING, HU_SCALE, MR_MAX,
                                   UPPER_PERCENTILE)
from mri2ct.inference.sliding_window import GAUSSIAN_SIGMA, HU_RANGE, MIN_BLEND_WEIGHT, MR_CLIP_PERCENTILES, WINDOW_OVERLAP
from nn3d.batchnorm_folding import folded_weight_and_bias

OPSET = 17
PRODUCER = "mri2ct.export"
INPUT, OUTPUT = "mr", "ct"


class Graph:
    """The nodes and weights (initializers) of an ONNX graph, added in execution order. Each node has
    one output, named as the node."""

    def __init__(self):
        self.nodes, self.weights = [], []

    def weight(self, name, array):
        """Add a float32 weight; returns its name."""
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op_type, name, inputs, **attributes):
        """Add a node computing tensor `name` from the tensors `inputs`; returns `name`."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name


def conv(graph, name, x, layer, weight, bias):
    """Conv node of a Conv3d `layer` with the given (folded) weight and bias arrays."""
    inputs = [x, graph.weight(f"{name}.weight", weight)]
    if bias is not None:
        inputs.append(graph.weight(f"{name}.bias", bias))
    return graph.node("Conv", name, inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=list(layer.padding) * 2)           # ONNX pads: all begins, then all ends


def conv_block(graph, name, block, *inputs):
    """A ConvBlock in eval mode: the inputs concatenated along the channels, then twice
    Conv (its BatchNorm folded in) -> Relu."""
    x = inputs[0] if len(inputs) == 1 else graph.node("Concat", f"{name}.concat", list(inputs), axis=1)
    for index, (layer, batchnorm) in enumerate(((block.conv1, block.bn1), (block.conv2, block.bn2)), 1):
        x = conv(graph, f"{name}.conv{index}", x, layer, *folded_weight_and_bias(layer, batchnorm))
        if batchnorm.relu:
            x = graph.node("Relu", f"{name}.relu{index}", [x])
    return x


def max_pool(graph, name, x, layer):
    """MaxPool node of a MaxPool3d `layer`."""
    return graph.node("MaxPool", name, [x], kernel_shape=list(layer.kernel_size), strides=list(layer.stride))


def conv_transpose(graph, name, x, layer):
    """ConvTranspose node of a ConvTranspose3d `layer` (no output padding, as nn3d's)."""
    inputs = [x, graph.weight(f"{name}.weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(graph.weight(f"{name}.bias", layer.bias.data))
    return graph.node("ConvTranspose", name, inputs, kernel_shape=list(layer.kernel_size),
                      strides=list(layer.stride), pads=list(layer.padding) * 2)


def unet_graph(model):
    """The GraphProto of `model`'s (a UNet3D) eval-mode forward, as drawn in the module docstring."""
    graph = Graph()
    enc1 = conv_block(graph, "enc1", model.enc1, INPUT)
    enc2 = conv_block(graph, "enc2", model.enc2, max_pool(graph, "pool1", enc1, model.pool1))
    enc3 = conv_block(graph, "enc3", model.enc3, max_pool(graph, "pool2", enc2, model.pool2))
    bottom = conv_block(graph, "bottleneck", model.bottleneck, max_pool(graph, "pool3", enc3, model.pool3))
    dec3 = conv_block(graph, "dec3", model.dec3, conv_transpose(graph, "up3", bottom, model.up3), enc3)
    dec2 = conv_block(graph, "dec2", model.dec2, conv_transpose(graph, "up2", dec3, model.up2), enc2)
    dec1 = conv_block(graph, "dec1", model.dec1, conv_transpose(graph, "up1", dec2, model.up1), enc1)
    head = model.head
    conv(graph, OUTPUT, dec1, head, head.weight.data, None if head.bias is None else head.bias.data)

    def volume(name, channels):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                             ["batch", channels, "depth", "height", "width"])

    return helper.make_graph(graph.nodes, "mri2ct_unet3d", [volume(INPUT, model.in_channels)],
                             [volume(OUTPUT, model.out_channels)], initializer=graph.weights)


def deployment_metadata(state, window, spacing):
    """{key: JSON string} of what `mri2ct.infer` does around the network, for the checkpoint `state`
    whose training frame is (window, spacing) (mri2ct.training.checkpoint.training_frame); everything
    else from the code's constants."""
    normalisation = {"scale": "white-matter peak of the MR inside a head mask "
                              "(mri2ct.data.normalise.white_matter_peak, mri2ct.data.preprocess.compute_mask)",
                     "clip": [0.0, MR_MAX], "foreground": FOREGROUND, "upper_percentile": UPPER_PERCENTILE,
                     "histogram_bins": HISTOGRAM_BINS, "histogram_smoothing": HISTOGRAM_SMOOTHING}
    sliding_window = {"overlap": WINDOW_OVERLAP, "gaussian_sigma": GAUSSIAN_SIGMA,
                      "min_blend_weight": MIN_BLEND_WEIGHT}
    metadata = {
        "version": __version__,
        "checkpoint_epoch": int(state["epoch"]),
        "features": [int(f) for f in state["config"]["features"]],
        "training_spacing_mm": spacing,                   # resample the RAS-ordered MR to this first
        "window_voxels": window,                          # the size the network was trained on
        "mr_clip_percentiles": MR_CLIP_PERCENTILES,       # the MR is clipped to these, then resampled
        "mr_normalisation": normalisation,                # mr / white-matter peak, clipped to [0, MR_MAX]
        "sliding_window": sliding_window,                 # how infer blends windows of window_voxels
        "hu_scale": HU_SCALE,                             # HU = hu_scale x ct
        "hu_clip": HU_RANGE,                              # then clipped to this range
    }
    return {key: json.dumps(value) for key, value in metadata.items()}


def unet_model(model, state, window, spacing):
    """The ModelProto of `model` (UNet3D in eval mode, loaded from the checkpoint `state` whose training
    frame is (window, spacing)), with its deployment metadata; IR version the oldest that opset 17
    allows."""
    onnx_model = helper.make_model_gen_version(
        unet_graph(model), opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER,
        producer_version=__version__,
        doc_string="mri2ct UNet3D: normalised T1 MR (N, 1, D, H, W), D, H, W multiples of 8 -> CT / hu_scale")
    helper.set_model_props(onnx_model, deployment_metadata(state, window, spacing))
    return onnx_model


def producer_of(path):
    """The producer_name of the ONNX file at `path` ("" if it names none), None if it is not ONNX."""
    try:
        return onnx.load(path, load_external_data=False).producer_name
    except DecodeError:
        return None
