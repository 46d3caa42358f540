"""Conv3d against PyTorch, the fast kernels against their NumPy references, and every gradient
against central finite differences in float64."""
import os

import numpy as np
import pytest
import torch

import nn3d
from nn3d import Conv3d
from nn3d.gradcheck import check_layer, max_relative_error
from nn3d.kernels import conv3d as kernels, reference
from nn3d.kernels.conv3d_grad_weight import conv3d_grad_weight, grad_weight_chunks
from nn3d.kernels.padding import embed_strided, pad_channels_last
from nn3d.kernels.register_tile import BLOCK_W, tile_width
from nn3d.layout import from_channels_last, is_channels_last
from torch_reference import assert_matches_torch, load_into_torch

# float32 tolerance: each output sums at most a few thousand products (Cin*k^3 for forward and
# grad-input, N*Do*Ho*Wo <= 2*7*9*11 for grad-weight); rounding grows like eps * sqrt(length)
# ~ 6e-8 * 40 = 2.4e-6 relative to the tensor's scale. 2e-5 leaves room for PyTorch's own
# (different) summation order, and is still 1e4 times smaller than any indexing error.
FLOAT32_TOLERANCE = 2e-5

# (batch, in_channels, out_channels, spatial size, kernel_size, stride, padding, channels-last input)
SHAPES = [
    (2, 3, 5, (7, 9, 11), 3, 1, 1, False),            # odd non-cubic, batch 2, padding 1
    (1, 1, 16, (6, 7, 9), 3, 2, 0, True),             # C = 1, stride 2, padding 0
    (2, 16, 1, (5, 6, 7), 1, 1, 0, False),            # the U-Net's 1x1x1 head, Cout = 1
    (1, 4, 17, (7, 5, 9), (3, 2, 3), (2, 1, 2), (1, 0, 1), True),   # non-cubic kernel, mixed stride
    (1, 16, 32, (8, 8, 8), 3, 1, 1, True),            # a U-Net layer: full register tiles
]


@pytest.mark.parametrize("batch, cin, cout, size, kernel, stride, padding, channels_last", SHAPES)
def test_conv3d_matches_torch(batch, cin, cout, size, kernel, stride, padding, channels_last, conv_algorithm):
    x = np.random.default_rng(0).standard_normal((batch, cin, *size)).astype(np.float32)
    if channels_last:
        x = from_channels_last(np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)))
    ours = assert_matches_torch(Conv3d(cin, cout, kernel, stride=stride, padding=padding),
                                torch.nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding), [x],
                                FLOAT32_TOLERANCE)
    assert is_channels_last(ours["output"])


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(1)
    layer = Conv3d(2, 3, 3, padding=1)
    x = rng.standard_normal((1, 2, 4, 5, 6)).astype(np.float32)
    grad_output = rng.standard_normal((1, 3, 4, 5, 6)).astype(np.float32)
    layer.forward(x)
    layer.backward(grad_output)
    once = layer.weight.grad.copy()
    with pytest.raises(ValueError, match="backward called before"):   # backward consumed the cache
        layer.backward(grad_output)
    layer.forward(x)
    layer.backward(grad_output)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


# ---- fast kernels vs the plain references (float64: differences are rounding only) -------------
@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding", [
    (3, 17, (5, 6, 11), (3, 3, 3), (1, 1, 1), (1, 1, 1)),    # W tail (11 = 2*4 + 3), Cout tail
    (5, 16, (7, 6, 9), (3, 2, 3), (2, 2, 1), (1, 0, 2)),     # strided, non-cubic kernel, j tail
    (16, 1, (5, 6, 7), (1, 1, 1), (1, 1, 1), (0, 0, 0)),     # the head: pointwise kernels (Cout < 16)
    (19, 3, (3, 4, 5), (1, 1, 1), (1, 1, 1), (0, 0, 0)),     # pointwise: a 16-channel block + 3 left over
])
@pytest.mark.parametrize("block", [4, 8])        # both register-tile widths (AVX2, AVX-512), any CPU
def test_kernels_match_references(cin, cout, size, kernel, stride, padding, block):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, *size, cin))                               # (N, D, H, W, Cin)
    weight = rng.standard_normal((cout, cin, *kernel))
    bias = rng.standard_normal(cout)
    x_pad = pad_channels_last(x, padding)
    np.testing.assert_array_equal(x_pad, embed_strided(x, (1, 1, 1), padding,            # pad kernel
                                                       [s + 2 * p for s, p in zip(size, padding)]))
    y = kernels.conv3d_forward(x_pad, weight, bias, stride, block)
    np.testing.assert_allclose(y, reference.conv3d_forward_reference(x_pad, weight, bias, stride),
                               rtol=0, atol=1e-12)
    grad_output = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        kernels.conv3d_grad_input(grad_output, weight, size, stride, padding, block),
        reference.conv3d_grad_input_reference(grad_output, weight, size, stride, padding), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        conv3d_grad_weight(x_pad, grad_output, kernel, stride, block),
        reference.conv3d_grad_weight_reference(x_pad, grad_output, kernel, stride), rtol=0, atol=1e-11)


