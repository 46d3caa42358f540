"""AdamW and gradient clipping.

Sources: Adam, Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015, Algorithm 1);
AdamW, Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019, Algorithm 2); and
the update documented for torch.optim.AdamW (https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html,
amsgrad=False, maximize=False), which is what this file computes. For every parameter theta with
gradient g = dL/dtheta (same shape as theta), at step t = 1, 2, ... (all operations elementwise;
every line has theta's shape):
    theta <- theta (1 - lr wd)                       (W)  decoupled weight decay: not added to g
    m     <- beta1 m + (1 - beta1) g                 (M)  first moment   (exp_avg),    m_0 = 0
    v     <- beta2 v + (1 - beta2) g^2               (V)  second moment  (exp_avg_sq), v_0 = 0
    m_hat  = m / (1 - beta1^t)                       (C1) bias corrections
    v_hat  = v / (1 - beta2^t)                       (C2)
    theta <- theta - lr m_hat / (sqrt(v_hat) + eps)  (U)
In code (C1), (C2) and (U) are written as PyTorch evaluates them,
    theta <- theta - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps),
so float32 results agree with PyTorch to rounding. Updates run in place, in the parameter's dtype, as
vectorised NumPy (one parameter at a time; there is no Python loop over elements).

Why bias correction (Kingma & Ba, section 3). Unrolling (M) from m_0 = 0 gives
    m_t = (1 - beta1) sum_{s=1..t} beta1^(t-s) g_s,  and the weights sum to 1 - beta1^t,
so if the gradients have a stationary mean, E[m_t] = (1 - beta1^t) E[g]: a moving average that starts
at zero underestimates by exactly that factor, badly at the start (t = 1: 0.1 for beta1 = 0.9, and
0.001 for beta2 = 0.999 in v). (C1) and (C2) divide it out. At t = 1, m_hat = g and v_hat = g^2, so the
first step moves each element by about lr in the direction of -sign(g).

Why decoupled weight decay (Loshchilov & Hutter). "Adam with L2 regularisation" adds wd/2 |theta|^2 to
the loss, i.e. g <- g + wd theta before (M) and (V). The decay term then goes through the adaptive
scaling of (U): it is divided by sqrt(v_hat), so weights whose gradients have been large (large v)
are decayed less than weights with small gradients, and the regulariser is no longer the uniform
shrinkage it is in plain SGD (where L2 and weight decay coincide). (W) instead shrinks every weight
by the same factor, outside the adaptive step; the paper shows this generalises better and makes the
best wd much less dependent on lr. Conventions differ in one place: the paper decays by
eta_t wd theta, with eta_t the schedule multiplier (not the step size alpha), while PyTorch and this
file decay by lr wd theta with lr the scheduled learning rate. A wd tuned for one convention does not
carry over to the other.

clip_grad_norm_ (as torch.nn.utils.clip_grad_norm_ with norm_type 2,
https://pytorch.org/docs/stable/generated/torch.nn.utils.clip_grad_norm_.html; global-norm clipping
as in Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML 2013):
    norm = sqrt(sum over all parameters and elements of g^2)      (N)  scalar, accumulated in float64
    if norm > max_norm:  g <- g * max_norm / (norm + 1e-6)        (K)  for every gradient, its shape
returns norm (before clipping). All gradients are scaled by one factor, so the update's direction is
kept and only its length is capped: one batch with an outlier gradient cannot throw the weights far.
"""
import numpy as np

from .module import Parameter


def _parameter_list(params, who):
    params = list(params)
    if not params:
        raise ValueError(f"{who}: got an empty parameter list")
    for index, param in enumerate(params):
        if not isinstance(param, Parameter):
            raise TypeError(f"{who}: parameter {index} is a {type(param).__name__}, expected nn3d Parameter "
                            f"(pass model.parameters())")
    return params


