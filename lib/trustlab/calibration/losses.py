"""Training losses for calibration, each an ``nn.Module`` called as ``loss(logits, target, **extra)``.

Notation: ``z`` are the logits (B, K), ``y`` the integer labels (B,), ``p = softmax(z)``,
``p_y`` the probability of the true class. Every loss returns the batch mean.

Every loss is a class registered in :data:`LOSSES` under its params.yaml name; the first line
of its docstring is its formula. A class declares:

* ``ranges``: its tunable hyperparameters (the constructor's keyword arguments a params file
  may set) and their allowed ranges; the defaults are the constructor's defaults;
* ``needs``: what it takes besides (logits, target): ``"sample_ids"`` (ALDR-KL keeps one
  lambda per training sample) or ``"features"`` (the Bias loss weights samples by the
  variance of their last feature map);
* ``task``: ``"multiclass"`` or ``"binary"`` (one logit per sample (B,) or (B, 1), targets in {0, 1}).

:func:`validate_loss` checks a name and its hyperparameters (unknown arguments through the
registry's ``check``, then types and ranges) before anything is trained, with a
:class:`ConfigError` that names what is allowed; :func:`build_loss` builds one.

Method background: docs/methods/calibration.md. References:

* Mukhoti et al. 2020, "Calibrating Deep Neural Networks using Focal Loss" (focal, FLSD-53).
* Kumar et al. 2018, "Trainable Calibration Measures for Neural Networks from Kernel Mean
  Embeddings" (MMCE).
* Mao, Mohri, Zhong 2023, "Cross-Entropy Loss Functions: Theoretical Analysis and Applications"
  (comp-sum losses); Zhang & Sabuncu 2018 (GCE).
* Zhu et al. 2023, "Label Distributionally Robust Losses for Multi-class Classification" (LDR-KL,
  ALDR-KL).
* Abrahamyan et al. 2021, "Bias Loss for Mobile Neural Networks".
* de Brebisson & Vincent 2016, "The Z-loss: a shift and scale invariant classification loss".
* Han et al. 2024, "AnyLoss: Transforming Classification Metrics into Loss Functions".
* Singh et al. 2023, "Aggregating Soft Labels from Crowd Annotations Improves Uncertainty
  Estimation Under Distribution Shift" (soft-label KL).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.core.config import ConfigError
from trustlab.core.registry import Registry

__all__ = [
    "LOSSES",
    "Range",
    "CalibrationLoss",
    "build_loss",
    "validate_loss",
    "loss_names",
    "loss_defaults",
    "CrossEntropyLoss",
    "LabelSmoothingLoss",
    "FocalLoss",
    "AdaptiveFocalLoss",
    "BrierLoss",
    "MMCELoss",
    "mmce_weighted",
    "CompSumLoss",
    "GCELoss",
    "MAELoss",
    "LDRKLLoss",
    "ALDRKLLoss",
    "BiasLoss",
    "ZLoss",
    "SoftLabelKLLoss",
    "BCELoss",
    "AnyLoss",
    "AnyLossF1",
    "AnyLossFBeta",
    "AnyLossBAcc",
    "AnyLossGMean",
    "focal_weight",
    "normalize_logits_softplus",
    "ldr_kl_per_sample",
    "comp_sum_phi",
]


@dataclass(frozen=True)
class Range:
    """``lo <= x <= hi`` with optional open ends; ``None`` means unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def describe(self, key: str) -> str:
        if self.lo is None and self.hi is None:
            return f"any real {key}"
        left = "" if self.lo is None else f"{self.lo:g} {'<' if self.lo_open else '<='} "
        right = "" if self.hi is None else f" {'<' if self.hi_open else '<='} {self.hi:g}"
        interval = (
            f"{'(' if self.lo_open or self.lo is None else '['}{'-inf' if self.lo is None else f'{self.lo:g}'}, "
            f"{'inf' if self.hi is None else f'{self.hi:g}'}{')' if self.hi_open or self.hi is None else ']'}"
        )
        return f"{left}{key}{right}, i.e. {key} in {interval}"


POSITIVE = Range(0.0, None, lo_open=True)
NONNEGATIVE = Range(0.0, None)

LOSSES: Registry[type[CalibrationLoss]] = Registry("calibration loss")


