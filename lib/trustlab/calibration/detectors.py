"""Single-pass error detectors on a frozen classifier: MSP, predictive entropy and SPC.

A detector turns one forward pass (probabilities ``p`` and penultimate features ``h``) into an
uncertainty ``u``, higher for inputs the classifier likely gets wrong. Every detector is
registered in :data:`DETECTORS`; ``fit`` sees the VALIDATION split only (the test metrics never
do) and ``score`` costs one pass of the frozen classifier plus, for SPC, a tiny head on ``h``.

SPC (split-point self-consistency, post-hoc): a small head on the frozen features predicts the
mean absolute residual per class, ``mar_c ~ E|onehot(y)_c - p_c|``, trained on the validation
split. If ``p`` were calibrated, the class indicator would be Bernoulli(``p_c``) and
``E|Y_c - p_c| = p_c (1 - p_c) + (1 - p_c) p_c = 2 p_c (1 - p_c)``; the discrepancy
``u = sum_c |mar_c - 2 p_c (1 - p_c)|`` measures how far the model is from that self-consistent
state around this input. Background: docs/methods/calibration.md.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trustlab.core.registry import Registry

__all__ = ["DETECTORS", "Detector", "MSP", "PredictiveEntropy", "SPC", "expected_abs_residual", "auroc"]

DETECTORS: Registry = Registry("error detector")


def expected_abs_residual(p: np.ndarray) -> np.ndarray:
    """``E|Y_c - p_c|`` when ``Y_c ~ Bernoulli(p_c)``: ``2 p_c (1 - p_c)`` (the calibrated residual)."""
    return 2.0 * p * (1.0 - p)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` items (ties count half); NaN
    when one class is empty."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class Detector:
    """``fit(p_val, h_val, y_val)`` on the validation split, then ``score(p, h) -> u`` (higher:
    more likely an error)."""

    label = ""

    def fit(self, p: np.ndarray, h: np.ndarray, y: np.ndarray) -> Detector:
        return self

    def score(self, p: np.ndarray, h: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@DETECTORS.register("msp")
class MSP(Detector):
    """Maximum softmax probability: u = 1 - max_c p_c."""

    label = "MSP"

    def score(self, p, h):
        return 1.0 - np.asarray(p).max(1)


@DETECTORS.register("entropy")
class PredictiveEntropy(Detector):
    """Predictive entropy: u = -sum_c p_c log p_c."""

    label = "Entropy"

    def score(self, p, h):
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
        return -(p * np.log(p)).sum(1)


class ResidualHead(nn.Module):
    """Features -> predicted mean absolute residual per class, in (0, 1)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(h))


@DETECTORS.register("spc")
class SPC(Detector):
    """SPC discrepancy: u = sum_c |mar_c(h) - 2 p_c (1 - p_c)|, mar from a head fit on validation residuals."""

    label = "SPC"

    def __init__(self, hidden: int = 32, steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4,
                 seed: int = 0):  # fmt: skip
        self.hidden, self.steps, self.lr, self.weight_decay, self.seed = hidden, steps, lr, weight_decay, seed
        self.head: ResidualHead | None = None
        self.shift = self.scale = None

    def fit(self, p, h, y):
        p = torch.as_tensor(np.asarray(p), dtype=torch.float32)
        h = torch.as_tensor(np.asarray(h), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        target = (nn.functional.one_hot(y, p.shape[1]).float() - p).abs()
        # standardise the features with the validation statistics: the head trains in few steps
        self.shift, self.scale = h.mean(0), h.std(0) + 1e-6
        gen = torch.Generator().manual_seed(self.seed)  # own generator: the global RNG stays untouched
        self.head = ResidualHead(h.shape[1], p.shape[1], self.hidden)
        with torch.no_grad():
            for param in self.head.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * (1.0 / max(1, param.shape[-1])) ** 0.5)
        opt = torch.optim.Adam(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        z = (h - self.shift) / self.scale
        for _ in range(self.steps):  # full batch: the validation split is small
            opt.zero_grad()
            loss = ((self.head(z) - target) ** 2).mean()  # squared error -> the conditional mean residual
            loss.backward()
            opt.step()
        self.head.eval()
        return self

    @torch.no_grad()
    def mar(self, h) -> np.ndarray:
        """The head's predicted mean absolute residual per class."""
        z = (torch.as_tensor(np.asarray(h), dtype=torch.float32) - self.shift) / self.scale
        return self.head(z).numpy().astype(np.float64)

    def score(self, p, h):
        return np.abs(self.mar(h) - expected_abs_residual(np.asarray(p, dtype=np.float64))).sum(1)
