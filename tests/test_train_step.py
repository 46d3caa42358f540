"""mri2ct.train_step: the one training step is the textbook sequence, bit for bit, and its two halves
compose into gradient accumulation (K micro-batches with grad_scale 1/K = one batch of K)."""
import numpy as np
import pytest

import nn3d
from mri2ct.model import UNet3D
from mri2ct.train_step import forward_backward, optimizer_step, train_step

FEATURES = (4, 8, 16, 32)


def tiny_run():
    nn3d.manual_seed(0)
    model = UNet3D(features=FEATURES).train()
    optimizer = nn3d.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=10, eta_min=1e-5)
    return model, nn3d.MSELoss(), optimizer, scheduler


def test_train_step_is_the_textbook_step():
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((1, 1, 16, 24, 16)).astype(np.float32),
                rng.standard_normal((1, 1, 16, 24, 16)).astype(np.float32)) for _ in range(2)]
    model, criterion, optimizer, scheduler = tiny_run()
    losses = [train_step(model, criterion, optimizer, scheduler, x, t, clip=0.5) for x, t in batches]

    reference, criterion, optimizer, scheduler = tiny_run()
    for (x, t), loss in zip(batches, losses):
        assert criterion.forward(reference.forward(x), t) == loss
        reference.zero_grad()
        reference.backward(criterion.backward())
        nn3d.clip_grad_norm_(reference.parameters(), 0.5)
        optimizer.step()
        scheduler.step()
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert optimizer.lr < 1e-3                                              # the schedule advanced


def test_accumulated_micro_batches_give_the_batch_gradient():
    """Without BatchNorm (which couples the samples of a batch), the MSE gradient of a batch of 2 is
    the mean of the two samples' gradients: zero_grad, two forward_backward with grad_scale 1/2."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 5, 6, 7)).astype(np.float32)
    target = rng.standard_normal((2, 3, 5, 6, 7)).astype(np.float32)
    nn3d.manual_seed(0)
    conv = nn3d.Conv3d(2, 3, 3, padding=1)
    criterion = nn3d.MSELoss()

    conv.zero_grad()
    forward_backward(conv, criterion, x, target)
    batch_grads = [p.grad.copy() for p in conv.parameters()]

    conv.zero_grad()
    losses = [forward_backward(conv, criterion, x[i:i + 1], target[i:i + 1], grad_scale=0.5) for i in range(2)]
    for accumulated, expected in zip((p.grad for p in conv.parameters()), batch_grads):
        np.testing.assert_allclose(accumulated, expected, rtol=1e-5, atol=1e-6)
    assert np.mean(losses) == pytest.approx(criterion.forward(conv.forward(x), target), rel=1e-6)

    optimizer = nn3d.AdamW(conv.parameters(), lr=1e-3)
    norm = optimizer_step(conv.parameters(), optimizer, nn3d.CosineAnnealingLR(optimizer, T_max=4), clip=1e-3)
    assert norm == pytest.approx(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in batch_grads)), rel=1e-5)
    assert optimizer.lr < 1e-3                                              # the schedule advanced