class CalibrationLoss(nn.Module):
    """Base of every registered loss: the class attributes the registry and the trainer read."""

    ranges: ClassVar[Mapping[str, Range]] = {}  # tunable hyperparameter -> allowed range
    needs: ClassVar[frozenset[str]] = frozenset()  # extra keyword arguments of forward
    task: ClassVar[str] = "multiclass"
    paper: ClassVar[str] = ""


def _log_p_y(logits: Tensor, target: Tensor) -> Tensor:
    """log softmax(z)_y per sample, (B,)."""
    return F.log_softmax(logits, dim=-1).gather(1, target.long().view(-1, 1)).squeeze(1)


# -- CE and label smoothing -----------------------------------------------------------------


@LOSSES.register("ce")
class CrossEntropyLoss(CalibrationLoss):
    """Cross-entropy ``-log p_y``."""

    paper = "cross-entropy"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target.long())


@LOSSES.register("label_smoothing")
class LabelSmoothingLoss(CalibrationLoss):
    """Cross-entropy against ``(1 - eps) * onehot(y) + eps / K`` (Szegedy et al. 2016).

    Computed as ``F.cross_entropy(label_smoothing=eps)``."""

    ranges = {"eps": Range(0.0, 1.0, hi_open=True)}
    paper = "Szegedy et al. 2016"

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target.long(), label_smoothing=self.eps)


# -- focal --------------------------------------------------------------------------------------


def focal_weight(log_p_y: Tensor, gamma: Tensor | float) -> Tensor:
    """``(1 - p_y)^gamma`` with ``1 - p_y`` clamped at the dtype's smallest normal number.

    A confident sample rounds ``1 - p_y`` to exactly 0 (logits [40, 0, 0] in float32 or float64),
    and for 0 < gamma < 1 the derivative ``gamma (1 - p_y)^(gamma - 1)`` is then infinite; times
    the zero derivative of ``1 - p_y`` it is NaN, and one such sample makes the whole batch's
    gradient NaN. Below the clamp the factor is a constant (no gradient), which is what the
    exact gradient, ``O((1 - p_y)^(gamma + 1))``, rounds to anyway. Above it the value and the
    gradient are those of the plain formula.
    """
    one_minus_p = 1.0 - log_p_y.exp()
    return one_minus_p.clamp(min=torch.finfo(one_minus_p.dtype).tiny) ** gamma


@LOSSES.register("focal")
class FocalLoss(CalibrationLoss):
    """Focal loss ``-(1 - p_y)^gamma * log p_y`` (Lin et al. 2017; Mukhoti et al. 2020).

    gamma = 0 is cross-entropy. The weight comes from :func:`focal_weight`, which keeps the
    gradient finite for 0 < gamma < 1 on saturated samples."""

    ranges = {"gamma": NONNEGATIVE}
    paper = "Mukhoti et al. 2020"

    def __init__(self, gamma: float = 3.0):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logp = _log_p_y(logits, target)
        return (-focal_weight(logp, self.gamma) * logp).mean()


