"""UNet3D: the 3-D U-Net that maps a T1 MRI volume to a CT volume, with its backward pass by hand.

Architecture (features f = (f1, f2, f3, f4) = (16, 32, 64, 128) by default; sizes for a 64^3 input):

    x  (N, 1,  64, 64, 64)
    enc1 = block(x)                          (N, f1, 64, 64, 64)  ----------------- skip 1
    enc2 = block(maxpool(enc1))              (N, f2, 32, 32, 32)  ---------- skip 2    |
    enc3 = block(maxpool(enc2))              (N, f3, 16, 16, 16)  --- skip 3    |      |
    bott = block(maxpool(enc3))              (N, f4,  8,  8,  8)         |      |      |
    dec3 = block(concat(up3(bott), enc3))    (N, f3, 16, 16, 16)  <------+      |      |
    dec2 = block(concat(up2(dec3), enc2))    (N, f2, 32, 32, 32)  <-------------+      |
    dec1 = block(concat(up1(dec2), enc1))    (N, f1, 64, 64, 64)  <--------------------+
    y  = head(dec1)                          (N, 1,  64, 64, 64)

where block = (Conv3d 3^3 pad 1 -> BatchNorm3d -> ReLU) twice, up = ConvTranspose3d(k=2, s=2) halving
the channels, head = Conv3d 1^3. Three 2x poolings mean every spatial size must be a multiple of 8.
concat is torch.cat(dim=1): a decoder block's first convolution takes its two inputs and reads them
as one (`Conv3d.forward(up, skip)`, nn3d/conv3d.py), so the concatenation is never formed in memory
and that convolution's backward returns the two gradients already split.

There is no autograd, so `UNet3D.backward` walks this graph in reverse by hand. The only place where
the graph is not a chain is the skip connections; see the comment in `backward`.

The input is data, so by default nothing computes its gradient: `enc1.conv1.requires_input_grad`
is False (as for a PyTorch input that does not require grad), which skips the costliest-per-FLOP
pass of the network (a 1-channel grad-input at full resolution) and makes `backward` return None.
`UNet3D(input_grad=True)` turns it on, e.g. for tests that compare dL/dx with PyTorch.

`state_dict()` keys match a PyTorch module built with the same attribute names (`enc1.conv1.weight`,
`dec3.bn2.running_var`, `up3.weight`, `head.bias`, ...), so weights move to PyTorch and back.
"""
import numpy as np

from nn3d import (BatchNorm3d, Conv3d, ConvTranspose3d, MaxPool3d, Module, conv_batchnorm_eval,
                  is_grad_enabled)

DEFAULT_FEATURES = (16, 32, 64, 128)


