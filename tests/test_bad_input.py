"""Bad input to every layer, one parametrised test: each mistake is refused with one clear error that
names the layer, and nothing is cast silently (the grad_output rule of nn3d/checks.py)."""
import numpy as np
import pytest

import nn3d

# (layer factory, a valid input shape (N, C, D, H, W), how many inputs forward takes)
LAYERS = {
    "Conv3d": (lambda: nn3d.Conv3d(2, 3, 3, padding=1), (1, 2, 4, 5, 3), 1),
    "ConvTranspose3d": (lambda: nn3d.ConvTranspose3d(2, 3, 2, stride=2), (1, 2, 2, 3, 2), 1),
    "BatchNorm3d": (lambda: nn3d.BatchNorm3d(2), (2, 2, 3, 2, 3), 1),
    "ReLU": (nn3d.ReLU, (1, 2, 3, 4, 2), 1),
    "MaxPool3d": (lambda: nn3d.MaxPool3d(2), (1, 2, 4, 4, 6), 1),
    "Concat": (nn3d.Concat, (1, 2, 3, 2, 3), 2),
}


@pytest.mark.parametrize("name", LAYERS)
def test_bad_input_is_refused_with_the_layer_named(name):
    make, shape, n_inputs = LAYERS[name]
    layer = make()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def forward(array):
        return layer.forward(*[array] * n_inputs)

    with pytest.raises(ValueError, match=f"{name}.backward called before {name}.forward"):
        layer.backward(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=f"{name}: input.* must be 5-D"):
        forward(x[0])
    with pytest.raises(ValueError, match=f"{name}: input.* is empty"):
        forward(x[:0])
    for dtype in (np.float16, np.int64):
        with pytest.raises(TypeError, match=f"{name}: input.* must be float32.*got {np.dtype(dtype)}"):
            forward(x.astype(dtype))
    with pytest.raises(TypeError, match=f"{name}: input.* must be a NumPy array"):
        forward(x.tolist())

    y = forward(x)
    with pytest.raises(ValueError, match=f"{name}.backward: grad_output has shape"):
        layer.backward(np.zeros((*y.shape[:-1], y.shape[-1] + 1), np.float32))
    wrong_dtype = f"{name}.backward: grad_output is float64, but forward returned float32"
    with pytest.raises(ValueError, match=wrong_dtype):
        layer.backward(np.zeros(y.shape))                   # float64: refused, never cast
    with pytest.raises(TypeError, match=f"{name}.backward: grad_output must be a NumPy array"):
        layer.backward(np.zeros(y.shape, np.float32).tolist())
    layer.backward(np.zeros(y.shape, np.float32))           # the right one is accepted