@LOSSES.register("flsd53")
class AdaptiveFocalLoss(CalibrationLoss):
    """FLSD-53: focal loss with ``gamma = 5 if p_y < 0.2 else 3`` per sample (Mukhoti et al. 2020).

    The thresholds are parameters (``gamma_low_p``, ``gamma_high_p``, ``threshold``); gamma is
    chosen from the detached ``p_y``, a step function, so no gradient flows through the choice."""

    ranges = {"gamma_low_p": NONNEGATIVE, "gamma_high_p": NONNEGATIVE, "threshold": Range(0.0, 1.0, True, True)}
    paper = "Mukhoti et al. 2020"

    def __init__(self, gamma_low_p: float = 5.0, gamma_high_p: float = 3.0, threshold: float = 0.2):
        super().__init__()
        self.gamma_low_p = float(gamma_low_p)
        self.gamma_high_p = float(gamma_high_p)
        self.threshold = float(threshold)

    def gammas(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            p_y = _log_p_y(logits, target).exp()
            low = torch.full_like(p_y, self.gamma_low_p)
            return torch.where(p_y < self.threshold, low, torch.full_like(p_y, self.gamma_high_p))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logp = _log_p_y(logits, target)
        return (-focal_weight(logp, self.gammas(logits, target)) * logp).mean()


# -- Brier ------------------------------------------------------------------------------------


@LOSSES.register("brier")
class BrierLoss(CalibrationLoss):
    """Multiclass Brier score ``sum_k (p_k - onehot(y)_k)^2`` (range [0, 2]), batch mean."""

    paper = "Brier 1950"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        p = logits.softmax(dim=-1)
        onehot = F.one_hot(target.long(), p.shape[-1]).to(p.dtype)
        return ((p - onehot) ** 2).sum(dim=-1).mean()


# -- MMCE -------------------------------------------------------------------------------------


def mmce_weighted(logits: Tensor, target: Tensor, width: float = 0.4) -> Tensor:
    """Weighted MMCE (Kumar et al. 2018, Sec. 4) on top-label confidences ``r = max_k p_k``.

    With the Laplacian kernel ``k(r, r') = exp(-|r - r'| / width)``, C the correctly and W the
    wrongly classified samples of the batch (n_c, n_w of them)::

        MMCE_w^2 = sum_{i,j in C} (1-r_i)(1-r_j) k_ij / n_c^2
                 + sum_{i,j in W} r_i r_j k_ij / n_w^2
                 - 2 sum_{i in C, j in W} (1-r_i) r_j k_ij / (n_c n_w)

    and the function returns ``sqrt(MMCE_w^2 + 1e-10)``. An empty group contributes nothing
    (the released code returns 0 for the whole batch then, and it also divides each sum by
    the pair count twice; we follow the formula). Gradients flow through r, not through the
    correctness mask.
    """
    p = logits.softmax(dim=-1)
    r, pred = p.max(dim=-1)
    correct = (pred == target.long()).to(r.dtype)
    wrong = 1.0 - correct
    n_c, n_w = correct.sum(), wrong.sum()
    kernel = torch.exp(-(r.unsqueeze(1) - r.unsqueeze(0)).abs() / width)
    a = (1.0 - r) * correct  # weights of correct samples
    b = r * wrong  # weights of wrong samples
    total = r.new_zeros(())
    if n_c > 0:
        total = total + (a @ kernel @ a) / n_c**2
    if n_w > 0:
        total = total + (b @ kernel @ b) / n_w**2
    if n_c > 0 and n_w > 0:
        total = total - 2.0 * (a @ kernel @ b) / (n_c * n_w)
    return torch.sqrt(total.clamp(min=0.0) + 1e-10)


@LOSSES.register("mmce")
class MMCELoss(CalibrationLoss):
    """``CE + lam * MMCE_w`` (Kumar et al. 2018), Laplacian kernel of width 0.4.

    See :func:`mmce_weighted` for MMCE_w."""

    ranges = {"lam": POSITIVE, "width": POSITIVE}
    paper = "Kumar et al. 2018"

    def __init__(self, lam: float = 2.0, width: float = 0.4):
        super().__init__()
        self.lam = float(lam)
        self.width = float(width)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target.long()) + self.lam * mmce_weighted(logits, target, self.width)


# -- comp-sum family ----------------------------------------------------------------------------


def comp_sum_phi(log_p_y: Tensor, tau: float) -> Tensor:
    """The comp-sum loss (Mao, Mohri, Zhong 2023) as a function of ``log p_y``.

    ``Phi_tau(u) = ((1+u)^(1-tau) - 1) / (1-tau)`` (``Phi_1(u) = log(1+u)``) applied to
    ``u = sum_{k != y} exp(z_k - z_y)``. Since ``1 + u = 1 / p_y``::

        Phi_tau = (1 - p_y^(tau-1)) / (tau - 1),   Phi_1 = -log p_y

    tau = 0: sum-exp ``1/p_y - 1``; tau = 1: CE; tau = 1 + q in (1, 2]: GCE ``(1 - p_y^q)/q``;
    tau = 2: ``1 - p_y``, which is half of MAE ``||p - onehot(y)||_1 = 2 (1 - p_y)``.
    Computed with ``expm1`` on ``log p_y`` so it is stable for huge logits.
    """
    if tau == 1.0:
        return -log_p_y
    s = tau - 1.0
    return -torch.expm1(s * log_p_y) / s


@LOSSES.register("comp_sum")
class CompSumLoss(CalibrationLoss):
    """Comp-sum loss ``Phi_tau(sum_{k != y} exp(z_k - z_y))``, batch mean.

    See :func:`comp_sum_phi` for Phi_tau and its special cases."""

    ranges = {"tau": NONNEGATIVE}
    paper = "Mao, Mohri, Zhong 2023"

    def __init__(self, tau: float = 0.5):
        super().__init__()
        self.tau = float(tau)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return comp_sum_phi(_log_p_y(logits, target), self.tau).mean()


