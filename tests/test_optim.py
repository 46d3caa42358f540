"""AdamW, CosineAnnealingLR and clip_grad_norm_ against PyTorch: single updates, the cosine values,
clipping, 20 training steps of a small network, and state_dict round trips."""
import numpy as np
import pytest
import torch

from nn3d import (AdamW, BatchNorm3d, CosineAnnealingLR, MSELoss, Parameter, ReLU, Sequential, clip_grad_norm_,
                  manual_seed)
from nn3d.conv3d import Conv3d
from nn3d.gradcheck import max_relative_error
from torch_reference import load_into_torch

SHAPES = [(4, 3, 3, 3, 3), (4,), (1, 7)]


def parameter_pair(rng, dtype=np.float32):
    ours = [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in SHAPES]
    theirs = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in ours]
    return ours, theirs


def test_adamw_matches_torch_with_given_gradients():
    """The optimizer alone: the same gradient sequence into both; 20 steps, weight decay on."""
    rng = np.random.default_rng(0)
    ours, theirs = parameter_pair(rng)
    optimizer = AdamW(ours, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    reference = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for _ in range(20):
        for p, q in zip(ours, theirs):
            grad = rng.standard_normal(p.shape).astype(np.float32) * 10 ** rng.uniform(-3, 1)
            p.grad[...] = grad
            q.grad = torch.from_numpy(grad.copy())
        optimizer.step()
        reference.step()
    for p, q in zip(ours, theirs):
        # Same float32 operations in the same order: agreement to a few float32 roundings of |p| ~ 1.
        assert max_relative_error(p.data, q.detach().numpy()) < 1e-6
        assert p.data.dtype == np.float32
    for m, v, q in zip(optimizer.exp_avg, optimizer.exp_avg_sq, theirs):
        state = reference.state[q]
        assert max_relative_error(m, state["exp_avg"].numpy()) < 1e-6
        assert max_relative_error(v, state["exp_avg_sq"].numpy()) < 1e-6


@pytest.mark.parametrize("eta_min", [0.0, 1e-4])
def test_cosine_schedule_matches_torch(eta_min):
    optimizer = AdamW([Parameter(np.zeros(1, np.float32))], lr=0.1)
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = CosineAnnealingLR(optimizer, T_max=10, eta_min=eta_min)
    torch_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=10, eta_min=eta_min)
    for t in range(26):                                   # t = 0 .. 2 T_max + 5, past the minimum
        # closed form vs PyTorch's recursion: equal up to float64 rounding accumulated over t steps
        assert scheduler.get_last_lr()[0] == pytest.approx(torch_scheduler.get_last_lr()[0], rel=1e-12, abs=1e-15)
        assert optimizer.lr == scheduler.get_last_lr()[0]
        optimizer.step()
        reference.step()
        scheduler.step()
        torch_scheduler.step()
    assert isinstance(scheduler.get_last_lr(), list)


BLAS_ENTRY_POINTS = ("dot", "vdot", "inner", "matmul", "tensordot", "einsum")


def test_a_training_step_calls_no_blas(monkeypatch):
    """nn3d/threads.py: nn3d calls no BLAS, inside its kernels or between them (a BLAS call leaves
    OpenBLAS's threads busy-waiting on the cores the next kernels need). Every layer kind, the loss,
    clipping and AdamW, with NumPy's product functions made to fail."""
    import nn3d

    manual_seed(0)
    down = Sequential(Conv3d(16, 16, 3, padding=1), BatchNorm3d(16), ReLU(), nn3d.MaxPool3d(2))
    up = nn3d.ConvTranspose3d(16, 16, 2, stride=2)
    head = Conv3d(16, 1, 1)
    layers = (down, up, head)
    params = [p for layer in layers for p in layer.parameters()]
    optimizer = AdamW(params, lr=1e-3, weight_decay=1e-2)
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16, 16)).astype(np.float32)
    target = np.zeros((1, 1, 16, 16, 16), np.float32)

    def step():
        for p in params:
            p.grad[...] = 0
        y = head.forward(up.forward(down.forward(x)))
        criterion = MSELoss()
        criterion.forward(y, target)
        down.backward(up.backward(head.backward(criterion.backward())))
        clip_grad_norm_(params, 1e-3)                    # below the norm: clipping scales
        optimizer.step()

    step()                                               # compiled before the products are taken away
    for name in BLAS_ENTRY_POINTS:
        monkeypatch.setattr(np, name, lambda *args, name=name, **kwargs: pytest.fail(f"np.{name} called"))
    step()


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(1)
    ours, theirs = parameter_pair(rng)
    for p, q in zip(ours, theirs):
        p.grad[...] = rng.standard_normal(p.shape).astype(np.float32)
        q.grad = torch.from_numpy(p.grad.copy())
    norm = clip_grad_norm_(ours, 1.0)
    norm_ref = torch.nn.utils.clip_grad_norm_(theirs, 1.0).item()
    assert isinstance(norm, float) and norm == pytest.approx(norm_ref, rel=1e-6)   # float32 norm in torch
    for p, q in zip(ours, theirs):
        assert max_relative_error(p.grad, q.grad.numpy()) < 1e-6
    total = np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2) for p in ours))
    assert total == pytest.approx(1.0, rel=1e-5), "after clipping the norm is max_norm (minus the 1e-6)"
    before = [p.grad.copy() for p in ours]
    assert clip_grad_norm_(ours, 2.0) == pytest.approx(total)
    for p, grad in zip(ours, before):
        np.testing.assert_array_equal(p.grad, grad)        # under max_norm: untouched