def test_tile_width_follows_the_cpu():
    assert tile_width("+sse4.2,+avx,+avx2,+fma,-avx512f") == 4           # Zen 2
    assert tile_width("+avx2,+fma,+avx512f,+avx512bw,+avx512vl") == 8      # Zen 4, Skylake-X


def test_block_width_is_this_cpus():
    """BLOCK_W against the CPU's own flags, read from /proc/cpuinfo rather than through LLVM as
    register_tile.py reads them: 8 on a CPU with AVX-512F, 4 without."""
    if os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        pytest.skip("NUMBA_CPU_FEATURES / NUMBA_CPU_NAME: Numba compiles for another CPU than this one")
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    with open("/proc/cpuinfo", encoding="utf-8") as file:
        flags = next((line.split(":", 1)[1].split() for line in file if line.startswith("flags")), None)
    if flags is None:
        pytest.skip("/proc/cpuinfo lists no flags (not an x86 CPU)")
    assert BLOCK_W == (8 if "avx512f" in flags else 4)


def test_input_gradient_can_be_skipped():
    rng = np.random.default_rng(5)
    layer = Conv3d(1, 4, 3, padding=1)
    x = rng.standard_normal((1, 1, 4, 5, 6)).astype(np.float32)
    grad_output = rng.standard_normal((1, 4, 4, 5, 6)).astype(np.float32)
    layer.forward(x)
    full = layer.backward(grad_output)
    weight_grad = layer.weight.grad.copy()
    layer.zero_grad()
    layer.requires_input_grad = False
    layer.forward(x)
    assert full is not None and layer.backward(grad_output) is None
    np.testing.assert_array_equal(layer.weight.grad, weight_grad)         # parameter gradients unchanged


# ---- finite differences in float64 --------------------------------------------------------------
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), ((2, 3, 1), 1, 0), (3, 1, 1)])
def test_conv3d_finite_differences(kernel, stride, padding, conv_algorithm):
    rng = np.random.default_rng(3)
    layer = Conv3d(2, 3, kernel, stride=stride, padding=padding).to(np.float64)
    x = rng.standard_normal((1, 2, 4, 5, 3))
    results = check_layer(layer, [x])                     # input, weight, bias vs central differences
    assert [name for name, _, _ in results] == ["input", "weight", "bias"]
    for name, analytic, numeric in results:
        assert max_relative_error(analytic, numeric) < 1e-7, name


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_rejected():
    """Conv3d's own checks; the ones every layer shares are in test_bad_input.py."""
    layer = Conv3d(2, 3, 3)
    with pytest.raises(ValueError, match="has 3 channels, expected 2"):
        layer.forward(np.zeros((1, 3, 5, 5, 5), np.float32))
    with pytest.raises(TypeError, match="float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((1, 2, 5, 5, 5)))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layer.forward(np.zeros((1, 2, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="Conv3d: kernel_size must be an int or a tuple of 3 ints"):
        Conv3d(2, 3, (3, 3))


@pytest.mark.parametrize("cls", [Conv3d, nn3d.ConvTranspose3d])
@pytest.mark.parametrize("arguments", [dict(in_channels=0), dict(kernel_size=0), dict(stride=(1, 0, 1)),
                                       dict(padding=-1)])
def test_bad_hyper_parameters_are_a_value_error_naming_the_layer(cls, arguments):
    settings = dict(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=0) | arguments
    with pytest.raises(ValueError, match=f"{cls.__name__}: channels, kernel_size and stride must be >= 1"):
        cls(**settings)


def test_state_dict_round_trip_with_torch():
    nn3d.manual_seed(4)
    layer = Conv3d(3, 4, 3, bias=True)
    assert layer.weight.shape == (4, 3, 3, 3, 3) and layer.bias.shape == (4,)
    bound = 1 / np.sqrt(3 * 27)                                   # PyTorch's default init bound
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.8 * bound
    twin = load_into_torch(torch.nn.Conv3d(3, 4, 3), layer)
    back = Conv3d(3, 4, 3)
    back.load_state_dict({k: v.detach().numpy() for k, v in twin.state_dict().items()})
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)
    assert list(Conv3d(3, 4, 1, bias=False).state_dict()) == ["weight"]