@LOSSES.register("gce")
class GCELoss(CalibrationLoss):
    """Generalised cross-entropy ``(1 - p_y^q) / q`` (Zhang & Sabuncu 2018).

    The comp-sum loss with tau = 1 + q; q -> 0 gives CE, q = 1 gives ``1 - p_y``."""

    ranges = {"q": Range(0.0, 1.0, lo_open=True)}
    paper = "Zhang & Sabuncu 2018"

    def __init__(self, q: float = 0.7):
        super().__init__()
        self.q = float(q)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return comp_sum_phi(_log_p_y(logits, target), 1.0 + self.q).mean()


@LOSSES.register("mae")
class MAELoss(CalibrationLoss):
    """Mean absolute error ``||p - onehot(y)||_1 = 2 (1 - p_y)`` = 2 * comp-sum(tau=2).

    (The LDR reference code's MAE is identically zero; this is the loss as defined.)"""

    paper = "Ghosh et al. 2017; Mao, Mohri, Zhong 2023"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return (2.0 * comp_sum_phi(_log_p_y(logits, target), 2.0)).mean()


# -- LDR-KL / ALDR-KL -------------------------------------------------------------------------


def normalize_logits_softplus(logits: Tensor, eps: float = 1e-12) -> Tensor:
    """``softplus(z) / mean_k softplus(z)`` per sample (Zhu et al. 2023). The mean is clamped at
    ``eps`` so all-very-negative logits (softplus underflows to 0) give zeros, not NaN."""
    sp = F.softplus(logits)
    return sp / sp.mean(dim=-1, keepdim=True).clamp(min=eps)


def _ldr_margins(z: Tensor, target: Tensor, margin: float) -> Tensor:
    """``c * [k != y] + z_k - z_y``, (B, K)."""
    y = target.long().view(-1, 1)
    not_y = torch.ones_like(z).scatter_(1, y, 0.0)
    return margin * not_y + z - z.gather(1, y)


def ldr_kl_per_sample(z: Tensor, target: Tensor, lam: Tensor | float, margin: float) -> Tensor:
    """LDR-KL per sample on (already normalised) logits z::

        lam * log( (1/K) sum_k exp((c [k != y] + z_k - z_y) / lam) )

    computed as ``lam * (m + log sum_k exp(a_k - m) - log K)`` with ``a = margins / lam``,
    ``m = max_k a_k`` (max-subtraction, so it is finite for huge logits). ``lam`` is a scalar
    or a (B,) tensor."""
    lam_t = torch.as_tensor(lam, dtype=z.dtype, device=z.device)
    a = _ldr_margins(z, target, margin) / (lam_t.view(-1, 1) if lam_t.dim() == 1 else lam_t)
    m = a.max(dim=-1, keepdim=True).values
    lse = m.squeeze(-1) + torch.log(torch.exp(a - m).sum(dim=-1))
    return lam_t * (lse - math.log(z.shape[-1]))


@LOSSES.register("ldr_kl")
class LDRKLLoss(CalibrationLoss):
    """LDR-KL ``lam * log((1/K) sum_k exp((c [k != y] + z_k - z_y) / lam))`` (Zhu et al. 2023).

    On softplus-normalised logits ``z = softplus(o) / mean(softplus(o))``; lam = 10, c = 0.1
    (``margin``). See :func:`ldr_kl_per_sample`."""

    ranges = {"lam": POSITIVE, "margin": NONNEGATIVE}
    paper = "Zhu et al. 2023"

    def __init__(self, lam: float = 10.0, margin: float = 0.1, normalize: bool = True):
        super().__init__()
        self.lam = float(lam)
        self.margin = float(margin)
        self.normalize = bool(normalize)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        z = normalize_logits_softplus(logits) if self.normalize else logits
        return ldr_kl_per_sample(z, target, self.lam, self.margin).mean()


