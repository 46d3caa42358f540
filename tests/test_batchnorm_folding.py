"""Inference with each eval-mode BatchNorm3d folded into the Conv3d before it
(nn3d/batchnorm_folding.py): the same output as the two layers run one after the other, on both
convolution algorithms, with and without the fused ReLU, one or two inputs; refused in training."""
import numpy as np
import pytest

import nn3d
from nn3d import BatchNorm3d, Conv3d, conv_batchnorm_eval
from nn3d.gradcheck import max_relative_error

# Both sides compute the same sums in float32; the folded one multiplies the weights by the BN scale
# first (one extra rounding per weight, ~6e-8 relative) and adds the shift inside the kernel. Their
# difference is a few float32 roundings of the output's scale: 1e-5 of it leaves ~10x room, while a
# wrong scale, shift or ReLU would differ by order 1.
TOLERANCE = 1e-5


def eval_pair(cin, cout, kernel_size, relu, rng):
    """A Conv3d and an eval-mode BatchNorm3d with non-trivial running statistics and affine."""
    conv = Conv3d(cin, cout, kernel_size, padding=kernel_size // 2)
    bn = BatchNorm3d(cout, relu=relu)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, cout)
    bn.bias.data[...] = rng.standard_normal(cout)
    bn.running_mean[...] = rng.standard_normal(cout)
    bn.running_var[...] = rng.uniform(0.5, 2.0, cout)
    bn.eval()
    return conv, bn


# (input channels, Cout, kernel size, (D, H, W), batch): the U-Net's 3x3x3 shape at 16 channels,
# a thin first layer (C = 1), odd non-cubic sizes, Cout not a multiple of 16, and the 1x1x1 path
CASES = [((16,), 16, 3, (6, 5, 7), 2), ((1,), 5, 3, (5, 6, 3), 1), ((16, 16), 17, 3, (4, 7, 5), 1),
         ((3,), 2, 1, (3, 4, 5), 2)]


@pytest.mark.parametrize("channels, cout, kernel_size, size, batch", CASES)
@pytest.mark.parametrize("relu", [True, False])
def test_folded_equals_conv_then_batchnorm(channels, cout, kernel_size, size, batch, relu, conv_algorithm):
    nn3d.manual_seed(0)                 # the conv's weights: whether the ReLU clips must not depend on test order
    rng = np.random.default_rng(0)
    conv, bn = eval_pair(sum(channels), cout, kernel_size, relu, rng)
    inputs = [rng.standard_normal((batch, c, *size)).astype(np.float32) for c in channels]
    with nn3d.no_grad():
        expected = bn.forward(conv.forward(*inputs))
        folded = conv_batchnorm_eval(conv, bn, *inputs)
    assert folded.shape == expected.shape and folded.dtype == np.float32
    assert max_relative_error(folded, expected) < TOLERANCE
    if relu:
        assert (folded >= 0).all() and (folded == 0).any()         # the ReLU did clip something


def test_refused_in_training_mode_and_for_a_mismatched_batchnorm():
    conv, bn = eval_pair(2, 4, 3, True, np.random.default_rng(1))
    x = np.zeros((1, 2, 4, 4, 4), np.float32)
    bn.train()
    with pytest.raises(ValueError, match="training mode"):
        conv_batchnorm_eval(conv, bn, x)
    with pytest.raises(ValueError, match="cannot follow"):
        conv_batchnorm_eval(conv, BatchNorm3d(3).eval(), x)


def test_unet_inference_uses_the_folded_path_and_matches_the_unfolded_one(monkeypatch):
    """UNet3D in eval mode under no_grad (what infer and evaluate run) folds every BatchNorm; the
    same model with gradients enabled runs the layers one by one. Same output within float32."""
    from mri2ct.model import UNet3D
    import nn3d.batchnorm_folding as folding
    nn3d.manual_seed(0)
    model = UNet3D(features=(4, 8, 16, 16)).eval()
    rng = np.random.default_rng(2)
    for bn in (m for _, m in model.named_modules() if isinstance(m, BatchNorm3d)):
        bn.running_mean[...] = rng.standard_normal(bn.num_features) * 0.1
        bn.running_var[...] = rng.uniform(0.5, 2.0, bn.num_features)
    x = rng.standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    unfolded = model.forward(x)
    calls = []
    monkeypatch.setattr(folding, "folded_weight_and_bias",
                        lambda *pair, real=folding.folded_weight_and_bias: calls.append(1) or real(*pair))
    with nn3d.no_grad():
        folded = model.forward(x)
    assert len(calls) == 14                                          # 7 blocks x 2 BatchNorms
    assert max_relative_error(folded, unfolded) < TOLERANCE
