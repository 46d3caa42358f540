"""The gradient-check tool: passes on every layer, fails on an injected wrong gradient."""
import subprocess
import sys

import numpy as np
import pytest

import nn3d
from nn3d import gradcheck


@pytest.mark.parametrize("layer", gradcheck.LAYERS)
def test_every_layer_passes_against_finite_differences_and_torch(layer, capsys):
    assert gradcheck.main([layer, "--torch"]) == 0
    output = capsys.readouterr().out
    assert "all gradients pass" in output and "FAIL" not in output
    assert "nn3d vs PyTorch" in output


def test_conv3d_checks_either_algorithm(conv_algorithm, capsys):
    assert gradcheck.main(["conv3d", "--torch"]) == 0
    output = capsys.readouterr().out
    assert f"conv3d ({conv_algorithm})" in output and "all gradients pass" in output


def test_custom_shape_and_float32(capsys):
    assert gradcheck.main(["conv3d", "--shape", "1", "1", "3", "4", "5", "--dtype", "float32",
                           "--torch"]) == 0
    assert "(1, 1, 3, 4, 5)" in capsys.readouterr().out


@pytest.mark.parametrize("layer, cls", [("relu", nn3d.ReLU), ("conv3d", nn3d.Conv3d),
                                        ("batchnorm3d", nn3d.BatchNorm3d)])
def test_a_wrong_gradient_is_reported_as_failure(layer, cls, monkeypatch, capsys):
    """Test-only hook: scale the layer's input gradient by 1.01, a 1% error gradcheck must see."""
    correct_backward = cls.backward
    monkeypatch.setattr(cls, "backward", lambda self, grad: correct_backward(self, grad) * 1.01)
    assert gradcheck.main([layer]) == 1
    output = capsys.readouterr().out
    assert "FAIL" in output and "GRADIENT CHECK FAILED" in output


def test_a_wrong_weight_gradient_is_reported(monkeypatch, capsys):
    """A transposed weight gradient: right numbers in the wrong places must fail too."""
    correct_backward = nn3d.Conv3d.backward

    def backward_with_flipped_weight_grad(self, grad_output):
        self.weight.grad[...] = 0
        grad_input = correct_backward(self, grad_output)
        self.weight.grad[...] = self.weight.grad[:, :, ::-1].copy()
        return grad_input

    monkeypatch.setattr(nn3d.Conv3d, "backward", backward_with_flipped_weight_grad)
    assert gradcheck.main(["conv3d"]) == 1
    output = capsys.readouterr().out
    assert any(line.startswith("weight") and line.endswith("FAIL") for line in output.splitlines())


def test_command_line_entry_point():
    result = subprocess.run([sys.executable, "-m", "nn3d.gradcheck", "maxpool3d"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all gradients pass" in result.stdout


def test_torch_comparison_leaves_torch_default_dtype_alone(capsys):
    """--torch used to call torch.set_default_dtype(float64) and leak it into everything after it
    (float32 torch modules built later got float64 parameters)."""
    import torch

    before = torch.get_default_dtype()
    assert gradcheck.main(["batchnorm3d", "--torch"]) == 0
    assert torch.get_default_dtype() == before
    assert torch.nn.BatchNorm3d(2).weight.dtype == before


def test_unknown_layer_is_a_usage_error():
    with pytest.raises(SystemExit) as error:
        gradcheck.main(["softmax"])
    assert error.value.code == 2


def test_numerical_gradient_of_a_known_function():
    x = np.array([1.0, -2.0, 0.5])
    grad = gradcheck.numerical_gradient(lambda: float(np.sum(x ** 3)), x)
    np.testing.assert_allclose(grad, 3 * x ** 2, rtol=1e-8)
    assert gradcheck.max_relative_error(grad, 3 * x ** 2) < 1e-8
