"""Error detectors: functions from stored statistics to an uncertainty score u.

Every estimator maps a :class:`~trustlab.error_detection.statistics.GenerationStats` to one score
per row, **higher u = more likely an error**, and runs on ``span="answer"`` (the extracted
answer's tokens / answer-pooled hidden states) or ``span="response"`` (the whole greedy
response). Every detector is one class registered in :data:`DETECTORS` (a
:class:`trustlab.core.registry.Registry`) with ``@detector("name")``; build them by name::

    est = build_estimator("rpc", span="response", prune=True)
    u = est.fit(stats.select(split="fit")).score(stats.select(split="test"))

Method background: docs/methods/error_detection.md.

Leakage guards (the test split's labels can never reach a detector):

- ``score(stats)`` hands the estimator ``stats.without_labels()``: any read of ``is_error``
  inside scoring raises :class:`~trustlab.error_detection.statistics.LabelAccessError`.
- ``fit(stats)`` refuses rows whose ``split`` is not ``"fit"``.
- a fitted estimator refuses to score rows it was fitted on (``check_disjoint``) unless
  ``score(..., in_sample=True)`` says so explicitly (in-sample scores are optimistic; use
  :func:`out_of_fold_scores` for honest scores on the fit split, e.g. to choose thresholds).

Detectors (registry names): ``msp``, ``perplexity``, ``mean_token_entropy``, ``zero_shot_z``
(provenance test reused as a signal), ``self_consistency``, ``rpc``, ``mahalanobis``
(lm-polygraph single-centroid form), ``mahalanobis_lee`` (Lee et al. form), ``linear_probe``,
``knn``, ``sdm_adaptation`` (an adaptation of SDM; its exact formula is unverified), and in their
own modules ``spc_uq`` (:mod:`.spc`) and ``meta_ranking`` (:mod:`.meta_ranking`), both adaptations.
Helpers: :func:`per_layer_auroc` ("which layer knows best"), :func:`out_of_fold_scores`,
:func:`fit_weibull_mixture` (EM, used by RPC's reasoning pruning).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln, logsumexp

from trustlab.core.registry import Registry
from trustlab.error_detection.statistics import GenerationStats, check_disjoint, check_span

__all__ = [
    "Estimator",
    "MSP",
    "Perplexity",
    "MeanTokenEntropy",
    "ZeroShotZ",
    "SelfConsistency",
    "RPC",
    "MahalanobisSingle",
    "MahalanobisLee",
    "LinearProbe",
    "KNN",
    "SDMAdaptation",
    "DETECTORS",
    "detector",
    "layered_detectors",
    "build_estimator",
    "estimator_names",
    "describe_estimators",
    "msp",
    "perplexity",
    "mean_token_entropy",
    "zero_shot_z",
    "WeibullMixture",
    "fit_weibull_mixture",
    "rpc_prune_mask",
    "rpc_answer_scores",
    "jittered_inverse_covariance",
    "out_of_fold_scores",
    "per_layer_auroc",
]

# -- token-level formulas (pure functions on one response's arrays) -------------------------


def msp(logprobs: np.ndarray) -> float:
    """MSP: u = -sum_t log p(y_t) (the negative sequence log-likelihood)."""
    return float(-np.sum(logprobs))


def perplexity(logprobs: np.ndarray) -> float:
    """Perplexity (log form, as lm-polygraph): u = -mean_t log p(y_t)."""
    return float(-np.mean(logprobs))


def mean_token_entropy(entropies: np.ndarray) -> float:
    """Mean token entropy: u = mean_t H_t, H_t = -sum_v p(v|y_<t) log p(v|y_<t)."""
    return float(np.mean(entropies))


def zero_shot_z(logprobs: np.ndarray, entropies: np.ndarray, variances: np.ndarray, eps: float = 1e-12) -> float:
    """Normalised zero-shot statistic (fast-detect-gpt's analytic form).

    With l = -mean_t log p(y_t), h = mean_t H_t and Var_t = sum_v p log^2 p - H_t^2 over n
    tokens: z = n (l - h) / sqrt(sum_t Var_t) = sum_t (-log p(y_t) - H_t) / sqrt(sum_t Var_t).
    Under the model's own sampling each term has mean 0 and variance Var_t, so z is a
    standardised "more surprising than the model expects" score. The denominator is floored at
    sqrt(eps) (a response whose every next-token distribution is one-hot has sum Var = 0).
    """
    num = float(np.sum(-np.asarray(logprobs) - np.asarray(entropies)))
    return num / math.sqrt(max(float(np.sum(variances)), eps))


# -- base class -----------------------------------------------------------------------------


class Estimator:
    """Base class. Subclasses implement ``_score(stats, in_sample)`` (and ``_fit`` if fitted).

    Class attributes: ``name`` (registry key), ``label`` (for tables and figures),
    ``needs_fit`` (has parameters estimated on the fit split), ``supervised`` (uses the fit
    split's labels).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    needs_fit: ClassVar[bool] = False
    supervised: ClassVar[bool] = False
    calls_per_response: ClassVar[int] = 0  # judge calls per scored response (Meta Ranking), beside the AUROC

    def __init__(self, span: str = "answer"):
        self.span = check_span(span)
        self.fit_ids_: set[str] | None = None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._param_names())
        return f"{type(self).__name__}({params})"

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    # -- fitting -------------------------------------------------------------------------
    def fit(self, stats: GenerationStats) -> Estimator:
        """Estimate parameters on fit-split rows only (a no-op for unfitted detectors)."""
        if not self.needs_fit:
            return self
        bad = stats.split != "fit"
        if bad.any():
            shown = ", ".join(map(repr, stats.ids[bad][:5].tolist()))
            raise ValueError(
                f"{self.name}.fit() got {int(bad.sum())} rows whose split is not 'fit' (e.g. {shown}): "
                "fit only on stats.select(split='fit')"
            )
        if stats.n < 2:
            raise ValueError(f"{self.name}.fit() needs at least 2 fit rows, got {stats.n}")
        if self.supervised:
            y = stats.labels()
            if y.all() or not y.any():
                raise ValueError(
                    f"{self.name}.fit() needs both correct and wrong responses in the fit split "
                    f"(got {int(y.sum())} wrong of {len(y)})"
                )
        self._fit(stats)
        self.fit_ids_ = set(stats.ids.tolist())
        return self

    def _fit(self, stats: GenerationStats) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- scoring -------------------------------------------------------------------------
    def score(self, stats: GenerationStats, *, in_sample: bool = False) -> np.ndarray:
        """u for every row of ``stats`` (labels hidden). Fitted detectors refuse rows they were
        fitted on unless ``in_sample=True``."""
        if self.needs_fit:
            if self.fit_ids_ is None:
                raise RuntimeError(f"{self.name}: call fit(stats_fit) before score()")
            if not in_sample:
                check_disjoint(
                    self.fit_ids_, stats.ids.tolist(),
                    what="prompt ids (scoring rows this detector was fitted on; pass in_sample=True to allow)",
                )
        u = np.asarray(self._score(stats.without_labels(), in_sample), dtype=np.float64)
        if u.shape != (stats.n,):
            raise RuntimeError(f"{self.name} returned shape {u.shape}, expected ({stats.n},)")
        if not np.isfinite(u).all():
            raise RuntimeError(f"{self.name} returned non-finite scores for {int((~np.isfinite(u)).sum())} rows")
        return u

    __call__ = score

    def _score(self, stats: GenerationStats, in_sample: bool) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


DETECTORS: Registry[type[Estimator]] = Registry("detector")


def detector(name: str):
    """Class decorator: register a detector under ``name`` (also its ``name`` attribute, used
    in messages). Adding a detector is one decorated class."""

    def register(cls: type[Estimator]) -> type[Estimator]:
        cls.name = name
        return DETECTORS.register(name)(cls)

    return register


def layered_detectors() -> list[str]:
    """Detectors with a ``layer`` or ``layers`` parameter (what the per-layer table can sweep)."""
    return [n for n in DETECTORS if {"layer", "layers"} & set(DETECTORS.parameters(n))]


# -- logit-based (unfitted) ---------------------------------------------------------------------


@detector("msp")
class MSP(Estimator):
    """Maximum sequence probability: u = -sum_{t in span} log p(y_t)."""

    label = "MSP (-sum log p)"

    def _score(self, stats, in_sample):
        return np.array([msp(a) for a in stats.span_tokens("logprobs", self.span)])


@detector("perplexity")
class Perplexity(Estimator):
    """Perplexity (log form): u = -mean_{t in span} log p(y_t)."""

    label = "Perplexity (-mean log p)"

    def _score(self, stats, in_sample):
        return np.array([perplexity(a) for a in stats.span_tokens("logprobs", self.span)])


@detector("mean_token_entropy")
class MeanTokenEntropy(Estimator):
    """Mean token entropy: u = mean_{t in span} H_t (full-vocabulary entropy)."""

    label = "Mean token entropy"

    def _score(self, stats, in_sample):
        return np.array([mean_token_entropy(a) for a in stats.span_tokens("entropies", self.span)])


@detector("zero_shot_z")
class ZeroShotZ(Estimator):
    """Zero-shot statistic z, *reused as an error signal*.

    z = n (l - h) / sqrt(sum_t Var_t), l = -mean log p(y_t), h = mean H_t,
    Var_t = sum_v p log^2 p - H_t^2 (fast-detect-gpt's analytic normalisation). The source paper
    ("Zero-Shot Statistical Tests for LLM-Generated Text Detection ...") tests *provenance*
    (was this text generated by the model?), not correctness; here high z (tokens more
    surprising than the model itself expects) is used as an uncertainty score.
    """

    label = "Zero-shot z (provenance test reused as a signal)"

    def __init__(self, span: str = "answer", eps: float = 1e-12):
        super().__init__(span)
        self.eps = float(eps)

    def _score(self, stats, in_sample):
        lp = stats.span_tokens("logprobs", self.span)
        h = stats.span_tokens("entropies", self.span)
        v = stats.span_tokens("entropy_vars", self.span)
        return np.array([zero_shot_z(a, b, c, self.eps) for a, b, c in zip(lp, h, v)])


# -- sample-based (unfitted) --------------------------------------------------------------------


@detector("self_consistency")
class SelfConsistency(Estimator):
    """Self-consistency: u = 1 - (1/K) #{k : sample_k == greedy}.

    ``span="answer"`` compares extracted answers (``sample_answers`` vs ``answer``);
    ``span="response"`` compares whole texts (``sample_texts`` vs ``response``). Exact string
    match: answers should be normalised by the extractor.
    """

    label = "Self-consistency (1 - frequency of the greedy answer)"

    def _score(self, stats, in_sample):
        if self.span == "answer":
            return 1.0 - (stats.sample_answers == stats.answer[:, None]).mean(axis=1)
        return 1.0 - (stats.sample_texts == stats.response[:, None]).mean(axis=1)


@dataclass(frozen=True)
class WeibullMixture:
    """Two-component Weibull mixture; component "low" has the smaller mean.

    Density of a component: f(x; k, lam) = (k/lam) (x/lam)^(k-1) exp(-(x/lam)^k), x > 0;
    mean lam * Gamma(1 + 1/k). All methods take log x (path probabilities can underflow).
    """

    weight_low: float
    shape_low: float
    scale_low: float
    shape_high: float
    scale_high: float
    loglik: float = float("nan")
    n_iter: int = 0
    converged: bool = False

    @staticmethod
    def log_pdf(log_x: np.ndarray, shape: float, scale: float) -> np.ndarray:
        z = np.asarray(log_x, dtype=np.float64) - math.log(scale)
        # (x/lam)^k is clipped at e^700 (its log-density is then ~ -1e304, i.e. zero density)
        return math.log(shape) - math.log(scale) + (shape - 1.0) * z - np.exp(np.minimum(shape * z, 700.0))

    def weighted_log_pdfs(self, log_x: np.ndarray) -> np.ndarray:
        """(n, 2): log(pi_low f_low), log(pi_high f_high)."""
        return np.stack(
            [
                math.log(self.weight_low) + self.log_pdf(log_x, self.shape_low, self.scale_low),
                math.log1p(-self.weight_low) + self.log_pdf(log_x, self.shape_high, self.scale_high),
            ],
            axis=1,
        )

    def responsibilities(self, log_x: np.ndarray) -> np.ndarray:
        """(n, 2) posterior membership probabilities (low, high)."""
        lw = self.weighted_log_pdfs(log_x)
        return np.exp(lw - logsumexp(lw, axis=1, keepdims=True))

    def loglikelihood(self, log_x: np.ndarray) -> float:
        """sum_i log p(x_i) (densities in x, as scipy.stats.weibull_min)."""
        return float(logsumexp(self.weighted_log_pdfs(log_x), axis=1).sum())

    @property
    def mean_low(self) -> float:
        return self.scale_low * math.exp(gammaln(1.0 + 1.0 / self.shape_low))

    @property
    def mean_high(self) -> float:
        return self.scale_high * math.exp(gammaln(1.0 + 1.0 / self.shape_high))


_SHAPE_BOUNDS = (1e-2, 1e3)


def _weighted_weibull_mle(log_x: np.ndarray, r: np.ndarray, k0: float | None = None) -> tuple[float, float]:
    """Weighted Weibull MLE: solve d/dk of the profile likelihood for the shape k (brentq), then
    lam = (sum r x^k / sum r)^(1/k). ``k0`` (the previous EM iterate) narrows the bracket."""
    keep = r > 1e-300
    lx, w = log_x[keep], r[keep]
    log_w = np.log(w)
    mean_lx = float(np.dot(w, lx) / w.sum())

    def g(k: float) -> float:  # increasing in k; root = MLE shape
        a = k * lx + log_w
        p = np.exp(a - a.max())
        return float(np.dot(p, lx) / p.sum()) - 1.0 / k - mean_lx

    lo, hi = _SHAPE_BOUNDS
    if k0 is not None:  # bracket around the previous shape, widened until it holds the root
        a_, b_ = max(lo, k0 / 2.0), min(hi, k0 * 2.0)
        while a_ > lo and g(a_) > 0:
            a_ = max(lo, a_ / 4.0)
        while b_ < hi and g(b_) < 0:
            b_ = min(hi, b_ * 4.0)
        lo, hi = a_, b_
    g_lo, g_hi = g(lo), g(hi)
    if g_lo >= 0:
        k = lo
    elif g_hi <= 0:
        k = hi
    else:
        k = brentq(g, lo, hi, xtol=1e-8, rtol=1e-8, maxiter=100)
    a = k * lx + log_w
    m = a.max()
    log_lam = (m + math.log(np.exp(a - m).sum()) - math.log(w.sum())) / k
    return float(k), float(math.exp(log_lam))


def fit_weibull_mixture(
    x: np.ndarray | None = None,
    *,
    log_x: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-7,
    weight_bounds: tuple[float, float] = (0.2, 0.8),
) -> WeibullMixture | None:
    """Fit a 2-component Weibull mixture by EM (our implementation; scipy for the root finding).

    E-step: responsibilities r_ij ∝ pi_j f(x_i; k_j, lam_j). M-step: pi_low = mean_i r_i,low
    clipped to ``weight_bounds`` (RPC bounds the weight to [0.2, 0.8] too; clipping is the exact
    constrained maximiser because the objective is concave in pi), and a weighted Weibull MLE
    per component (shape from the profile-likelihood equation
    1/k + sum r ln x / sum r - sum r x^k ln x / sum r x^k = 0, solved with brentq on
    [0.01, 1000]). Initialised by splitting at the median rank. Data are rescaled by their
    maximum while fitting (the Weibull family is scale-equivariant) and scales are mapped back.

    Returns None when the mixture is not identifiable (fewer than 3 points or fewer than 2
    distinct values): callers then prune nothing. Components are ordered so "low" has the
    smaller mean.
    """
    if log_x is None:
        if x is None:
            raise ValueError("give x or log_x")
        x = np.asarray(x, dtype=np.float64)
        if (x <= 0).any() or not np.isfinite(x).all():
            raise ValueError("Weibull mixture data must be finite and > 0")
        log_x = np.log(x)
    log_x = np.asarray(log_x, dtype=np.float64).reshape(-1)
    if not np.isfinite(log_x).all():
        raise ValueError("log_x must be finite")
    if log_x.size < 3 or np.ptp(log_x) < 1e-12:
        return None
    shift = float(log_x.max())
    ly = log_x - shift
    n = ly.size
    ranks = np.argsort(np.argsort(ly, kind="stable"), kind="stable")
    r_low = np.where(ranks < n / 2, 0.9, 0.1)
    pi_low = 0.5
    comps = [_weighted_weibull_mle(ly, r_low), _weighted_weibull_mle(ly, 1.0 - r_low)]
    prev = -np.inf
    ll = -np.inf
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        m = WeibullMixture(pi_low, comps[0][0], comps[0][1], comps[1][0], comps[1][1])
        lw = m.weighted_log_pdfs(ly)
        top = lw.max(axis=1, keepdims=True)
        norm = top + np.log(np.exp(lw - top).sum(axis=1, keepdims=True))
        ll = float(norm.sum())
        resp = np.exp(lw - norm)
        if abs(ll - prev) <= tol * max(1.0, abs(ll)):
            converged = True
            break
        prev = ll
        pi_low = float(np.clip(resp[:, 0].mean(), *weight_bounds))
        new = []
        for j in range(2):
            if resp[:, j].sum() > 1e-8:
                new.append(_weighted_weibull_mle(ly, resp[:, j], comps[j][0]))
            else:  # an empty component keeps its parameters
                new.append(comps[j])
        comps = new
    scale = math.exp(shift)
    a = (pi_low, comps[0][0], comps[0][1] * scale)
    b = (1.0 - pi_low, comps[1][0], comps[1][1] * scale)
    mean = lambda c: c[2] * math.exp(gammaln(1.0 + 1.0 / c[1]))  # noqa: E731
    low, high = (a, b) if mean(a) <= mean(b) else (b, a)
    return WeibullMixture(
        low[0], low[1], low[2], high[1], high[2], loglik=ll - n * shift, n_iter=it, converged=converged
    )


def rpc_prune_mask(path_probs: np.ndarray, mixture: WeibullMixture | None) -> np.ndarray:
    """RPC reasoning pruning: keep[i] = not (low component more likely AND p_i < mean(p)).

    "More likely under the low component" means pi_low f_low(p_i) > pi_high f_high(p_i)
    (posterior membership). With no mixture (not identifiable) every path is kept.
    """
    p = np.asarray(path_probs, dtype=np.float64)
    if mixture is None:
        return np.ones(p.size, dtype=bool)
    resp = mixture.responsibilities(np.log(p))
    return ~((resp[:, 0] > resp[:, 1]) & (p < p.mean()))


def rpc_answer_scores(
    texts: Sequence[str],
    answers: Sequence[str],
    mean_logprobs: np.ndarray,
    *,
    prune: bool = True,
    mixture_kwargs: dict[str, Any] | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """RPC (perplexity consistency) for one prompt.

    Path weight w_k = exp(mean token log-prob of path k). Optionally prune paths with
    :func:`rpc_prune_mask` (mixture fitted to all K path probabilities; mean over all K).
    Score(a) = sum of w over *unique* kept paths (identical completions counted once) whose
    answer is a; confidences = Score(a) / sum_b Score(b). Returns (confidence per answer, keep).
    """
    lp = np.asarray(mean_logprobs, dtype=np.float64)
    w = np.exp(lp)
    keep = np.ones(lp.size, dtype=bool)
    if prune:
        mix = fit_weibull_mixture(log_x=lp, **(mixture_kwargs or {}))
        if mix is not None:
            # same rule as rpc_prune_mask, evaluated in log space (w can underflow)
            resp = mix.responsibilities(lp)
            keep = ~((resp[:, 0] > resp[:, 1]) & (w < w.mean()))
    seen: set[str] = set()
    score: dict[str, float] = {}
    for text, ans, wk, kk in zip(texts, answers, w, keep):
        if not kk or text in seen:
            continue
        seen.add(text)
        score[ans] = score.get(ans, 0.0) + float(wk)
    total = sum(score.values())
    return {a: s / total for a, s in score.items()}, keep


@detector("rpc")
class RPC(Estimator):
    """RPC (perplexity consistency + reasoning pruning), as an uncertainty score.

    Per prompt: w_k = exp(mean_t log p) of each of the K samples (mean over the span: whole
    sample for ``span="response"``, its answer tokens for ``span="answer"``); prune (optional)
    paths that are more likely under the low component of a 2-component Weibull mixture fitted
    to the K path probabilities *and* below their mean; Score(a) = sum of w over unique kept
    paths with answer a; conf(a) = Score(a) / sum_b Score(b).
    u = 1 - conf(greedy answer) (``target="greedy"``, the response under test; 0 confidence if
    no kept sample has it) or u = 1 - max_a conf(a) (``target="argmax"``, RPC's own answer).
    """

    label = "RPC (perplexity consistency + Weibull pruning)"

    def __init__(
        self,
        span: str = "answer",
        prune: bool = True,
        target: str = "greedy",
        weight_bounds: tuple[float, float] = (0.2, 0.8),
    ):
        super().__init__(span)
        if target not in ("greedy", "argmax"):
            raise ValueError(f"target = {target!r} is not allowed: 'greedy' or 'argmax'")
        self.prune = bool(prune)
        self.target = target
        self.weight_bounds = tuple(weight_bounds)

    def _score(self, stats, in_sample):
        lp = stats.sample_path_logprob(self.span, "mean")
        u = np.empty(stats.n)
        for i in range(stats.n):
            conf, _ = rpc_answer_scores(
                stats.sample_texts[i], stats.sample_answers[i], lp[i], prune=self.prune,
                mixture_kwargs={"weight_bounds": self.weight_bounds},
            )
            c = conf.get(str(stats.answer[i]), 0.0) if self.target == "greedy" else max(conf.values())
            u[i] = 1.0 - c
        return u


# -- hidden-state detectors (fitted) ---------------------------------------------------------

JITTERS = tuple(10.0**e for e in range(-15, 0))


def jittered_inverse_covariance(cov: np.ndarray, jitters: Sequence[float] = JITTERS) -> tuple[np.ndarray, float]:
    """lm-polygraph's regularisation: add the smallest jitter * I (1e-15, 1e-14, ..., 1e-1) that
    makes the covariance positive definite, then invert in float64. (lm-polygraph accepts
    eigenvalues >= 0; we require > 0 so that the inverse exists.) Returns (inverse, jitter)."""
    cov = np.asarray(cov, dtype=np.float64)
    eye = np.eye(cov.shape[0])
    eps = float(jitters[-1])
    for e in jitters:
        if np.linalg.eigvalsh(cov + e * eye).min() > 0:
            eps = float(e)
            break
    return np.linalg.inv(cov + eps * eye), eps


def _layer_index(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise ValueError(
            f"layer = {layer} is out of range for {n_layers} hidden-state layers (0..{n_layers - 1} or negative)"
        )
    return layer % n_layers


def _features(stats: GenerationStats, span: str, layer: int) -> np.ndarray:
    h = stats.hidden(span)
    return np.asarray(h[:, _layer_index(layer, h.shape[1]), :], dtype=np.float64)


@detector("mahalanobis")
class MahalanobisSingle(Estimator):
    """Mahalanobis distance, lm-polygraph form (single centroid).

    mu = mean of fit-split features (pooled over the span) at ``layer`` (default: last);
    Sigma = their sample covariance (ddof = 1, as torch.cov) + jitter * I (smallest jitter in
    1e-15..1e-1 giving a positive-definite matrix); u = sqrt((f - mu)^T Sigma^-1 (f - mu)).
    ``centroid_on="all"`` (lm-polygraph: every training embedding; labels unused) or
    ``"correct"`` (only fit rows whose response is right).
    """

    label = "Mahalanobis (lm-polygraph single centroid)"
    needs_fit = True

    def __init__(self, span: str = "answer", layer: int = -1, centroid_on: str = "all"):
        super().__init__(span)
        if centroid_on not in ("all", "correct"):
            raise ValueError(f"centroid_on = {centroid_on!r} is not allowed: 'all' or 'correct'")
        self.layer = int(layer)
        self.centroid_on = centroid_on

    @property
    def supervised(self) -> bool:  # type: ignore[override]
        return self.centroid_on == "correct"

    def _fit(self, stats):
        x = _features(stats, self.span, self.layer)
        if self.centroid_on == "correct":
            x = x[~stats.labels()]
        self.mean_ = x.mean(axis=0)
        self.precision_, self.jitter_ = jittered_inverse_covariance(np.cov(x, rowvar=False, ddof=1))

    def _score(self, stats, in_sample):
        d = _features(stats, self.span, self.layer) - self.mean_
        return np.sqrt(np.maximum(((d @ self.precision_) * d).sum(axis=1), 0.0))


def _tied_gaussian(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means (2, d) and the pseudo-inverse of the tied MLE covariance of class-centred x."""
    means = np.stack([x[y == c].mean(axis=0) for c in (0, 1)])
    centred = x - means[y.astype(int)]
    cov = centred.T @ centred / len(x)  # MLE (ddof = 0), as sklearn's EmpiricalCovariance
    return means, _pinvh(cov)


def _pinvh(a: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a symmetric matrix (eigenvalues below max|lambda| * n * eps dropped,
    scipy.linalg.pinvh's default cutoff)."""
    w, v = np.linalg.eigh(a)
    keep = np.abs(w) > np.abs(w).max() * a.shape[0] * np.finfo(np.float64).eps
    return (v[:, keep] / w[keep]) @ v[:, keep].T


def _class_scores(x: np.ndarray, means: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """(n, 2): -(f - mu_c)^T P (f - mu_c) / 2 for c = correct, wrong."""
    cols = []
    for mu in means:
        d = x - mu
        cols.append(-0.5 * ((d @ prec) * d).sum(axis=1))
    return np.stack(cols, axis=1)


@detector("mahalanobis_lee")
class MahalanobisLee(Estimator):
    """Mahalanobis, Lee et al. form: class-conditional Gaussians with a tied covariance.

    Classes c = correct (0) / wrong (1) on the fit split. Per layer l: means mu_{l,c}, tied
    covariance Sigma_l = MLE over class-centred features (precision = pseudo-inverse, as
    ``sklearn.covariance.EmpiricalCovariance``), M_l(f) = max_c -(f - mu_{l,c})^T Sigma_l^-1
    (f - mu_{l,c}) / 2. The per-layer scores (``combine="max"``, the paper's; or
    ``"per_class"``: both class scores per layer) are combined by a logistic regression on
    ``is_error`` fitted on the fit split; u = its log-odds of "wrong". The regression is
    trained on *out-of-fold* layer scores (``n_folds``-fold cross-fitting of the Gaussians; 1 =
    in-sample) so that it does not learn from over-fitted distances; the Gaussians used at
    test time are refitted on the whole fit split. The paper's input perturbation (eps) is not
    applied: it needs the model (embedding space), not stored statistics.
    """

    label = "Mahalanobis (Lee et al.: tied covariance, layers combined by LR)"
    needs_fit = True
    supervised = True

    def __init__(
        self,
        span: str = "answer",
        layers: str | Sequence[int] = "all",
        combine: str = "max",
        n_folds: int = 5,
        C: float = 1.0,  # noqa: N803 (sklearn's name)
        seed: int = 0,
    ):
        super().__init__(span)
        if combine not in ("max", "per_class"):
            raise ValueError(f"combine = {combine!r} is not allowed: 'max' or 'per_class'")
        if n_folds < 1:
            raise ValueError(f"n_folds = {n_folds} is not allowed: >= 1 (1 = no cross-fitting)")
        self.layers = layers if layers == "all" else [int(v) for v in layers]
        self.combine, self.n_folds, self.C, self.seed = combine, int(n_folds), float(C), int(seed)

    def _layer_list(self, stats: GenerationStats) -> list[int]:
        n_layers = stats.hidden(self.span).shape[1]
        return list(range(n_layers)) if self.layers == "all" else [_layer_index(v, n_layers) for v in self.layers]

    def _layer_features(self, h: np.ndarray, gaussians: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        cols = []
        for l, (means, prec) in zip(self.layers_, gaussians):
            s = _class_scores(h[:, l, :].astype(np.float64), means, prec)
            cols.append(s.max(axis=1, keepdims=True) if self.combine == "max" else s)
        return np.concatenate(cols, axis=1)

    def _fit(self, stats):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        h = stats.hidden(self.span)
        y = stats.labels().astype(int)
        self.layers_ = self._layer_list(stats)

        def fit_gaussians(rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            return [_tied_gaussian(h[rows, l, :].astype(np.float64), y[rows]) for l in self.layers_]

        n_folds = min(self.n_folds, int(np.bincount(y, minlength=2).min()))
        if n_folds >= 2:
            feats = np.zeros((len(y), len(self.layers_) * (1 if self.combine == "max" else 2)))
            for train, held in _folds(y, n_folds, self.seed):
                feats[held] = self._layer_features(h[held], fit_gaussians(train))
        else:
            feats = None
        self.gaussians_ = fit_gaussians(np.arange(len(y)))
        if feats is None:
            feats = self._layer_features(h, self.gaussians_)
        self.combiner_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000))
        self.combiner_.fit(feats, y)

    def layer_scores(self, stats: GenerationStats) -> np.ndarray:
        """(N, n_layers) Lee confidence M_l (higher = closer to a class) with the fitted Gaussians."""
        h = stats.hidden(self.span)
        cols = [
            _class_scores(h[:, l, :].astype(np.float64), m, p).max(axis=1)
            for l, (m, p) in zip(self.layers_, self.gaussians_)
        ]
        return np.stack(cols, axis=1)

    def _score(self, stats, in_sample):
        return self.combiner_.decision_function(self._layer_features(stats.hidden(self.span), self.gaussians_))


def _folds(y: np.ndarray, n_folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)


def _probe(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


@detector("linear_probe")
class LinearProbe(Estimator):
    """Linear probe: logistic regression on standardised pooled hidden states of one layer,
    fitted on the fit split's labels; u = log-odds of "wrong" (decision function).

    ``layer="best"`` picks the layer with the highest ``n_folds``-fold cross-validated AUROC on
    the fit split (stored as ``layer_`` and ``cv_auroc_``).
    """

    label = "Linear probe (logistic regression on hidden states)"
    needs_fit = True
    supervised = True

    def __init__(self, span: str = "answer", layer: int | str = -1, C: float = 1.0, n_folds: int = 5, seed: int = 0):
        super().__init__(span)
        if isinstance(layer, str) and layer != "best":
            raise ValueError(f"layer = {layer!r} is not allowed: an integer or 'best'")
        self.layer, self.C, self.n_folds, self.seed = layer, float(C), int(n_folds), int(seed)

    def _fit(self, stats):
        from sklearn.metrics import roc_auc_score

        y = stats.labels().astype(int)
        h = stats.hidden(self.span)
        if self.layer == "best":
            n_folds = max(2, min(self.n_folds, int(np.bincount(y, minlength=2).min())))
            aucs = []
            for l in range(h.shape[1]):
                oof = np.zeros(len(y))
                for train, held in _folds(y, n_folds, self.seed):
                    oof[held] = _probe(self.C).fit(h[train, l], y[train]).decision_function(h[held, l])
                aucs.append(float(roc_auc_score(y, oof)))
            self.cv_auroc_ = aucs
            self.layer_ = int(np.argmax(aucs))
        else:
            self.layer_ = _layer_index(int(self.layer), h.shape[1])
        self.model_ = _probe(self.C).fit(np.asarray(h[:, self.layer_], np.float64), y)

    def _score(self, stats, in_sample):
        return self.model_.decision_function(np.asarray(stats.hidden(self.span)[:, self.layer_], np.float64))


class _NeighbourBase(Estimator):
    """Shared: standardised features of one layer and distances to the fit rows."""

    needs_fit = True
    supervised = True

    def _prepare(self, stats):
        x = _features(stats, self.span, self.layer)
        self.mu_, self.sd_ = x.mean(axis=0), x.std(axis=0) + 1e-12
        self.x_fit_ = (x - self.mu_) / self.sd_
        self.y_fit_ = stats.labels().astype(int)
        self.ids_fit_ = stats.ids.copy()

    def _distances(self, stats, in_sample):
        x = (_features(stats, self.span, self.layer) - self.mu_) / self.sd_
        d2 = (x**2).sum(1)[:, None] + (self.x_fit_**2).sum(1)[None, :] - 2 * x @ self.x_fit_.T
        d = np.sqrt(np.maximum(d2, 0.0))
        if in_sample:  # a row never counts as its own neighbour
            d[stats.ids[:, None] == self.ids_fit_[None, :]] = np.inf
        return x, d


@detector("knn")
class KNN(_NeighbourBase):
    """kNN error rate: u = fraction of wrong responses among the k nearest fit rows (Euclidean
    distance between standardised pooled hidden states of ``layer``)."""

    label = "kNN error rate (hidden states)"

    def __init__(self, span: str = "answer", layer: int = -1, k: int = 10):
        super().__init__(span)
        if k < 1:
            raise ValueError(f"k = {k} is not allowed: k >= 1")
        self.layer, self.k = int(layer), int(k)

    def _fit(self, stats):
        self._prepare(stats)

    def _score(self, stats, in_sample):
        _, d = self._distances(stats, in_sample)
        k = min(self.k, d.shape[1] - (1 if in_sample else 0))
        nn = np.argsort(d, axis=1, kind="stable")[:, :k]
        return self.y_fit_[nn].mean(axis=1)


@detector("sdm_adaptation")
class SDMAdaptation(_NeighbourBase):
    """SDM-style detector -- an *adaptation* of "Similarity-Distance-Magnitude Universal
    Verification"; the exact SDM formula is unverified here.

    A linear probe gives the log-odds s(f) of "wrong" (the magnitude). With the probe's
    predicted class y_hat = [s > 0]:

    - similarity q = number of consecutive nearest fit rows (standardised features, Euclidean)
      whose label equals y_hat and whose out-of-fold probe prediction was right;
    - distance d = fraction of fit rows whose nearest-other-fit-row distance is >= the distance
      from f to its nearest fit row (1 = as close as typical training points, 0 = farther than all);
    - u = SDM probability of "wrong" = (2+q)^(d s) / (1 + (2+q)^(d s)) = sigmoid(d s ln(2+q)),
      i.e. a softmax over the logits (0, s) with base 2+q and logits scaled by d. Far from the
      training data (d -> 0) u tends to 1/2.
    """

    label = "SDM-style similarity x distance x magnitude (adaptation)"

    def __init__(self, span: str = "answer", layer: int = -1, C: float = 1.0, n_folds: int = 5, seed: int = 0):
        super().__init__(span)
        self.layer, self.C, self.n_folds, self.seed = int(layer), float(C), int(n_folds), int(seed)

    def _fit(self, stats):
        self._prepare(stats)
        y = self.y_fit_
        n_folds = max(2, min(self.n_folds, int(np.bincount(y, minlength=2).min())))
        oof = np.zeros(len(y))
        for train, held in _folds(y, n_folds, self.seed):
            oof[held] = _probe(self.C).fit(self.x_fit_[train], y[train]).decision_function(self.x_fit_[held])
        self.correct_fit_ = (oof > 0).astype(int) == y
        self.probe_ = _probe(self.C).fit(self.x_fit_, y)
        sq = (self.x_fit_**2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * self.x_fit_ @ self.x_fit_.T, 0.0)
        np.fill_diagonal(d2, np.inf)
        self.ref_dist_ = np.sort(np.sqrt(d2.min(axis=1)))

    def components(self, stats: GenerationStats, in_sample: bool = False) -> dict[str, np.ndarray]:
        """Per row: magnitude s, similarity q, distance quantile d, and u (same guards as score)."""
        if self.fit_ids_ is None:
            raise RuntimeError(f"{self.name}: call fit(stats_fit) first")
        if not in_sample:
            check_disjoint(self.fit_ids_, stats.ids.tolist())
        stats = stats.without_labels()
        x, dist = self._distances(stats, in_sample)
        s = self.probe_.decision_function(x)
        y_hat = (s > 0).astype(int)
        order = np.argsort(dist, axis=1, kind="stable")
        q = np.zeros(stats.n)
        for i in range(stats.n):
            ok = (self.y_fit_[order[i]] == y_hat[i]) & self.correct_fit_[order[i]] & np.isfinite(dist[i, order[i]])
            q[i] = len(ok) if ok.all() else int(np.argmin(ok))
        nearest = dist.min(axis=1)
        d = 1.0 - np.searchsorted(self.ref_dist_, nearest, side="left") / len(self.ref_dist_)
        u = 1.0 / (1.0 + np.exp(-d * s * np.log(2.0 + q)))
        return {"magnitude": s, "similarity": q, "distance": d, "u": u}

    def _score(self, stats, in_sample):
        return self.components(stats, in_sample)["u"]


# -- registry: names and keyword arguments come from here ------------------------------------


def estimator_names() -> list[str]:
    return DETECTORS.names()


def build_estimator(name: str, span: str = "answer", **kwargs: Any) -> Estimator:
    """Construct a registered detector on ``span``; an unknown name or keyword argument raises
    :class:`~trustlab.core.config.ConfigError` (a ``ValueError``) naming what is allowed."""
    DETECTORS.check(name, kwargs, skip=("span",))
    return DETECTORS.get(name)(span=span, **kwargs)


def describe_estimators() -> list[dict[str, Any]]:
    """One row per detector (name, label, fitted?, supervised?, first docstring line)."""
    rows = []
    for name in DETECTORS:
        cls = DETECTORS.get(name)
        sup = cls.supervised if isinstance(cls.__dict__.get("supervised"), bool) else "optional"
        rows.append({"name": name, "label": cls.label, "needs_fit": cls.needs_fit, "supervised": sup,
                     "summary": (cls.__doc__ or "").strip().splitlines()[0]})
    return rows


# -- helpers for experiments ---------------------------------------------------------------------


def out_of_fold_scores(
    name: str, stats_fit: GenerationStats, *, span: str = "answer", oof_folds: int = 5, oof_seed: int = 0,
    **kwargs: Any,
) -> np.ndarray:
    """Honest u for the fit split: unfitted detectors score directly; fitted ones are refitted
    ``oof_folds`` times (stratified by label, shuffled with ``oof_seed``) and each fold is scored
    by a model that did not see it. Use these to choose thresholds on the fit split. ``kwargs``
    go to the estimator unchanged (its own ``n_folds``/``seed``, e.g. Lee's cross-fitting)."""
    est = build_estimator(name, span=span, **kwargs)
    if not est.needs_fit:
        return est.score(stats_fit)
    y = stats_fit.labels().astype(int)
    n_folds = max(2, min(oof_folds, int(np.bincount(y, minlength=2).min())))
    u = np.zeros(stats_fit.n)
    for train, held in _folds(y, n_folds, oof_seed):
        u[held] = build_estimator(name, span=span, **kwargs).fit(stats_fit.subset(train)).score(stats_fit.subset(held))
    return u


def per_layer_auroc(
    stats_fit: GenerationStats,
    stats_test: GenerationStats,
    *,
    method: str = "linear_probe",
    span: str = "answer",
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """"Which layer knows best": fit ``method`` on one layer at a time (fit split) and report the
    test AUROC per layer. ``method`` is any detector with a ``layer`` or ``layers`` parameter
    (linear_probe, mahalanobis, mahalanobis_lee, knn, sdm_adaptation)."""
    from trustlab.error_detection.metrics import auroc

    check_disjoint(stats_fit.ids, stats_test.ids)
    params = DETECTORS.parameters(method)  # raises the unknown-name error
    if "layer" not in params and "layers" not in params:
        allowed = layered_detectors()
        raise ValueError(f"method = {method!r} has no layer parameter; choose one of {', '.join(map(repr, allowed))}")
    y = stats_test.labels()
    rows = []
    for l in range(stats_fit.hidden(span).shape[1]):
        kw = dict(kwargs, **({"layer": l} if "layer" in params else {"layers": [l]}))
        u = build_estimator(method, span=span, **kw).fit(stats_fit).score(stats_test)
        rows.append({"layer": l, "method": method, "span": span, "auroc": auroc(y, u)})
    return rows


# detectors that live in their own modules register themselves on import (after the base class exists)
from trustlab.error_detection import meta_ranking, spc  # noqa: E402, F401
