"""Single-pass error detectors on a frozen classifier: MSP, predictive entropy and SPC.

A detector turns one forward pass (probabilities ``p`` and penultimate features ``h``) into an
uncertainty ``u``, higher for inputs the classifier likely gets wrong. Every detector is
registered in :data:`DETECTORS`; ``fit`` sees the VALIDATION split only (the test metrics never
do) and ``score`` costs one pass of the frozen classifier plus, for SPC, a tiny head on ``h``.

SPC (split-point self-consistency, post-hoc): a small head on the frozen features predicts per
class the mean absolute residual ``mar_c ~ E|Y_c - p_c|`` (``Y = onehot(y)``) and its parts above
and below the prediction, ``mar_up_c ~ E[Y_c (1 - p_c)]`` and ``mar_down_c ~ E[(1 - Y_c) p_c]``,
trained on the validation split. If ``P(Y_c = 1 | x) = q_c`` then ``mar_up_c - mar_down_c =
q_c - p_c`` (the paper's adjusted probability is ``p_c`` plus this shift) and
``mar_c = q_c (1 - p_c) + (1 - q_c) p_c``; for a calibrated model (``q = p``)
``mar_c = 2 p_c (1 - p_c)``, and the paper's discrepancy ``sum_c |mar_c - 2 p_c (1 - p_c)|``
measures how far the model is from that self-consistent state around this input.
Background: docs/methods/calibration.md.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trustlab.core.registry import Registry

__all__ = ["DETECTORS", "Detector", "MSP", "PredictiveEntropy", "SPC", "SPC_UNCERTAINTIES", "auroc",
           "expected_abs_residual", "split_point_adjustment", "split_point_targets"]

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
    """Features -> per class the mean absolute residual and its two split-point parts (above and
    below p), each in (0, 1): an output of shape (n, 3, K)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 3 * num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(h)).view(-1, 3, self.num_classes)


def split_point_targets(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, 3, K) targets with Y = onehot(y): |Y - p|, the residual above p, Y (1 - p), and the
    one below it, (1 - Y) p (the two parts add up to the first)."""
    onehot = nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
    return torch.stack([(onehot - p).abs(), onehot * (1 - p), (1 - onehot) * p], dim=1)


def split_point_adjustment(mar: np.ndarray, mar_up: np.ndarray, mar_down: np.ndarray, tol: float) -> np.ndarray:
    """The paper's shift of p_c: min(mar_up - mar_down, mar - 2 mar_down, 2 mar_up - mar) where the
    heads agree, |mar_up + mar_down - mar| < tol, and 0 elsewhere.

    ``mar_up - mar_down`` estimates E[Y_c - p_c], the mean signed residual; the three forms are
    equal when ``mar = mar_up + mar_down`` and the minimum is the most cautious of them."""
    shift = np.minimum(np.minimum(mar_up - mar_down, mar - 2 * mar_down), 2 * mar_up - mar)
    return np.where(np.abs(mar_up + mar_down - mar) < tol, shift, 0.0)


SPC_UNCERTAINTIES = ("adjusted_confidence", "discrepancy")


@DETECTORS.register("spc")
class SPC(Detector):
    """SPC: u = 1 - q_yhat, q = p + split-point shift, yhat = argmax p; or, with
    uncertainty="discrepancy", the paper's score u = sum_c |mar_c(h) - 2 p_c (1 - p_c)|.

    One head on the validation split predicts mar, mar_up and mar_down per class. The paper
    detects errors with the discrepancy; it is unsigned, so it also grows where the classifier
    is *under*confident (``|mar_c - 2 p_c (1 - p_c)| = |q_c - p_c| |1 - 2 p_c|``), which is not
    where its errors are. The default ranks by the paper's adjusted probability of the predicted
    class instead, the probability that the prediction is right once the residuals correct it.
    """

    label = "SPC"

    def __init__(self, hidden: int = 32, steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4,
                 seed: int = 0, uncertainty: str = "adjusted_confidence", consistency_tol: float = 0.05):  # fmt: skip
        if uncertainty not in SPC_UNCERTAINTIES:
            allowed = ", ".join(map(repr, SPC_UNCERTAINTIES))
            raise ValueError(f"uncertainty = {uncertainty!r} is not allowed: one of {allowed}")
        if not consistency_tol > 0:
            raise ValueError(f"consistency_tol = {consistency_tol}: a positive tolerance is required")
        self.hidden, self.steps, self.lr, self.weight_decay, self.seed = hidden, steps, lr, weight_decay, seed
        self.uncertainty, self.consistency_tol = uncertainty, float(consistency_tol)
        self.head: ResidualHead | None = None
        self.shift = self.scale = None

    def fit(self, p, h, y):
        p = torch.as_tensor(np.asarray(p), dtype=torch.float32)
        h = torch.as_tensor(np.asarray(h), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        target = split_point_targets(p, y)
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
            loss = ((self.head(z) - target) ** 2).mean()  # squared error -> the conditional mean residuals
            loss.backward()
            opt.step()
        self.head.eval()
        return self

    @torch.no_grad()
    def residuals(self, h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The head's mar, mar_up and mar_down per class, each (n, K)."""
        z = (torch.as_tensor(np.asarray(h), dtype=torch.float32) - self.shift) / self.scale
        out = self.head(z).numpy().astype(np.float64)
        return out[:, 0], out[:, 1], out[:, 2]

    def mar(self, h) -> np.ndarray:
        """The head's predicted mean absolute residual per class."""
        return self.residuals(h)[0]

    def adjusted(self, p, h) -> np.ndarray:
        """The paper's adjusted probabilities q = p + split-point shift (not renormalised)."""
        return np.asarray(p, dtype=np.float64) + split_point_adjustment(*self.residuals(h), self.consistency_tol)

    def score(self, p, h):
        p = np.asarray(p, dtype=np.float64)
        if self.uncertainty == "discrepancy":
            return np.abs(self.mar(h) - expected_abs_residual(p)).sum(1)
        return 1.0 - np.take_along_axis(self.adjusted(p, h), p.argmax(1)[:, None], axis=1)[:, 0]
