"""The training curves of a run's history: loss, validation MAE and learning rate per epoch."""
import matplotlib.pyplot as plt

from mri2ct.common.drawing import save_figure


def plot_training_curves(history, path):
    """Train/validation loss (log scale), validation MAE in HU, and the learning rate, per epoch.

    history: the list of per-epoch dicts that mri2ct.train writes to history.json.
    """
    epochs = [record["epoch"] for record in history]
    validated = [record for record in history if record["val_loss"] is not None]   # --val-every
    figure, (loss_axes, mae_axes, lr_axes) = plt.subplots(1, 3, figsize=(15, 4))
    loss_axes.semilogy(epochs, [r["train_loss"] for r in history], "o-", ms=3, label="train")
    loss_axes.semilogy([r["epoch"] for r in validated], [r["val_loss"] for r in validated], "o-", ms=3,
                       label="validation")
    loss_axes.set(xlabel="epoch", ylabel="MSE of HU / 1000", title="loss")
    loss_axes.legend()
    mae_axes.semilogy([r["epoch"] for r in validated], [r["val_mae_hu"] for r in validated], "o-", ms=3,
                      color="C1")
    mae_axes.set(xlabel="epoch", ylabel="HU", title="validation MAE inside the head mask")
    lr_axes.semilogy(epochs, [r["lr"] for r in history], "o-", ms=3, color="C2")
    lr_axes.set(xlabel="epoch", ylabel="learning rate", title="learning rate (start of epoch)")
    for axes in (loss_axes, mae_axes, lr_axes):
        axes.grid(True, which="both", alpha=0.3)
    save_figure(figure, path)
