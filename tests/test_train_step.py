"""mri2ct.training.step: the one training step is the textbook sequence, bit for bit, and its two halves
compose into gradient accumulation (K micro-batches with grad_scale 1/K = one batch of K);
accumulated_step weighs micro-batches of unequal size by their samples and gives BatchNorm's running
statistics one update per step with the micro-batches' mean statistics."""
import numpy as np
import pytest

import nn3d
from mri2ct.model import UNet3D
from mri2ct.training.step import accumulated_step, forward_backward, optimizer_step, train_step

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


def test_micro_batches_of_unequal_size_are_weighed_by_their_samples():
    """An epoch's last step: micro-batches of 2 and 1 samples with weights 2/3 and 1/3 give the
    gradient, loss and update of the batch of 3 (no BatchNorm: the samples are independent). float32
    sums in another order, ~1e-7 relative: rtol 1e-5."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 5, 6, 7)).astype(np.float32)              # (N, C, D, H, W)
    target = rng.standard_normal((3, 3, 5, 6, 7)).astype(np.float32)
    runs = []
    for micro_batches in ([(x, target, 1.0)], [(x[:2], target[:2], 2 / 3), (x[2:], target[2:], 1 / 3)]):
        nn3d.manual_seed(0)
        conv = nn3d.Conv3d(2, 3, 3, padding=1)
        optimizer = nn3d.AdamW(conv.parameters(), lr=1e-2)
        scheduler = nn3d.CosineAnnealingLR(optimizer, T_max=4)
        loss = accumulated_step(conv, nn3d.MSELoss(), optimizer, scheduler, micro_batches, clip=1e6,
                                micro_batch_count=len(micro_batches))
        runs.append((loss, [p.grad.copy() for p in conv.parameters()], [p.data.copy() for p in conv.parameters()]))
    (batch_loss, batch_grads, batch_weights), (loss, grads, weights) = runs
    assert loss == pytest.approx(batch_loss, rel=1e-6)
    for got, expected in zip(grads + weights, batch_grads + batch_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_running_statistics_get_one_update_with_the_mean_statistics():
    """Two micro-batches through Conv3d -> BatchNorm3d: running_mean = (1 - m) r + m mean_j mu_j and
    running_var likewise with each micro-batch's unbiased variance; the counter advances by one.
    Reference in float64 from the conv outputs."""
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((n, 1, 4, 5, 6)).astype(np.float32) + shift,
                rng.standard_normal((n, 2, 4, 5, 6)).astype(np.float32)) for n, shift in ((2, 0.0), (1, 3.0))]
    nn3d.manual_seed(0)
    model = nn3d.Sequential(nn3d.Conv3d(1, 2, 3, padding=1), nn3d.BatchNorm3d(2))
    conv, bn = model[0], model[1]
    bn.running_mean[...] = (0.5, -0.25)
    start_mean, start_var = bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)
    with nn3d.no_grad():
        outputs = [conv.forward(x).astype(np.float64) for x, _ in batches]          # (n, 2, 4, 5, 6) each
    means = [y.mean(axis=(0, 2, 3, 4)) for y in outputs]
    variances = [y.var(axis=(0, 2, 3, 4), ddof=1) for y in outputs]
    m = bn.momentum
    optimizer = nn3d.AdamW(model.parameters(), lr=1e-3)
    micro_batches = [(x, t, x.shape[0] / 3) for x, t in batches]
    accumulated_step(model, nn3d.MSELoss(), optimizer, nn3d.CosineAnnealingLR(optimizer, T_max=2), micro_batches,
                     clip=1.0, micro_batch_count=2)
    np.testing.assert_allclose(bn.running_mean, (1 - m) * start_mean + m * np.mean(means, axis=0), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, (1 - m) * start_var + m * np.mean(variances, axis=0), rtol=1e-6)
    assert int(bn.num_batches_tracked) == 1