class ConvBlock(Module):
    """(Conv3d 3^3, padding 1 -> BatchNorm3d -> ReLU) twice. Keeps the spatial size. Each ReLU is fused
    into the BatchNorm before it (BatchNorm3d(relu=True), nn3d/batchnorm3d.py): one pass over memory.
    For inference (eval mode under nn3d.no_grad()) each BatchNorm goes further, into the convolution.

    (N, in_channels, D, H, W) -> (N, out_channels, D, H, W); given several inputs, their concatenation
    along the channels (in_channels in all), and backward returns one gradient per input.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = BatchNorm3d(out_channels, relu=True)
        self.conv2 = Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = BatchNorm3d(out_channels, relu=True)

    def forward(self, *inputs):
        if not is_grad_enabled() and not self.bn1.training:
            # inference: each BatchNorm (eval mode: a fixed affine map) and its ReLU folded into the
            # convolution before it, one pass over memory instead of two (nn3d/batchnorm_folding.py)
            x = conv_batchnorm_eval(self.conv1, self.bn1, *inputs)
            return conv_batchnorm_eval(self.conv2, self.bn2, x)
        x = self.bn1.forward(self.conv1.forward(*inputs))               # relu(bn(conv(inputs)))
        return self.bn2.forward(self.conv2.forward(x))

    def backward(self, grad_output):
        # A chain: the chain rule applies the layers' backward passes in reverse order.
        grad = self.conv2.backward(self.bn2.backward(grad_output))
        return self.conv1.backward(self.bn1.backward(grad))


class UNet3D(Module):
    """3-D U-Net: three encoder levels, a bottleneck, three decoder levels with skip connections.

    forward:  x (N, in_channels, D, H, W) float32, D, H, W multiples of 8
              -> (N, out_channels, D, H, W)
    backward: dL/dy (N, out_channels, D, H, W) -> dL/dx (N, in_channels, D, H, W) if built with
              input_grad=True, else None; adds every parameter's gradient into its `.grad`.
    """

    def __init__(self, in_channels=1, out_channels=1, features=DEFAULT_FEATURES, input_grad=False):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) != 4 or min(features) < 1:
            raise ValueError(f"UNet3D needs four positive feature counts (encoder 1-3, bottleneck), "
                             f"got {features}")
        f1, f2, f3, f4 = features
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, features

        self.enc1 = ConvBlock(in_channels, f1)
        self.enc1.conv1.requires_input_grad = bool(input_grad)   # dL/dx of the data: off by default
        self.pool1 = MaxPool3d(2)
        self.enc2 = ConvBlock(f1, f2)
        self.pool2 = MaxPool3d(2)
        self.enc3 = ConvBlock(f2, f3)
        self.pool3 = MaxPool3d(2)
        self.bottleneck = ConvBlock(f3, f4)

        # Each decoder level: upsample (halving the channels) -> block of the concat with the skip.
        self.up3 = ConvTranspose3d(f4, f3, kernel_size=2, stride=2)
        self.dec3 = ConvBlock(2 * f3, f3)
        self.up2 = ConvTranspose3d(f3, f2, kernel_size=2, stride=2)
        self.dec2 = ConvBlock(2 * f2, f2)
        self.up1 = ConvTranspose3d(f2, f1, kernel_size=2, stride=2)
        self.dec1 = ConvBlock(2 * f1, f1)

        self.head = Conv3d(f1, out_channels, kernel_size=1)

    def extra_repr(self):
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, features={self.features}"

    def check_input(self, x):
        """A clear error for inputs the network cannot take (the layers check dtype and channels)."""
        if not isinstance(x, np.ndarray) or x.ndim != 5:
            raise ValueError(f"UNet3D: input must be a 5-D (N, C, D, H, W) array, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if any(size % 8 for size in x.shape[2:]):
            raise ValueError(f"UNet3D: spatial sizes must be multiples of 8 (three 2x poolings), got "
                             f"{x.shape[2:]}; pad or crop the volume, or use mri2ct.infer for any size")

    def forward(self, x):
        self.check_input(x)
        enc1 = self.enc1.forward(x)                                       # (N, f1, D,   H,   W)
        enc2 = self.enc2.forward(self.pool1.forward(enc1))                # (N, f2, D/2, H/2, W/2)
        enc3 = self.enc3.forward(self.pool2.forward(enc2))                # (N, f3, D/4, H/4, W/4)
        bottom = self.bottleneck.forward(self.pool3.forward(enc3))        # (N, f4, D/8, H/8, W/8)

        dec3 = self.dec3.forward(self.up3.forward(bottom), enc3)          # (N, f3, D/4, ...) of the concat
        dec2 = self.dec2.forward(self.up2.forward(dec3), enc2)            # (N, f2, D/2, ...)
        dec1 = self.dec1.forward(self.up1.forward(dec2), enc1)            # (N, f1, D, ...)
        return self.head.forward(dec1)                                    # (N, out, D, H, W)

    def backward(self, grad_output):
        # Decoder, in reverse. Forward: dec = block(concat(up(below), skip)). The concatenation's
        # backward splits the gradient by channels: the first part belongs to up(below), the rest to
        # the skip (the block's first convolution returns the two parts). The skip part is held
        # until the backward pass reaches that encoder level.
        grad_up1, grad_skip1 = self.dec1.backward(self.head.backward(grad_output))   # (N, f1, D, ...) each
        grad_up2, grad_skip2 = self.dec2.backward(self.up1.backward(grad_up1))       # (N, f2, D/2, ...) each
        grad_up3, grad_skip3 = self.dec3.backward(self.up2.backward(grad_up2))       # (N, f3, D/4, ...) each
        grad_bottom = self.up3.backward(grad_up3)                        # (N, f4, D/8, ...)

        # Encoder, in reverse. An encoder block's output is used twice in forward:
        #     enc3 = block(...)
        #     bottom = bottleneck(pool3(enc3))        path 1, through the pool
        #     dec3 = block(concat(..., enc3))         path 2, the skip connection
        # The loss depends on enc3 through both paths, so by the multivariable chain rule
        #     dL/d enc3 = dL/d enc3 |via pool + dL/d enc3 |via skip,
        # the SUM of the two gradients. (Same for enc2 and enc1.) Forgetting either term is the
        # classic U-Net backprop bug: the network still trains, just worse. The sum is taken in place,
        # into the skip part (an array the decoder's convolution made for us alone): no new array.
        grad_skip3 += self.pool3.backward(self.bottleneck.backward(grad_bottom))  # (N, f3, D/4, ...) the sum
        grad_skip2 += self.pool2.backward(self.enc3.backward(grad_skip3))         # (N, f2, D/2, ...)
        grad_skip1 += self.pool1.backward(self.enc2.backward(grad_skip2))         # (N, f1, D, ...)
        return self.enc1.backward(grad_skip1)            # (N, in, D, H, W), or None (input_grad=False)
