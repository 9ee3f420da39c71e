"""Calibration metrics on predicted probabilities (N, K) and integer labels (N,).

Binning convention (same as torchmetrics): with B equal-width bins on [0, 1] a confidence c
goes to bin ``floor(c * B)`` (bins are ``[lo, hi)``), except that c = 1.0 goes into the last
bin ``[1 - 1/B, 1]``. torchmetrics' ``MulticlassCalibrationError`` puts c = 1.0 into an extra,
hidden (B+1)-th bin, which changes ECE whenever a model is saturated in float32; our
functions agree with it everywhere else (tested).

Every function accepts torch tensors or NumPy arrays and returns a Python float, except
:func:`calibration_bins` / :func:`confidence_bins` (dicts of arrays) and :func:`evaluate` /
:func:`binary_metrics` (dicts).

Inputs are checked, not guessed: the functions that take ``probs`` (ECE, MCE, adaptive and
classwise ECE, Brier, AURC, reliability bins) need an (N, K) array of probabilities, values
in [0, 1] and rows summing to 1 within :data:`ROW_SUM_TOL`, and raise a ValueError naming
``probs`` otherwise (logits passed by mistake give ECE values above 1 rather than an error
otherwise). :func:`accuracy` takes probabilities or logits (the argmax is the same);
:func:`nll`, :func:`evaluate` and :func:`binary_metrics` take logits. The reliability
diagrams are drawn by :mod:`trustlab.calibration.figures`.

References: Guo et al. 2017 (ECE, MCE, reliability diagrams, temperature scaling); Nixon et al.
2019 "Measuring Calibration in Deep Learning" (adaptive / classwise ECE); Kull et al. 2019
(classwise ECE); Geifman & El-Yaniv 2017/2019 (AURC); Brier 1950.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "N_BINS",
    "accuracy",
    "nll",
    "ece",
    "mce",
    "adaptive_ece",
    "adaptive_bin_indices",
    "classwise_ece",
    "brier",
    "aurc",
    "bin_indices",
    "calibration_bins",
    "confidence_bins",
    "confidence_ece",
    "confidence_adaptive_ece",
    "evaluate",
    "binary_metrics",
    "check_probs",
    "METRIC_NAMES",
    "ROW_SUM_TOL",
]

N_BINS = 15
ROW_SUM_TOL = 1e-4  # float32 softmax rows sum to 1 within ~1e-6 per class
METRIC_NAMES = ("acc", "nll", "ece", "mce", "ada_ece", "cw_ece", "brier", "aurc")


def _t(x: Any, dtype=torch.float64) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _labels(y: Any) -> Tensor:
    return _t(y, torch.long)


def check_probs(probs: Any, name: str = "probs") -> Tensor:
    """``probs`` as a float64 (N, K) tensor, after checking it holds probabilities: finite values
    in [0, 1], rows summing to 1 within :data:`ROW_SUM_TOL`. A ValueError names the parameter,
    what it got and what is allowed."""
    p = _t(probs)
    if p.dim() != 2:
        raise ValueError(f"{name} must be an (N, K) array of class probabilities; got shape {tuple(p.shape)}")
    if p.numel() == 0:
        return p
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} must hold finite probabilities; got {int((~torch.isfinite(p)).sum())} NaN/inf values")
    lo, hi = float(p.min()), float(p.max())
    worst = float((p.sum(dim=-1) - 1.0).abs().max())
    if lo < 0.0 or hi > 1.0 or worst > ROW_SUM_TOL:
        raise ValueError(
            f"{name} must be class probabilities: values in [0, 1] and each row summing to 1 (within "
            f"{ROW_SUM_TOL:g}); got values in [{lo:.4g}, {hi:.4g}] and a row sum off by {worst:.3g}. "
            f"Pass softmax(logits), not logits"
        )
    return p


def _top(probs: Any) -> tuple[Tensor, Tensor]:
    conf, pred = check_probs(probs).max(dim=-1)
    return conf, pred


# -- basics -----------------------------------------------------------------------------------


def accuracy(probs: Any, labels: Any) -> float:
    """Top-1 accuracy (argmax of probs or logits)."""
    return float((_t(probs).argmax(dim=-1) == _labels(labels)).double().mean())


def nll(logits: Any, labels: Any) -> float:
    """Negative log-likelihood from **logits**: ``mean_i -log softmax(z_i)_{y_i}``."""
    return float(F.cross_entropy(_t(logits), _labels(labels)))


def brier(probs: Any, labels: Any) -> float:
    """Multiclass Brier ``mean_i sum_k (p_ik - onehot(y_i)_k)^2`` in [0, 2]."""
    p = check_probs(probs)
    onehot = F.one_hot(_labels(labels), p.shape[-1]).double()
    return float(((p - onehot) ** 2).sum(dim=-1).mean())


def aurc(probs: Any, labels: Any) -> float:
    """Area under the risk-coverage curve (Geifman et al.): sort by confidence (descending,
    stable), risk(i) = errors among the i most confident / i, AURC = mean_i risk(i)."""
    conf, pred = _top(probs)
    err = (pred != _labels(labels)).double()
    order = torch.argsort(-conf, stable=True)
    cum = torch.cumsum(err[order], 0)
    risk = cum / torch.arange(1, len(err) + 1, dtype=torch.float64)
    return float(risk.mean())


# -- binning ----------------------------------------------------------------------------------


def bin_indices(conf: Any, n_bins: int = N_BINS) -> Tensor:
    """Equal-width bin of each confidence: ``floor(c * n_bins)``, with c = 1.0 in the last bin.
    Same ``[lo, hi)`` edges as torchmetrics (``bucketize(c, linspace(0, 1, B+1), right=True) - 1``)."""
    c = _t(conf).contiguous()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=c.dtype)
    idx = torch.bucketize(c, edges, right=True) - 1
    return idx.clamp(0, n_bins - 1)


def _binned_gaps(conf: Tensor, correct: Tensor, idx: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin: count, mean accuracy, mean confidence (0 for empty bins)."""
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    s_conf = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, conf)
    s_acc = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, correct)
    safe = count.clamp(min=1)
    return count, s_acc / safe, s_conf / safe


