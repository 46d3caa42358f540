"""Parameter, Module and Sequential: the containers every layer is built on.

There is no autograd here. Each layer is a `Module` with two methods written by hand:

    y = layer.forward(x)                    # remembers what backward will need
    grad_x = layer.backward(grad_y)         # dL/dx from dL/dy; adds dL/dw into each Parameter.grad

A model chains `forward` calls one way and `backward` calls the other way. That is all
backpropagation is: the chain rule applied layer by layer, in reverse order.

Names, shapes and `state_dict()` keys follow PyTorch's `torch.nn.Module`, so a state dict moves
between the two libraries unchanged (`{k: torch.from_numpy(v) for k, v in sd.items()}`).
"""
from collections import OrderedDict

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Parameter:
    """A learnable array: `.data` holds its values, `.grad` the gradient accumulated by backward.

    `.grad` has the shape and dtype of `.data`. Backward passes *add* into it, so gradients from
    several backward calls sum up until `Module.zero_grad()` sets it back to zero (as in PyTorch).
    """

    def __init__(self, data):
        data = np.asarray(data)
        if data.dtype not in FLOAT_DTYPES:
            data = data.astype(np.float32)
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model.

    Subclasses call `super().__init__()` first, then assign `Parameter`s, sub-`Module`s and buffers
    (`self.register_buffer(name, array)`) as attributes; assignment order is the `state_dict()` order.
    They implement `forward(*inputs)` and `backward(grad_output)`.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning '{name}'")
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = np.asarray(value)
            value = self._buffers[name]
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """A non-learnable state array saved in `state_dict()` (e.g. BatchNorm's running mean)."""
        self._buffers[name] = np.asarray(array)
        object.__setattr__(self, name, self._buffers[name])

    # ---- the two methods every layer writes by hand ---------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs):
        return self.forward(*inputs)

    # ---- traversal ------------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """Yield (name, module) for this module and every sub-module, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        """Yield (dotted name, Parameter), e.g. ('enc1.conv1.weight', Parameter)."""
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self):
        return [param for _, param in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for module_name, module in self.named_modules(prefix):
            for name, buffer in module._buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), buffer

    def num_parameters(self):
        return sum(param.data.size for param in self.parameters())

    # ---- modes and gradients --------------------------------------------------------------------
    def train(self, mode=True):
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for param in self.parameters():
            param.grad[...] = 0

    def to(self, dtype):
        """Cast parameters, their gradients and floating-point buffers to `dtype` (float32 or float64).

        float64 exists for finite-difference gradient checks; training runs in float32.
        """
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"nn3d modules run in float32 or float64, not {dtype}")
        for _, module in self.named_modules():
            for param in module._parameters.values():
                param.data = param.data.astype(dtype)
                param.grad = param.grad.astype(dtype)
            for name, buffer in list(module._buffers.items()):
                if buffer.dtype in FLOAT_DTYPES:
                    setattr(module, name, buffer.astype(dtype))
        return self

    # ---- state_dict -----------------------------------------------------------------------------
    def state_dict(self):
        """An ordered dict of copies of every parameter and buffer, keyed as PyTorch keys them:
        each module's own parameters, then its own buffers, then its children, depth first."""
        state = OrderedDict()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, param in module._parameters.items():
                state[prefix + name] = param.data.copy()
            for name, buffer in module._buffers.items():
                state[prefix + name] = np.array(buffer, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from `state_dict` into this module's parameters and buffers (in place).

        With `strict=True` a missing or unexpected key is an error; a shape mismatch always is.
        Values may be NumPy arrays or anything `np.asarray` accepts (a CPU torch tensor included).
        """
        own = OrderedDict()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name in module._parameters:
                own[prefix + name] = (module, name, True)
            for name in module._buffers:
                own[prefix + name] = (module, name, False)
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        if strict and (missing or unexpected):
            problems = []
            if missing:
                problems.append("missing key(s): " + ", ".join(missing))
            if unexpected:
                problems.append("unexpected key(s): " + ", ".join(unexpected))
            raise ValueError(f"load_state_dict for {type(self).__name__}: " + "; ".join(problems))
        for key, (module, name, is_param) in own.items():
            if key not in state_dict:
                continue
            value = np.asarray(state_dict[key])
            target = module._parameters[name].data if is_param else module._buffers[name]
            if value.shape != target.shape:
                raise ValueError(f"load_state_dict: '{key}' has shape {value.shape} in the state dict "
                                 f"but {target.shape} in the model")
            target[...] = value

    # ---- printing -------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; backward applies their backward passes in reverse order.

    Forward:   x_0 = x,  x_{i+1} = f_i(x_i),  y = x_n
    Backward:  dL/dx_i = f_i.backward(dL/dx_{i+1}), from i = n-1 down to 0 (the chain rule).
    Sub-modules are named '0', '1', ... as in PyTorch, so state_dict keys read '0.weight', ...
    """

    def __init__(self, *modules):
        super().__init__()
        for index, module in enumerate(modules):
            setattr(self, str(index), module)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def forward(self, x):
        for module in self._modules.values():
            x = module.forward(x)
        return x

    def backward(self, grad_output):
        for module in reversed(self._modules.values()):
            grad_output = module.backward(grad_output)
        return grad_output