def small_network(rng):
    """Conv-ReLU-BN-Conv. (Not Conv-BN: BatchNorm removes any per-channel constant, so the bias of a
    convolution right before it has gradient exactly 0 in theory, i.e. rounding noise in practice,
    which Adam's m / sqrt(v) blows up to steps of +-lr in both libraries independently.) The
    convolutions' initial weights come from nn3d's generator, seeded here so that they do not depend
    on which tests ran before in the same process."""
    manual_seed(0)
    network = Sequential(Conv3d(1, 4, 3, padding=1), ReLU(), BatchNorm3d(4), Conv3d(4, 1, 1))
    network[2].weight.data[...] = rng.uniform(0.5, 1.5, 4)
    network[2].bias.data[...] = rng.standard_normal(4) * 0.1
    twin = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.BatchNorm3d(4),
                               torch.nn.Conv3d(4, 1, 1))
    return network, twin


@pytest.mark.parametrize("dtype, tolerance", [
    # float64: both sides agree to rounding; 20 steps amplify it little. 1e-9.
    (np.float64, 1e-9),
    # float32: gradients differ by ~1e-6 (summation order); Adam divides m by sqrt(v), so where a
    # gradient is near 0 a relative difference of the gradient becomes a difference of up to ~lr in
    # one step. Parameters are O(0.3), lr 1e-2: 1e-4 relative to max|p| (observed ~1e-6).
    (np.float32, 1e-4)])
def test_twenty_training_steps_match_torch(dtype, tolerance):
    """AdamW + cosine schedule + clipping on Conv-ReLU-BN-Conv with MSE: parameters after 20 steps."""
    rng = np.random.default_rng(2)
    network, twin = small_network(rng)
    network.to(dtype)
    load_into_torch(twin, network)
    twin.to(torch.float64 if dtype == np.float64 else torch.float32)
    optimizer = AdamW(network.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = CosineAnnealingLR(optimizer, T_max=20, eta_min=1e-4)
    reference = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=1e-2)
    torch_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=20, eta_min=1e-4)
    criterion = MSELoss()
    clipped = 0
    for _ in range(20):
        x = rng.standard_normal((2, 1, 5, 6, 4)).astype(dtype)
        target = rng.standard_normal((2, 1, 5, 6, 4)).astype(dtype)
        loss = criterion.forward(network.forward(x), target)
        network.zero_grad()
        network.backward(criterion.backward())
        norm = clip_grad_norm_(network.parameters(), 0.5)
        optimizer.step()
        scheduler.step()

        loss_ref = torch.nn.functional.mse_loss(twin(torch.from_numpy(x)), torch.from_numpy(target))
        reference.zero_grad()
        loss_ref.backward()
        norm_ref = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5).item()
        reference.step()
        torch_scheduler.step()
        assert loss == pytest.approx(loss_ref.item(), rel=max(tolerance, 1e-12))
        assert norm == pytest.approx(norm_ref, rel=max(tolerance, 1e-12))
        clipped += norm > 0.5
    assert clipped >= 5, "the test must exercise clipping"
    for (name, value), (_, value_ref) in zip(network.state_dict().items(), twin.state_dict().items()):
        assert max_relative_error(value, value_ref.numpy()) < tolerance, name


