"""A whole small network, Conv-BN-ReLU-Pool-Conv-ConvTranspose-Concat-Conv (a one-level U-Net),
against the same network in PyTorch with the weights moved over through state_dict: the loss, the
input gradient and every parameter gradient, in float32 and float64."""
import numpy as np
import pytest
import torch

import nn3d

from nn3d import BatchNorm3d, Concat, Conv3d, ConvTranspose3d, MaxPool3d, Module, MSELoss, ReLU
from nn3d.gradcheck import max_relative_error
from torch_reference import load_into_torch


class TinyUNet(Module):
    """x -> conv-bn-relu = s -> pool -> conv-relu -> up-conv = u -> cat(u, s) -> 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.conv = Conv3d(1, 4, 3, padding=1)
        self.bn = BatchNorm3d(4)
        self.relu = ReLU()
        self.pool = MaxPool3d(2)
        self.down = Conv3d(4, 8, 3, padding=1)
        self.down_relu = ReLU()
        self.up = ConvTranspose3d(8, 4, 2, stride=2)
        self.cat = Concat()
        self.head = Conv3d(8, 1, 1)

    def forward(self, x):
        skip = self.relu.forward(self.bn.forward(self.conv.forward(x)))               # (N, 4, D, H, W)
        deep = self.down_relu.forward(self.down.forward(self.pool.forward(skip)))     # (N, 8, D/2, H/2, W/2)
        return self.head.forward(self.cat.forward(self.up.forward(deep), skip))       # (N, 1, D, H, W)

    def backward(self, grad_output):
        grad_up, grad_skip = self.cat.backward(self.head.backward(grad_output))
        grad_pool = self.down.backward(self.down_relu.backward(self.up.backward(grad_up)))
        grad_skip = grad_skip + self.pool.backward(grad_pool)     # skip feeds both pool and cat: sum
        return self.conv.backward(self.bn.backward(self.relu.backward(grad_skip)))


class TorchTinyUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm3d(4)
        self.pool = torch.nn.MaxPool3d(2)
        self.down = torch.nn.Conv3d(4, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.head = torch.nn.Conv3d(8, 1, 1)

    def forward(self, x):
        skip = torch.relu(self.bn(self.conv(x)))
        deep = torch.relu(self.down(self.pool(skip)))
        return self.head(torch.cat([self.up(deep), skip], dim=1))


# float32: gradients are sums over up to 2*6*8*10 = 960 voxels, taken through 6 layers; each layer
# adds a few float32 roundings times sqrt(reduction length) (~6e-8 * 30 = 2e-6): 1e-4 leaves margin
# for the BN input gradient's cancellation. float64: the same sums 1e9 times more precise: 1e-10.
# conv.bias feeds BatchNorm, which removes any per-channel constant: its gradient is 0 in exact
# arithmetic, rounding noise in both libraries. It is compared against the scale of conv.weight's
# gradient (absolute error / max |dL/d conv.weight|), the only meaningful measure for a zero tensor.
@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_loss_and_all_gradients_match_torch(dtype, tolerance):
    nn3d.manual_seed(0)                 # the weights, so ReLU's and max-pool's near-ties are the same in any order
    rng = np.random.default_rng(0)
    ours = TinyUNet()
    ours.bn.weight.data[...] = rng.uniform(0.5, 1.5, 4)
    ours.bn.bias.data[...] = rng.standard_normal(4)
    ours.to(dtype)
    theirs = load_into_torch(TorchTinyUNet(), ours).to(torch.float64 if dtype == np.float64 else torch.float32)
    x = rng.standard_normal((2, 1, 6, 8, 10)).astype(dtype)
    target = rng.standard_normal((2, 1, 6, 8, 10)).astype(dtype)

    criterion = MSELoss()
    loss = criterion.forward(ours.forward(x), target)
    ours.zero_grad()
    grad_input = ours.backward(criterion.backward())

    x_t = torch.from_numpy(x).requires_grad_()
    loss_t = torch.nn.functional.mse_loss(theirs(x_t), torch.from_numpy(target))
    loss_t.backward()

    assert loss == pytest.approx(loss_t.item(), rel=tolerance)
    assert max_relative_error(grad_input, x_t.grad.numpy()) < tolerance
    torch_grads = {name: p.grad.numpy() for name, p in theirs.named_parameters()}
    assert sorted(torch_grads) == sorted(name for name, _ in ours.named_parameters())
    for name, param in ours.named_parameters():
        if name == "conv.bias":
            error = np.max(np.abs(param.grad - torch_grads[name])) / np.max(np.abs(torch_grads["conv.weight"]))
        else:
            error = max_relative_error(param.grad, torch_grads[name])
        assert error < tolerance, name
    for name, buffer in theirs.named_buffers():     # BN running statistics after one training step
        assert max_relative_error(ours.state_dict()[name], buffer.numpy()) < tolerance, name
