"""Training with Lightning: one LightningModule for every loss in :mod:`.losses`.

The batch is ``(x, y, sample_id)`` (see :class:`~trustlab.calibration.data.IndexedDataset`);
``y`` is an integer label or a soft-label row. Losses that need the sample ids (ALDR-KL) or the
last feature map (Bias loss) get them as keyword arguments, according to ``loss.needs``.

:func:`fit` seeds everything (``trustlab.core.seeding.seed_everything``), shuffles with its own seeded
generator, runs ``lightning.Trainer`` on the CPU with no logger and no checkpoint files, and
returns the trained model. Same seed, same data -> the same weights.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from trustlab.calibration.data import IndexedDataset
from trustlab.core.progress import progress_enabled
from trustlab.core.seeding import seed_everything

__all__ = ["LossModule", "FitResult", "fit", "make_loader", "predict_logits", "predict_logits_features"]


class LossModule(L.LightningModule):
    """Wraps a model with ``forward_features(x) -> (logits, features)`` and a loss module."""

    def __init__(self, model: nn.Module, loss: nn.Module, lr: float = 1e-2, weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.needs = frozenset(getattr(loss, "needs", frozenset()))
        self.losses: list[float] = []  # per-epoch mean training loss

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def compute_loss(self, x: Tensor, y: Tensor, ids: Tensor) -> Tensor:
        logits, feats = self.model.forward_features(x)
        kwargs = {}
        if "sample_ids" in self.needs:
            kwargs["sample_ids"] = ids
        if "features" in self.needs:
            kwargs["features"] = feats
        return self.loss_fn(logits, y, **kwargs)

    def on_train_epoch_start(self) -> None:
        self._epoch_sum, self._epoch_n = 0.0, 0

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        loss = self.compute_loss(x, y, ids)
        self._epoch_sum += float(loss.detach()) * len(x)
        self._epoch_n += len(x)
        return loss

    def on_train_epoch_end(self) -> None:
        self.losses.append(self._epoch_sum / max(self._epoch_n, 1))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def make_loader(x, y, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """Batches of ``(x, y, sample_id)`` drawn by index (no per-item collation), reshuffled each
    epoch by a generator seeded with ``seed``."""
    ds = IndexedDataset(x, y)
    gen = torch.Generator().manual_seed(seed)
    base = RandomSampler(ds, generator=gen) if shuffle else range(len(ds))
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=False)
    return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=0)


@dataclass
class FitResult:
    model: nn.Module
    loss: nn.Module
    seconds: float
    train_losses: list[float]


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def fit(
    model: nn.Module,
    loss: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    enable_progress_bar: bool | None = None,
) -> FitResult:
    """Train ``model`` with ``loss`` on ``(x, y)`` for ``epochs`` epochs of Adam.

    The caller builds the model after ``seed_everything(seed)`` (see
    :func:`trustlab.calibration.run.train_one`), so initial weights are seeded too.
    No checkpoint files, no logger; the progress bar follows ``trustlab.core.progress`` unless given.
    """
    _quiet_lightning()
    seed_everything(seed)
    module = LossModule(model, loss, lr=lr, weight_decay=weight_decay)
    loader = make_loader(x, y, batch_size, seed)
    bar = progress_enabled() if enable_progress_bar is None else enable_progress_bar
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10**6,
        default_root_dir=None,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    model.eval()
    loss.eval()
    return FitResult(model=model, loss=loss, seconds=time.perf_counter() - t0, train_losses=list(module.losses))


@torch.no_grad()
def predict_logits_features(model: nn.Module, x, batch_size: int = 8192) -> tuple[Tensor, Tensor]:
    model.eval()
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    outs, feats = [], []
    for i in range(0, len(xt), batch_size):
        o, f = model.forward_features(xt[i:i + batch_size])
        outs.append(o)
        feats.append(f)
    return torch.cat(outs), torch.cat(feats)


@torch.no_grad()
def predict_logits(model: nn.Module, x, batch_size: int = 8192) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, no gradients."""
    return predict_logits_features(model, x, batch_size)[0]
