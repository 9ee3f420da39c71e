"""Training: one small loop for every loss in :mod:`.losses`.

The batch is ``(x, y, sample_id)`` (see :class:`~trustlab.calibration.data.IndexedDataset`);
``y`` is an integer label or a soft-label row. Losses that need the sample ids (ALDR-KL) or the
last feature map (Bias loss) get them as keyword arguments, according to ``loss.needs``.

:func:`fit` seeds everything (``trustlab.core.seeding.seed_everything``), shuffles with its own seeded
generator and runs Adam for a number of epochs. Same seed, same data -> the same weights.

It is a plain loop rather than ``lightning.Trainer`` because these models are MLPs whose step
takes about a millisecond: the Trainer's hooks and callbacks added about 60% to every step
(1.33 s against 0.82 s for a default fit on the digits), and a calibration stage trains over
a thousand of them. The loop performs the Trainer's operations in the same order
(loss, zero_grad, backward, step) and draws the same shuffles, so the weights are bit-identical
to a Trainer fit; a unit test checks that against ``lightning.Trainer``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from trustlab.calibration.data import IndexedDataset
from trustlab.core.progress import progress, progress_enabled
from trustlab.core.seeding import seed_everything

__all__ = ["LossModule", "FitResult", "fit", "make_loader", "predict_logits", "predict_logits_features"]


class LossModule(nn.Module):
    """A model with ``forward_features(x) -> (logits, features)`` and its loss module (whose
    parameters, if any, train with the model's)."""

    def __init__(self, model: nn.Module, loss: nn.Module):
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.needs = frozenset(getattr(loss, "needs", frozenset()))

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
    """Train ``model`` with ``loss`` on ``(x, y)`` for ``epochs`` epochs of Adam; ``train_losses``
    holds each epoch's mean training loss.

    The caller builds the model after ``seed_everything(seed)`` (see
    :func:`trustlab.calibration.run.train_one`), so initial weights are seeded too.
    The progress bar (one tick per epoch) follows ``trustlab.core.progress`` unless given.
    """
    seed_everything(seed)
    module = LossModule(model, loss)
    loader = make_loader(x, y, batch_size, seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    bar = progress_enabled() if enable_progress_bar is None else enable_progress_bar
    epoch_losses: list[float] = []
    t0 = time.perf_counter()
    module.train()
    # Exactly len(loader) batches an epoch, leaving the iterator unexhausted like the Trainer:
    # exhausting it after a full last batch draws one more permutation from the shuffling
    # generator and so changes every later epoch's order.
    n_batches = len(loader)
    for _ in progress(range(epochs), desc="epochs", total=epochs) if bar else range(epochs):
        total, n = 0.0, 0
        for xb, yb, ids in itertools.islice(loader, n_batches):
            value = module.compute_loss(xb, yb, ids)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(xb)
            n += len(xb)
        epoch_losses.append(total / max(n, 1))
    model.eval()
    loss.eval()
    return FitResult(model=model, loss=loss, seconds=time.perf_counter() - t0, train_losses=epoch_losses)


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