@LOSSES.register("aldr_kl")
class ALDRKLLoss(CalibrationLoss):
    """ALDR-KL: LDR-KL with one lambda_i per sample, ``lambda_i <- lambda0 (1 - KL(p || U) / (alpha log K))``.

    Adaptive LDR-KL (Zhu et al. 2023). Before the loss is computed, the selected lambdas are
    updated (detached, in a buffer indexed by sample id)::

        p = softmax(a / lambda_i),  a_k = c [k != y] + z_k - z_y
        lambda_i <- lambda0 - lambda0 * KL(p || uniform) / (alpha * log K)

    Since ``0 <= KL(p || uniform) <= log K``, lambda_i stays in
    ``[lambda0 (1 - 1/alpha), lambda0]`` (``alpha > 1`` keeps it positive); it is clamped there
    against rounding. Defaults lambda0 = 10, alpha = 2, c = 0.1. The loss then is LDR-KL with
    the new lambda_i (a constant for autograd). Unlike the reference code, nothing is tied to CUDA:
    the buffer moves with the module.
    """

    ranges = {"lambda0": POSITIVE, "alpha": Range(1.0, None, lo_open=True), "margin": NONNEGATIVE}
    needs = frozenset({"sample_ids"})
    paper = "Zhu et al. 2023"

    def __init__(
        self,
        n_samples: int,
        lambda0: float = 10.0,
        alpha: float = 2.0,
        margin: float = 0.1,
        normalize: bool = True,
    ):
        super().__init__()
        if n_samples is None or int(n_samples) < 1:
            raise ConfigError(f"aldr_kl: n_samples = {n_samples!r} is not allowed: the training-set size (>= 1)")
        self.lambda0 = float(lambda0)
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.normalize = bool(normalize)
        self.register_buffer("lambdas", torch.full((int(n_samples),), self.lambda0))

    @property
    def bounds(self) -> tuple[float, float]:
        return self.lambda0 * (1.0 - 1.0 / self.alpha), self.lambda0

    @torch.no_grad()
    def update_lambdas(self, z: Tensor, target: Tensor, sample_ids: Tensor) -> Tensor:
        """Update and return lambda_i for the batch (detached)."""
        ids = sample_ids.long().to(self.lambdas.device)
        lam = self.lambdas[ids].to(z.dtype)
        a = _ldr_margins(z.detach(), target, self.margin)
        logp = F.log_softmax(a / lam.view(-1, 1), dim=-1)
        k = z.shape[-1]
        kl = (logp.exp() * (logp + math.log(k))).sum(dim=-1)  # KL(p || uniform)
        lo, hi = self.bounds
        new = (self.lambda0 - self.lambda0 * kl / (self.alpha * math.log(k))).clamp(lo, hi)
        self.lambdas[ids] = new.to(self.lambdas.dtype)
        return new

    def forward(self, logits: Tensor, target: Tensor, sample_ids: Tensor | None = None) -> Tensor:
        if sample_ids is None:
            raise ValueError("aldr_kl needs sample_ids= (the dataset must yield (x, y, sample_id))")
        z = normalize_logits_softplus(logits) if self.normalize else logits
        lam = self.update_lambdas(z, target, sample_ids) if self.training else self.lambdas[sample_ids.long()]
        return ldr_kl_per_sample(z, target, lam.detach(), self.margin).mean()


# -- Bias loss ---------------------------------------------------------------------------------


@LOSSES.register("bias")
class BiasLoss(CalibrationLoss):
    """Bias loss ``mean_i [(exp(beta * v_i) - 1 + alpha) * CE_i]`` (Abrahamyan et al. 2021).

    v_i is the variance of sample i's last feature map (detached, flattened), min-max
    normalised over the batch (0 for all when the batch's variances are equal). alpha = beta = 0.3.
    """

    ranges = {"alpha": NONNEGATIVE, "beta": NONNEGATIVE}
    needs = frozenset({"features"})
    paper = "Abrahamyan et al. 2021"

    def __init__(self, alpha: float = 0.3, beta: float = 0.3):
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)

    @staticmethod
    @torch.no_grad()
    def normalized_variance(features: Tensor) -> Tensor:
        f = features.detach().reshape(features.shape[0], -1)
        v = f.var(dim=1, unbiased=False)
        lo, hi = v.min(), v.max()
        span = hi - lo
        if span <= 0:
            return torch.zeros_like(v)
        return (v - lo) / span

    def weights(self, features: Tensor) -> Tensor:
        return torch.exp(self.beta * self.normalized_variance(features)) - 1.0 + self.alpha

    def forward(self, logits: Tensor, target: Tensor, features: Tensor | None = None) -> Tensor:
        if features is None:
            raise ValueError("bias needs features= (the last feature map of each sample)")
        ce = F.cross_entropy(logits, target.long(), reduction="none")
        return (self.weights(features).to(ce.dtype) * ce).mean()


