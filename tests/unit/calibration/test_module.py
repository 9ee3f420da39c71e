"""The calibration training loop against lightning.Trainer as the reference implementation:
the same seed gives bit-identical weights and epoch losses, for losses that need the sample
ids (ALDR-KL), the feature map (Bias) or neither (CE, focal), whether or not the last batch of
an epoch is a partial one (which decides how often the shuffling generator is drawn)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from trustlab.calibration.losses import build_loss
from trustlab.calibration.models import build_model
from trustlab.calibration.module import LossModule, fit, make_loader
from trustlab.core.seeding import seed_everything


class _TrainerModule(L.LightningModule):
    def __init__(self, model, loss, lr, weight_decay):
        super().__init__()
        self.inner = LossModule(model, loss)
        self.lr, self.weight_decay = lr, weight_decay
        self.epoch_losses: list[float] = []

    def on_train_epoch_start(self):
        self._sum, self._n = 0.0, 0

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        value = self.inner.compute_loss(x, y, ids)
        self._sum += float(value.detach()) * len(x)
        self._n += len(x)
        return value

    def on_train_epoch_end(self):
        self.epoch_losses.append(self._sum / self._n)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def _trainer_fit(model, loss, x, y, *, seed, epochs, lr, batch_size, weight_decay):
    seed_everything(seed)
    module = _TrainerModule(model, loss, lr, weight_decay)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, enable_checkpointing=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, train_dataloaders=make_loader(x, y, batch_size, seed))
    return module.epoch_losses


def _data(n=150, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :k].argmax(1) + (rng.random(n) < 0.2)) % k
    return x, y.astype(np.int64)


@pytest.mark.parametrize("n", [150, 160], ids=["partial last batch", "full batches only"])
@pytest.mark.parametrize("loss_name", ["ce", "focal", "aldr_kl", "bias"])
def test_fit_matches_a_lightning_trainer_bit_for_bit(loss_name, n):
    x, y = _data(n=n)
    settings = dict(seed=3, epochs=3, lr=1e-2, batch_size=32, weight_decay=1e-4)

    def build():
        seed_everything(3)
        return build_model(x.shape[1], 4, hidden=16, depth=2), build_loss(loss_name, n_samples=len(y))

    model_a, loss_a = build()
    ours = fit(model_a, loss_a, x, y, enable_progress_bar=False, **settings)
    model_b, loss_b = build()
    reference = _trainer_fit(model_b, loss_b, x, y, **settings)

    assert ours.train_losses == reference
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert not model_a.training, "the fitted model is left in eval mode"


def test_fit_learns_and_is_deterministic():
    x, y = _data(n=300)
    runs = []
    for _ in range(2):
        seed_everything(0)
        model = build_model(x.shape[1], 4, hidden=16)
        runs.append(fit(model, build_loss("ce"), x, y, seed=0, epochs=20, lr=1e-2, batch_size=32,
                        enable_progress_bar=False))  # fmt: skip
    assert runs[0].train_losses == runs[1].train_losses
    assert runs[0].train_losses[-1] < 0.5 * runs[0].train_losses[0]