class AdamW:
    """AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2).

    `optimizer.lr` is the current learning rate (a scheduler sets it). State: `step_count` and, per
    parameter (in the order given), `exp_avg` and `exp_avg_sq` arrays of the parameter's shape and dtype.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.params = _parameter_list(params, "AdamW")
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamW: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas}")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.exp_avg = [np.zeros_like(p.data) for p in self.params]       # m, one per parameter
        self.exp_avg_sq = [np.zeros_like(p.data) for p in self.params]    # v, one per parameter

    def zero_grad(self):
        for param in self.params:
            param.grad[...] = 0

    def step(self):
        """One AdamW update of every parameter from its `.grad`, in place."""
        self.step_count += 1
        beta1, beta2 = self.betas
        t = self.step_count
        step_size = self.lr / (1 - beta1 ** t)                              # lr / (1 - beta1^t)
        bias_correction2_sqrt = np.sqrt(1 - beta2 ** t)                      # sqrt(1 - beta2^t)
        for index, (param, m, v) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            theta, g = param.data, param.grad                              # same shape, dtype
            if m.dtype != theta.dtype:
                raise TypeError(f"AdamW: parameter {index} is {theta.dtype} but its optimizer state is {m.dtype}; "
                                f"create the optimizer after Module.to()")
            theta *= theta.dtype.type(1 - self.lr * self.weight_decay)     # (W) decoupled weight decay
            m += (g - m) * m.dtype.type(1 - beta1)                         # (M) m = beta1 m + (1 - beta1) g
            v *= v.dtype.type(beta2)
            v += g * g * v.dtype.type(1 - beta2)                           # (V) v = beta2 v + (1 - beta2) g^2
            denom = np.sqrt(v)                                             # (C2) sqrt(v_hat) = sqrt(v) / sqrt(1 - beta2^t)
            denom /= denom.dtype.type(bias_correction2_sqrt)
            denom += denom.dtype.type(self.eps)                            # sqrt(v_hat) + eps
            theta -= (m / denom) * theta.dtype.type(step_size)             # (C1), (U) theta -= lr m_hat / (sqrt(v_hat) + eps)

    def state_dict(self):
        """The optimizer state as plain numbers and NumPy arrays (saves with np.savez, allow_pickle=False
        after flattening the lists):

            {"lr": float, "betas": [beta1, beta2], "eps": float, "weight_decay": float,
             "step": int,
             "exp_avg":    [array, ...]   one per parameter, in parameter order, parameter's shape/dtype
             "exp_avg_sq": [array, ...]   likewise}
        Arrays are copies.
        """
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "step": self.step_count,
                "exp_avg": [m.copy() for m in self.exp_avg],
                "exp_avg_sq": [v.copy() for v in self.exp_avg_sq]}

    def load_state_dict(self, state):
        """Restore a `state_dict()` (hyper-parameters, step count, moments), checking every array's shape."""
        expected = {"lr", "betas", "eps", "weight_decay", "step", "exp_avg", "exp_avg_sq"}
        if set(state) != expected:
            raise ValueError(f"AdamW.load_state_dict: keys {sorted(state)} differ from {sorted(expected)}")
        for key in ("exp_avg", "exp_avg_sq"):
            if len(state[key]) != len(self.params):
                raise ValueError(f"AdamW.load_state_dict: '{key}' has {len(state[key])} arrays but the optimizer "
                                 f"has {len(self.params)} parameters")
            for index, (array, param) in enumerate(zip(state[key], self.params)):
                if np.shape(array) != param.data.shape:
                    raise ValueError(f"AdamW.load_state_dict: '{key}[{index}]' has shape {np.shape(array)} but "
                                     f"parameter {index} has shape {param.data.shape}")
        self.lr = float(state["lr"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])
        self.weight_decay = float(state["weight_decay"])
        self.step_count = int(state["step"])
        self.exp_avg = [np.array(a, dtype=p.data.dtype) for a, p in zip(state["exp_avg"], self.params)]
        self.exp_avg_sq = [np.array(a, dtype=p.data.dtype) for a, p in zip(state["exp_avg_sq"], self.params)]


def clip_grad_norm_(params, max_norm):
    """Scale all gradients in place so their joint L2 norm is at most max_norm; return the norm before.

    norm = sqrt(sum_params sum_i g_i^2) in float64; if norm > max_norm, every g *= max_norm / (norm + 1e-6)
    (PyTorch's formula: the 1e-6 keeps the result just under max_norm and avoids dividing by 0).
    """
    params = _parameter_list(params, "clip_grad_norm_")
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be positive, got {max_norm}")
    total = 0.0
    for param in params:          # np.sum, not np.dot: a dot product would wake the BLAS threads (nn3d/threads.py)
        g = param.grad.reshape(-1).astype(np.float64)
        total += float(np.sum(g * g))
    norm = float(np.sqrt(total))                                   # (N)
    if norm > max_norm:
        coefficient = max_norm / (norm + 1e-6)
        for param in params:
            param.grad *= param.grad.dtype.type(coefficient)                        # (K)
    return norm