# -- Z-loss -------------------------------------------------------------------------------------


@LOSSES.register("zloss")
class ZLoss(CalibrationLoss):
    """Z-loss ``(1/a) log(1 + exp(a (b - z_y)))`` on standardised logits (de Brebisson & Vincent 2016).

    ``z_k = (o_k - mean(o)) / std(o)`` per sample (population std, + 1e-8). z_y <= sqrt(K - 1),
    so b should be below that. The paper tunes a and b; our defaults (a = 1, b = 2) are our
    choice and are reported."""

    ranges = {"a": POSITIVE, "b": Range()}
    paper = "de Brebisson & Vincent 2016"

    def __init__(self, a: float = 1.0, b: float = 2.0):
        super().__init__()
        self.a = float(a)
        self.b = float(b)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        mu = logits.mean(dim=-1, keepdim=True)
        sd = logits.std(dim=-1, unbiased=False, keepdim=True)
        z = (logits - mu) / (sd + 1e-8)
        z_y = z.gather(1, target.long().view(-1, 1)).squeeze(1)
        return (F.softplus(self.a * (self.b - z_y)) / self.a).mean()


# -- soft labels --------------------------------------------------------------------------------


@LOSSES.register("soft_kl")
class SoftLabelKLLoss(CalibrationLoss):
    """Soft-label KL ``sum_k q_k (log q_k - log p_k)``, batch mean, for soft targets q (Singh et al. 2023).

    ``kl_div(log_softmax(z), q, reduction='batchmean')``; integer targets are one-hot encoded
    (then it equals cross-entropy)."""

    paper = "Singh et al. 2023"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.dim() == 1:
            target = F.one_hot(target.long(), logits.shape[-1]).to(logits.dtype)
        return F.kl_div(F.log_softmax(logits, dim=-1), target.to(logits.dtype), reduction="batchmean")


# -- binary: BCE and AnyLoss ------------------------------------------------------------------


def _binary_logit(logits: Tensor) -> Tensor:
    if logits.dim() == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.dim() != 1:
        raise ValueError(f"binary losses take one logit per sample, (B,) or (B, 1); got {tuple(logits.shape)}")
    return logits


@LOSSES.register("bce")
class BCELoss(CalibrationLoss):
    """Binary cross-entropy ``-[y log s(z) + (1 - y) log(1 - s(z))]``, s = sigmoid (the AnyLoss table's baseline)."""

    task = "binary"
    paper = "binary cross-entropy"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(_binary_logit(logits), target.to(logits.dtype))


ANY_METRICS = ("f1", "fbeta", "bacc", "gmean")


class AnyLoss(CalibrationLoss):
    """AnyLoss ``1 - metric(TP, FP, FN, TN)`` on a soft confusion matrix (Han et al. 2024).

    The probability ``p = sigmoid(logit)`` goes through the amplifier
    ``A(p) = 1 / (1 + exp(-L (p - 0.5)))``, then with y in {0, 1}::

        TP = sum y A,  FP = sum A - TP,  FN = sum y - TP,  TN = N - sum y - sum A + TP

    metric: ``f1 = 2TP / (2TP + FP + FN)``, ``fbeta = (1+b^2)TP / ((1+b^2)TP + b^2 FN + FP)``,
    ``bacc = (TP/(TP+FN) + TN/(TN+FP)) / 2``, ``gmean = sqrt(TP/(TP+FN) * TN/(TN+FP))``.
    A small eps (1e-8) keeps the ratios finite on one-class batches. The registered losses
    are the subclasses below, one per metric.
    """

    task = "binary"
    paper = "Han et al. 2024"

    def __init__(self, metric: str = "f1", L: float = 73.0, beta: float = 1.0, eps: float = 1e-8):
        super().__init__()
        if metric not in ANY_METRICS:
            raise ConfigError(f"anyloss metric = {metric!r} is not allowed: choose one of {', '.join(ANY_METRICS)}")
        self.metric = metric
        self.L = float(L)
        self.beta = float(beta)
        self.eps = float(eps)

    def confusion(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = torch.sigmoid(_binary_logit(logits))
        a = torch.sigmoid(self.L * (p - 0.5))
        y = target.to(a.dtype).view(-1)
        n = a.new_tensor(float(a.numel()))
        tp = (y * a).sum()
        fp = a.sum() - tp
        fn = y.sum() - tp
        tn = n - y.sum() - a.sum() + tp
        return tp, fp, fn, tn

    def score(self, logits: Tensor, target: Tensor) -> Tensor:
        tp, fp, fn, tn = self.confusion(logits, target)
        e = self.eps
        if self.metric == "f1":
            return 2 * tp / (2 * tp + fp + fn + e)
        if self.metric == "fbeta":
            b2 = self.beta**2
            return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp + e)
        tpr = tp / (tp + fn + e)
        tnr = tn / (tn + fp + e)
        if self.metric == "bacc":
            return (tpr + tnr) / 2
        return torch.sqrt(tpr.clamp(min=0) * tnr.clamp(min=0) + e)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return 1.0 - self.score(logits, target)


