"""CosineAnnealingLR: the learning rate follows half a cosine from lr0 down to eta_min over T_max steps.

Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts" (ICLR 2017), without
restarts, as documented for torch.optim.lr_scheduler.CosineAnnealingLR
(https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.CosineAnnealingLR.html):
    lr_t = eta_min + (lr0 - eta_min) (1 + cos(pi t / T_max)) / 2,       t = number of step() calls   (S)
lr_0 = lr0, lr_{T_max} = eta_min, and the slope is zero at both ends: the rate stays near lr0 for a
while, falls fastest at t = T_max / 2, and eases into eta_min (SGDR's schedule within one run,
with its T_cur = t and T_i = T_max).
lr0 is the optimizer's lr when the scheduler is created. PyTorch computes the same values with a
recursive formula (each lr from the previous one); we use the closed form, which is what the
recursion equals mathematically; the tests show they agree to rounding for t = 0 .. 2 T_max + 5
(past T_max the cosine rises again, as in PyTorch).
"""
import math


class CosineAnnealingLR:
    """CosineAnnealingLR(optimizer, T_max, eta_min=0): `step()` advances t and sets optimizer.lr."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive integer, got {T_max!r}")
        self.optimizer = optimizer
        self.T_max = T_max
        self.eta_min = float(eta_min)
        self.base_lr = float(optimizer.lr)          # lr0
        self.last_epoch = 0                         # t
        self._set_lr()

    def _set_lr(self):
        t = self.last_epoch
        self.optimizer.lr = self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2   # (S)
        self._last_lr = [self.optimizer.lr]

    def step(self):
        self.last_epoch += 1
        self._set_lr()

    def get_last_lr(self):
        """[the lr set by the last step()], a list as in PyTorch (one entry per parameter group)."""
        return list(self._last_lr)

    def state_dict(self):
        """{"T_max": int, "eta_min": float, "base_lr": float, "last_epoch": int} (plain numbers)."""
        return {"T_max": self.T_max, "eta_min": self.eta_min, "base_lr": self.base_lr,
                "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        """Restore a `state_dict()` and set the optimizer's lr to the restored step's value."""
        expected = {"T_max", "eta_min", "base_lr", "last_epoch"}
        if set(state) != expected:
            raise ValueError(f"CosineAnnealingLR.load_state_dict: keys {sorted(state)} differ from {sorted(expected)}")
        self.T_max = int(state["T_max"])
        self.eta_min = float(state["eta_min"])
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self._set_lr()