def test_grad_weight_has_32_work_items_and_same_bits_on_any_thread_count(on_one_and_two_threads):
    """Grad-weight is split into (row chunk, 16 output channels) items fixed by the shapes: at least 32
    of them (so 32 cores can share the pass), and the chunks are added in a fixed order, so 1 and 2
    threads give the same bits."""
    assert grad_weight_chunks(16 * 16, 16) * 1 >= 32                 # a 16-channel layer
    assert grad_weight_chunks(8 * 8, 128) * 8 >= 32                  # the 8^3 bottleneck
    rng = np.random.default_rng(5)
    x_pad = rng.standard_normal((1, 10, 10, 10, 16)).astype(np.float32)
    grad_output = rng.standard_normal((1, 8, 8, 8, 32)).astype(np.float32)
    one, two = on_one_and_two_threads(conv3d_grad_weight, x_pad, grad_output, (3, 3, 3), (1, 1, 1))
    np.testing.assert_array_equal(one, two)


# (forward, grad_input, grad_weight): every way the per-pass rule may mix the two algorithms
PASS_MIXES = [("winograd", "direct", "direct"), ("direct", "winograd", "winograd"),
              ("winograd", "winograd", "direct"), ("direct", "direct", "winograd")]


@pytest.mark.parametrize("mix", PASS_MIXES)
def test_each_pass_may_take_its_own_algorithm(mix, monkeypatch):
    """conv_algorithm.py chooses per pass: forward by one algorithm and grad-input or grad-weight by
    the other (grad-input by Winograd computes the filter transform a direct forward did not;
    grad-weight direct pads x itself) gives PyTorch's output and gradients, for one input and for
    a decoder's two."""
    import nn3d.kernels.conv_algorithm as rule
    monkeypatch.delenv("NN3D_CONV", raising=False)
    chosen = dict(zip(rule.PASSES, mix))
    monkeypatch.setattr(rule, "winograd_wins", lambda isa, pass_name, cin, cout, tiles: chosen[pass_name] == "winograd")
    layer = Conv3d(32, 16, 3, padding=1)
    assert [layer._algorithm((1, 32, 6, 7, 8), name) for name in rule.PASSES] == list(mix)
    x = np.random.default_rng(6).standard_normal((1, 32, 6, 7, 8)).astype(np.float32)
    assert_matches_torch(layer, torch.nn.Conv3d(32, 16, 3, padding=1), [x], FLOAT32_TOLERANCE)
    grad_output = np.random.default_rng(7).standard_normal((1, 16, 6, 7, 8)).astype(np.float32)
    layer.zero_grad()
    layer.forward(x[:, :16], x[:, 16:])                                    # (up, skip) read in place
    grads = layer.backward(grad_output)
    two_inputs = np.concatenate(grads, axis=1), layer.weight.grad.copy()
    layer.zero_grad()
    layer.forward(x)
    one_input = layer.backward(grad_output), layer.weight.grad.copy()
    for ours, expected in zip(two_inputs, one_input):
        assert max_relative_error(ours, expected) < FLOAT32_TOLERANCE