def _ece_from(conf: Tensor, correct: Tensor, idx: Tensor, n_bins: int, norm: str = "l1") -> float:
    count, acc, mconf = _binned_gaps(conf, correct, idx, n_bins)
    gap = (acc - mconf).abs()
    if norm == "max":
        return float(gap[count > 0].max()) if (count > 0).any() else 0.0
    return float((gap * count).sum() / count.sum().clamp(min=1))


def ece(probs: Any, labels: Any, n_bins: int = N_BINS) -> float:
    """Expected calibration error, top-label, equal-width bins:
    ``sum_b (n_b / N) |acc_b - conf_b|`` (Guo et al. 2017); conf = 1.0 goes to the last bin."""
    conf, pred = _top(probs)
    correct = (pred == _labels(labels)).double()
    return _ece_from(conf, correct, bin_indices(conf, n_bins), n_bins)


def mce(probs: Any, labels: Any, n_bins: int = N_BINS) -> float:
    """Maximum calibration error ``max_b |acc_b - conf_b|`` over non-empty equal-width bins."""
    conf, pred = _top(probs)
    correct = (pred == _labels(labels)).double()
    return _ece_from(conf, correct, bin_indices(conf, n_bins), n_bins, norm="max")


def adaptive_bin_indices(conf: Any, n_bins: int = N_BINS) -> Tensor:
    """Equal-mass bins: sort confidences (stable) and cut the ranks into ``n_bins`` chunks whose
    sizes differ by at most one (``np.array_split``). Returns each sample's bin."""
    c = _t(conf)
    n = len(c)
    order = torch.argsort(c, stable=True)
    idx = torch.empty(n, dtype=torch.long)
    for b, chunk in enumerate(np.array_split(np.arange(n), n_bins)):
        idx[order[torch.as_tensor(chunk, dtype=torch.long)]] = b
    return idx


def adaptive_ece(probs: Any, labels: Any, n_bins: int = N_BINS) -> float:
    """Adaptive ECE (Nixon et al. 2019): ECE with equal-mass bins (see :func:`adaptive_bin_indices`)."""
    conf, pred = _top(probs)
    correct = (pred == _labels(labels)).double()
    return _ece_from(conf, correct, adaptive_bin_indices(conf, n_bins), n_bins)


def classwise_ece(probs: Any, labels: Any, n_bins: int = N_BINS) -> float:
    """Classwise ECE (Kull et al. 2019; Nixon et al. 2019):
    ``(1/K) sum_k sum_b (n_bk / N) |mean_{i in b}[y_i = k] - mean_{i in b} p_ik|`` with equal-width
    bins of p_ik over all samples (p = 1.0 in the last bin)."""
    p = check_probs(probs)
    y = _labels(labels)
    k = p.shape[-1]
    total = 0.0
    for c in range(k):
        pc = p[:, c]
        total += _ece_from(pc, (y == c).double(), bin_indices(pc, n_bins), n_bins)
    return total / k