def run_steps(network, optimizer, scheduler, rng, steps):
    criterion = MSELoss()
    for _ in range(steps):
        x = rng.standard_normal((1, 1, 4, 4, 4)).astype(np.float32)
        criterion.forward(network.forward(x), np.zeros_like(x))
        network.zero_grad()
        network.backward(criterion.backward())
        clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        scheduler.step()


def flatten(state, prefix=""):
    """Optimizer/scheduler state -> {name: array}, as a checkpoint writes it with np.savez."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            flat.update({f"{prefix}{key}.{i}": array for i, array in enumerate(value)})
        else:
            flat[prefix + key] = np.asarray(value)
    return flat


def unflatten(flat, prefix=""):
    state = {}
    for name, array in flat.items():
        key, _, index = name[len(prefix):].partition(".")
        if index:
            state.setdefault(key, []).append((int(index), array))
        else:
            state[key] = array.tolist()
    return {key: [a for _, a in sorted(value)] if isinstance(value, list) and value
            and isinstance(value[0], tuple) else value for key, value in state.items()}


def test_state_dict_round_trip_through_npz(tmp_path):
    """Train 3 steps, save model + optimizer + scheduler to .npz (allow_pickle=False), train 3 more;
    a fresh copy loaded from the file and trained on the same 3 batches ends bit-identical."""
    rng = np.random.default_rng(3)
    network, _ = small_network(rng)
    optimizer = AdamW(network.parameters(), lr=1e-2)
    scheduler = CosineAnnealingLR(optimizer, T_max=10)
    run_steps(network, optimizer, scheduler, rng, 3)
    path = tmp_path / "state.npz"
    np.savez(path, **{f"model.{k}": v for k, v in network.state_dict().items()},
             **flatten(optimizer.state_dict(), "optim."), **flatten(scheduler.state_dict(), "sched."))
    run_steps(network, optimizer, scheduler, np.random.default_rng(4), 3)

    with np.load(path, allow_pickle=False) as data:
        files = dict(data)
    copy, _ = small_network(np.random.default_rng(5))                      # different initial weights
    copy.load_state_dict({k[6:]: v for k, v in files.items() if k.startswith("model.")})
    copy_optimizer = AdamW(copy.parameters(), lr=0.5, weight_decay=0.0)      # overwritten by the load
    copy_scheduler = CosineAnnealingLR(copy_optimizer, T_max=99)
    copy_optimizer.load_state_dict(unflatten({k: v for k, v in files.items() if k.startswith("optim.")}, "optim."))
    copy_scheduler.load_state_dict(unflatten({k: v for k, v in files.items() if k.startswith("sched.")}, "sched."))
    assert copy_optimizer.step_count == 3 and copy_scheduler.last_epoch == 3
    assert copy_optimizer.lr == scheduler_lr_at(3, 1e-2, 10)
    run_steps(copy, copy_optimizer, copy_scheduler, np.random.default_rng(4), 3)

    for (key, value), copied in zip(network.state_dict().items(), copy.state_dict().values()):
        np.testing.assert_array_equal(value, copied, err_msg=key)
    for key, value in optimizer.state_dict().items():
        if isinstance(value, list) and isinstance(value[0], np.ndarray):
            for a, b in zip(value, copy_optimizer.state_dict()[key]):
                np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            assert copy_optimizer.state_dict()[key] == value, key
    assert copy_scheduler.state_dict() == scheduler.state_dict()
    assert copy_scheduler.get_last_lr() == scheduler.get_last_lr()


def scheduler_lr_at(t, lr0, T_max):
    return 0.0 + (lr0 - 0.0) * (1 + np.cos(np.pi * t / T_max)) / 2


def test_bad_arguments():
    param = Parameter(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(TypeError, match="parameter 0 is a ndarray"):
        AdamW([np.zeros(3)])
    with pytest.raises(ValueError, match="betas must be two numbers"):
        AdamW([param], betas=(0.9, 1.0))
    optimizer = AdamW([param])
    state = optimizer.state_dict()
    state["exp_avg"] = [np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match=r"'exp_avg\[0\]' has shape \(4,\) but parameter 0 has shape \(3,\)"):
        optimizer.load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        optimizer.load_state_dict({"lr": 1.0})
    with pytest.raises(ValueError, match="T_max must be a positive integer"):
        CosineAnnealingLR(optimizer, T_max=0)
    with pytest.raises(ValueError, match="max_norm must be positive"):
        clip_grad_norm_([param], 0.0)
    param.data = param.data.astype(np.float64)                     # what Module.to() does after creation
    with pytest.raises(TypeError, match="parameter 0 is float64 but its optimizer state is float32"):
        optimizer.step()
