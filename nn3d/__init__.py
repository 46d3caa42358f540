"""nn3d: 3-D deep learning from scratch on the CPU, NumPy + Numba, no autograd.

Every layer writes its forward and its backward pass by hand, with the derivation beside the code.
Shapes, parameter names and state_dict keys follow PyTorch, so weights move between the two.
"""
from .conv3d import Conv3d
from .conv_transpose3d import ConvTranspose3d
from .grad_mode import is_grad_enabled, no_grad
from .init import manual_seed
from .module import Module, Parameter, Sequential
from .threads import get_num_threads, set_num_threads
from .batchnorm3d import BatchNorm3d
from .batchnorm_folding import conv_batchnorm_eval
from .concat import Concat
from .loss import MSELoss
from .maxpool3d import MaxPool3d
from .optim import AdamW, clip_grad_norm_
from .relu import ReLU
from .schedule import CosineAnnealingLR