def calibration_bins(probs: Any, labels: Any, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Reliability-diagram data: per equal-width bin ``lo``, ``hi``, ``count``, ``acc``, ``conf``
    (acc/conf NaN for empty bins)."""
    conf, pred = _top(probs)
    return confidence_bins(conf, (pred == _labels(labels)).double(), n_bins)


def _conf_correct(conf: Any, correct: Any) -> tuple[Tensor, Tensor]:
    c, k = _t(conf).reshape(-1), _t(correct).reshape(-1)
    if c.shape != k.shape:
        raise ValueError(f"conf and correct need one value per item each, got {tuple(c.shape)} and {tuple(k.shape)}")
    if len(c) and (c.min() < 0 or c.max() > 1):
        raise ValueError("confidences must lie in [0, 1]")
    return c, k


def confidence_bins(conf: Any, correct: Any, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Reliability-diagram data for a confidence per item and whether the item was right
    (e.g. a language model's answer-level confidence): per equal-width bin ``lo``, ``hi``,
    ``count``, ``acc`` (fraction correct), ``conf`` (mean confidence); NaN for empty bins.
    With ``conf = max_k p_k`` and ``correct = [argmax p = y]`` it equals :func:`calibration_bins`."""
    c, k = _conf_correct(conf, correct)
    count, acc, mconf = _binned_gaps(c, k, bin_indices(c, n_bins), n_bins)
    empty = (count == 0).numpy()
    acc_np, conf_np = acc.numpy().copy(), mconf.numpy().copy()
    acc_np[empty] = np.nan
    conf_np[empty] = np.nan
    edges = np.linspace(0, 1, n_bins + 1)
    return {"lo": edges[:-1], "hi": edges[1:], "count": count.numpy(), "acc": acc_np, "conf": conf_np}


def confidence_ece(conf: Any, correct: Any, n_bins: int = N_BINS) -> float:
    """ECE of confidences against 0/1 correctness, equal-width bins:
    ``sum_b (n_b / N) |mean_{i in b} correct_i - mean_{i in b} conf_i|`` (c = 1.0 in the last bin)."""
    c, k = _conf_correct(conf, correct)
    return _ece_from(c, k, bin_indices(c, n_bins), n_bins)


def confidence_adaptive_ece(conf: Any, correct: Any, n_bins: int = N_BINS) -> float:
    """:func:`confidence_ece` with equal-mass bins (see :func:`adaptive_bin_indices`)."""
    c, k = _conf_correct(conf, correct)
    return _ece_from(c, k, adaptive_bin_indices(c, n_bins), n_bins)


def evaluate(logits: Any, labels: Any, n_bins: int = N_BINS) -> dict[str, float]:
    """All multiclass metrics from logits: acc, nll, ece, mce, ada_ece, cw_ece, brier, aurc."""
    z = _t(logits)
    y = _labels(labels)
    p = z.softmax(dim=-1)
    return {
        "acc": accuracy(p, y),
        "nll": nll(z, y),
        "ece": ece(p, y, n_bins),
        "mce": mce(p, y, n_bins),
        "ada_ece": adaptive_ece(p, y, n_bins),
        "cw_ece": classwise_ece(p, y, n_bins),
        "brier": brier(p, y),
        "aurc": aurc(p, y),
    }


def binary_metrics(logits: Any, labels: Any, n_bins: int = N_BINS) -> dict[str, float]:
    """Binary-task metrics from one logit per sample: acc, f1, bacc, gmean, precision, recall,
    nll, ece, brier (two-class sum, [0, 2]).

    One decision rule for every metric: the predicted class is 1 when ``sigmoid(z) >= 0.5``
    (computed in float64), so a logit of exactly 0 predicts class 1. The ECE is top-label with
    that prediction: confidence ``sigmoid(z)`` for predicted 1 and ``1 - sigmoid(z)`` for
    predicted 0, correct when the prediction equals the label (:func:`confidence_ece`); away
    from ties it equals :func:`ece` of the two-class probabilities."""
    z = _t(logits).reshape(-1)
    y = _labels(labels).reshape(-1)
    p1 = torch.sigmoid(z)
    pred = (p1 >= 0.5).long()
    tp = float(((pred == 1) & (y == 1)).sum())
    fp = float(((pred == 1) & (y == 0)).sum())
    fn = float(((pred == 0) & (y == 1)).sum())
    tn = float(((pred == 0) & (y == 0)).sum())
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    prec = tp / (tp + fp) if tp + fp else 0.0
    correct = (pred == y).double()
    conf = torch.where(pred == 1, p1, 1 - p1)
    two = torch.stack([1 - p1, p1], dim=-1)
    return {
        "acc": float(correct.mean()),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "bacc": (tpr + tnr) / 2,
        "gmean": float(np.sqrt(tpr * tnr)),
        "precision": prec,
        "recall": tpr,
        "nll": float(F.binary_cross_entropy_with_logits(z, y.double())),
        "ece": confidence_ece(conf, correct, n_bins),
        "brier": brier(two, y),
    }
