"""The U-Net of mri2ct/model.py built in PyTorch, with the same state_dict keys.

Used by the tests (a whole-model comparison) and by the step benchmark (the speed reference).
Imports torch, so it is test/benchmark-only: nn3d and mri2ct never import it.
"""
import numpy as np
import torch
from torch import nn


class TorchBlock(nn.Module):
    """(Conv3d 3x3x3 pad 1 -> BatchNorm3d -> ReLU) twice."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(out_channels)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class TorchUNet3D(nn.Module):
    def __init__(self, in_channels=1, out_channels=1, features=(16, 32, 64, 128)):
        super().__init__()
        f1, f2, f3, f4 = features
        self.enc1 = TorchBlock(in_channels, f1)
        self.enc2 = TorchBlock(f1, f2)
        self.enc3 = TorchBlock(f2, f3)
        self.bottleneck = TorchBlock(f3, f4)
        self.up3 = nn.ConvTranspose3d(f4, f3, 2, stride=2)
        self.dec3 = TorchBlock(2 * f3, f3)
        self.up2 = nn.ConvTranspose3d(f3, f2, 2, stride=2)
        self.dec2 = TorchBlock(2 * f2, f2)
        self.up1 = nn.ConvTranspose3d(f2, f1, 2, stride=2)
        self.dec1 = TorchBlock(2 * f1, f1)
        self.head = nn.Conv3d(f1, out_channels, 1)
        self.pool = nn.MaxPool3d(2)

    def forward(self, x):
        skip1 = self.enc1(x)
        skip2 = self.enc2(self.pool(skip1))
        skip3 = self.enc3(self.pool(skip2))
        x = self.bottleneck(self.pool(skip3))
        x = self.dec3(torch.cat([self.up3(x), skip3], dim=1))
        x = self.dec2(torch.cat([self.up2(x), skip2], dim=1))
        x = self.dec1(torch.cat([self.up1(x), skip1], dim=1))
        return self.head(x)


def torch_twin(nn3d_model, features=(16, 32, 64, 128)):
    """A TorchUNet3D holding exactly the weights and buffers of an nn3d UNet3D."""
    model = TorchUNet3D(features=tuple(features))
    state = {key: torch.from_numpy(np.ascontiguousarray(value))
             for key, value in nn3d_model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model