@LOSSES.register("anyloss_f1")
class AnyLossF1(AnyLoss):
    """AnyLoss with F1: ``1 - 2TP / (2TP + FP + FN)`` on the amplified soft confusion matrix."""

    ranges = {"L": POSITIVE}

    def __init__(self, L: float = 73.0):
        super().__init__("f1", L=L)


@LOSSES.register("anyloss_fbeta")
class AnyLossFBeta(AnyLoss):
    """AnyLoss with F-beta: ``1 - (1+b^2)TP / ((1+b^2)TP + b^2 FN + FP)``, beta = 2."""

    ranges = {"L": POSITIVE, "beta": POSITIVE}

    def __init__(self, L: float = 73.0, beta: float = 2.0):
        super().__init__("fbeta", L=L, beta=beta)


@LOSSES.register("anyloss_bacc")
class AnyLossBAcc(AnyLoss):
    """AnyLoss with balanced accuracy: ``1 - (TP/(TP+FN) + TN/(TN+FP)) / 2``."""

    ranges = {"L": POSITIVE}

    def __init__(self, L: float = 73.0):
        super().__init__("bacc", L=L)


@LOSSES.register("anyloss_gmean")
class AnyLossGMean(AnyLoss):
    """AnyLoss with the G-mean: ``1 - sqrt(TP/(TP+FN) * TN/(TN+FP))``."""

    ranges = {"L": POSITIVE}

    def __init__(self, L: float = 73.0):
        super().__init__("gmean", L=L)


# -- looking losses up ------------------------------------------------------------------------


def loss_names(task: str | None = None) -> list[str]:
    """Registered loss names (optionally only ``"multiclass"`` or ``"binary"`` ones)."""
    return [n for n in LOSSES.names() if task is None or LOSSES.get(n).task == task]


def loss_defaults(name: str) -> dict[str, float]:
    """The tunable hyperparameters of a loss with their defaults (the constructor's)."""
    params = LOSSES.parameters(name)
    return {key: params[key].default for key in LOSSES.get(name).ranges}


def validate_loss(name: str, hparams: Mapping[str, Any] | None = None, where: str = "loss") -> dict[str, float]:
    """Check a loss name and its hyperparameters; return the full hyperparameter dict
    (defaults filled in). Raises :class:`ConfigError` naming the allowed names / keys / range."""
    cls = LOSSES.get(name)
    hparams = dict(hparams or {})
    fixed = tuple(p for p in LOSSES.parameters(name) if p not in cls.ranges)  # e.g. n_samples
    LOSSES.check(name, hparams, where=where, skip=fixed)
    out = loss_defaults(name)
    for key, value in hparams.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} {name!r}: {key} = {value!r} has the wrong type: expected a finite number")
        rng = cls.ranges[key]
        if not rng.contains(float(value)):
            raise ConfigError(f"{where} {name!r}: {key} = {value!r} is out of range: allowed {rng.describe(key)}")
        out[key] = float(value)
    return out


def build_loss(name: str, *, n_samples: int | None = None, **hparams: Any) -> CalibrationLoss:
    """Build a loss by registry name, e.g. ``build_loss("gce", q=0.7)``.

    ``n_samples`` (the training-set size) is required by losses that keep per-sample state
    (``aldr_kl``). The module gets ``.name`` and ``.hparams`` (the full hyperparameters).
    """
    full = validate_loss(name, hparams)
    kwargs: dict[str, Any] = dict(full)
    if "sample_ids" in LOSSES.get(name).needs:
        if n_samples is None:
            raise ConfigError(f"loss {name!r} keeps one value per training sample: pass n_samples=")
        kwargs["n_samples"] = n_samples
    module = LOSSES.build(name, **kwargs)
    module.name = name
    module.hparams = full
    return module
