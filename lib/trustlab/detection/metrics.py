"""Metrics that score an uncertainty u (higher = more likely an error) against error labels.

Threshold-free metrics come first (method card):

- **AUROC** ``roc_auc_score(is_error, u)``; **AUPRC** ``average_precision_score(is_error, u)``,
  always reported with the base error rate b (a random detector's AUPRC).
- **PRR** as lm-polygraph's ``PredictionRejectionArea`` defines it: quality q = 1 - is_error;
  sort by ascending u; PRR = (1/N) sum_{k=1..N} mean(q over the k most confident rows), i.e. the
  area under the prediction-rejection curve. Normalised PRR = (PRR - PRR_random) /
  (PRR_oracle - PRR_random), the oracle using u = -q and the random baseline being the mean
  over shuffles, whose closed form is mean(q): under a uniformly random order every k-prefix
  has expected mean q equal to mean(q) (:func:`prr_random_shuffled` checks this numerically).
  Ties in u: lm-polygraph leaves them to ``np.argsort`` (an arbitrary order). We default to
  ``ties="mean"``, the expectation over random orderings of tied rows (each tied block's q
  replaced by the block mean, exact because PRR is linear in the prefix sums); tie-free input
  gives exactly lm-polygraph's value, and ``ties="argsort"`` reproduces its code path. When
  every row has the same label the oracle equals random and the normalised PRR is NaN
  (lm-polygraph returns the raw value then).
- **ReaLMistake-style P/R/F1** of the error class, flagging u > threshold with the threshold
  chosen on the *fit* split (max F1 there; ties -> the larger threshold, i.e. fewer flags),
  reported beside closed-form baselines on the test base rate b:

  ======================  ===========  ========  ==========================
  baseline                precision    recall    F1
  ======================  ===========  ========  ==========================
  always "error"          b            1         2b / (1 + b)
  random, flag rate r     b            r         2br / (b + r)
  random at r = b         b            b         b
  coin flip (r = 1/2)     b            1/2       b / (b + 1/2)
  ======================  ===========  ========  ==========================

  (random: precision and recall are ratios of expectations, F1 is computed from them; the
  expected F1 of a finite sample differs slightly). In :func:`evaluate` the random baseline's
  rate r is the *fit* split's base rate (known before seeing test labels).
- **Bootstrap 95% CIs** over test rows with ``trustlab.stats.bootstrap_ci(paired=(u, e))``;
  every metric uses the same seed, hence the same resamples, so CIs of different detectors
  evaluated on the same rows are paired.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from trustlab.stats import bootstrap_ci

__all__ = [
    "TIES",
    "base_rate",
    "auroc",
    "auprc",
    "prr",
    "prr_oracle",
    "prr_random",
    "prr_random_shuffled",
    "normalized_prr",
    "rejection_curve",
    "choose_threshold",
    "precision_recall_f1",
    "always_error_baseline",
    "random_baseline",
    "evaluate",
    "compare",
]

TIES = ("mean", "stable", "argsort")


def _check(is_error: Any, u: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    e = np.asarray(is_error)
    if e.ndim != 1:
        raise ValueError(f"is_error must be 1-D, got shape {e.shape}")
    if e.dtype != bool:
        if e.size and not np.isin(e, (0, 1)).all():
            raise ValueError("is_error must be boolean (or 0/1)")
        e = e.astype(bool)
    if u is None:
        return e, None
    u = np.asarray(u, dtype=np.float64)
    if u.shape != e.shape:
        raise ValueError(f"u and is_error must have the same length, got {u.shape} and {e.shape}")
    if not np.isfinite(u).all():
        raise ValueError("u has non-finite values")
    return e, u


def base_rate(is_error: Any) -> float:
    """Fraction of responses that are errors (b)."""
    e, _ = _check(is_error)
    return float(e.mean()) if e.size else float("nan")


def auroc(is_error: Any, u: Any) -> float:
    """``roc_auc_score(is_error, u)``: P(u_wrong > u_right) + P(tie)/2; NaN with one class."""
    from sklearn.metrics import roc_auc_score

    e, u = _check(is_error, u)
    if e.all() or not e.any():
        return float("nan")
    return float(roc_auc_score(e, u))


def auprc(is_error: Any, u: Any) -> float:
    """``average_precision_score(is_error, u)``; compare with :func:`base_rate`. NaN without errors."""
    from sklearn.metrics import average_precision_score

    e, u = _check(is_error, u)
    if not e.any():
        return float("nan")
    return float(average_precision_score(e, u))


def _sorted_quality(u: np.ndarray, q: np.ndarray, ties: str) -> np.ndarray:
    """q ordered from the most confident (smallest u) row; tied blocks per ``ties``."""
    if ties not in TIES:
        raise ValueError(f"ties = {ties!r} is not allowed: choose one of {', '.join(map(repr, TIES))}")
    if ties == "argsort":  # lm-polygraph's code path (np.argsort's default kind)
        return q[np.argsort(u)]
    order = np.argsort(u, kind="stable")
    qs, us = q[order].astype(np.float64), u[order]
    if ties == "mean" and qs.size:
        starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
        means = np.add.reduceat(qs, starts) / np.diff(np.r_[starts, qs.size])
        qs = np.repeat(means, np.diff(np.r_[starts, qs.size]))
    return qs


def _prefix_means(u: np.ndarray, q: np.ndarray, ties: str) -> np.ndarray:
    qs = _sorted_quality(u, q, ties)
    return np.cumsum(qs) / np.arange(1, qs.size + 1)


def prr(u: Any, is_error: Any, *, ties: str = "mean") -> float:
    """Raw PRR: (1/N) sum_{k=1..N} mean(q over the k rows with the smallest u), q = 1 - is_error."""
    e, u = _check(is_error, u)
    if not e.size:
        return float("nan")
    return float(_prefix_means(u, 1.0 - e, ties).mean())


def prr_oracle(is_error: Any) -> float:
    """PRR of the oracle u = -q (all correct rows first)."""
    e, _ = _check(is_error)
    return prr(e.astype(np.float64), e)  # u = is_error = 1 - q, same order as -q


def prr_random(is_error: Any) -> float:
    """Closed form of the random baseline: E[PRR] over uniformly random orders = mean(q)."""
    e, _ = _check(is_error)
    return float(1.0 - e.mean()) if e.size else float("nan")


def prr_random_shuffled(is_error: Any, n_shuffles: int = 1000, seed: int = 42) -> float:
    """The random baseline as lm-polygraph computes it: mean PRR over random permutations."""
    e, _ = _check(is_error)
    gen = np.random.default_rng(seed)
    scores = np.arange(e.size, dtype=np.float64)
    vals = []
    for _ in range(n_shuffles):
        gen.shuffle(scores)
        vals.append(prr(scores, e, ties="stable"))
    return float(np.mean(vals))


def normalized_prr(u: Any, is_error: Any, *, ties: str = "mean") -> float:
    """(PRR - PRR_random) / (PRR_oracle - PRR_random): 1 = oracle, 0 = random; NaN with one class."""
    e, u = _check(is_error, u)
    if e.all() or not e.any():
        return float("nan")
    rnd, orc = prr_random(e), prr_oracle(e)
    return float((prr(u, e, ties=ties) - rnd) / (orc - rnd))


def rejection_curve(u: Any, is_error: Any, *, ties: str = "mean") -> dict[str, np.ndarray]:
    """Prediction-rejection curve data: rejecting the most uncertain rows first, the mean quality
    (1 - error rate) of what is kept, for the detector, the oracle and random (mean(q)).

    Arrays of length N at rejection rates 0, 1/N, ..., (N-1)/N; PRR = mean of ``quality``.
    """
    e, u = _check(is_error, u)
    n = e.size
    q = 1.0 - e
    return {
        "rejection_rate": 1.0 - np.arange(n, 0, -1) / n,
        "quality": _prefix_means(u, q, ties)[::-1],
        "oracle": _prefix_means(e.astype(np.float64), q, "stable")[::-1],
        "random": np.full(n, q.mean() if n else np.nan),
    }


def precision_recall_f1(flagged: Any, is_error: Any) -> tuple[float, float, float]:
    """Precision, recall and F1 of the error class for boolean predictions ``flagged``.

    Precision is 0 when nothing is flagged; recall and F1 are NaN when there are no errors.
    """
    e, _ = _check(is_error)
    f = np.asarray(flagged, dtype=bool)
    if f.shape != e.shape:
        raise ValueError(f"flagged and is_error must have the same length, got {f.shape} and {e.shape}")
    tp = float((f & e).sum())
    n_flag, n_err = float(f.sum()), float(e.sum())
    p = tp / n_flag if n_flag else 0.0
    if not n_err:
        return p, float("nan"), float("nan")
    r = tp / n_err
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def choose_threshold(u_fit: Any, is_error_fit: Any) -> float:
    """Threshold maximising the error-class F1 on the fit split (flag u > threshold).

    Candidates: -inf (flag everything = always-error) and the midpoints between consecutive
    distinct u values. Ties in F1 go to the larger threshold (fewer flags).
    """
    e, u = _check(is_error_fit, u_fit)
    if not e.any():
        raise ValueError("cannot choose a threshold: the fit split has no errors")
    v = np.unique(u)
    cands = np.r_[-np.inf, (v[:-1] + v[1:]) / 2.0]
    best_f1, best_t = -1.0, -np.inf
    for t in cands:  # ascending: '>=' keeps the largest threshold among equal F1
        f1 = precision_recall_f1(u > t, e)[2]
        if f1 >= best_f1 - 1e-12:
            best_f1, best_t = f1, float(t)
    return best_t


def always_error_baseline(b: float) -> dict[str, float]:
    """Flag every response: precision b, recall 1, F1 2b/(1+b)."""
    return {"precision": b, "recall": 1.0, "f1": 2 * b / (1 + b) if b > 0 else 0.0}


def random_baseline(b: float, rate: float) -> dict[str, float]:
    """Flag each response independently with probability ``rate``: precision b, recall rate,
    F1 2 b rate / (b + rate) (from the expected precision and recall)."""
    return {"precision": b, "recall": rate, "f1": 2 * b * rate / (b + rate) if b + rate > 0 else 0.0}


def _with_ci(
    out: dict[str, Any],
    key: str,
    stat: Callable[..., float],
    arrays: tuple,
    n_resamples: int,
    level: float,
    seed: int,
) -> None:
    point, lo, hi = bootstrap_ci(None, stat, n_resamples=n_resamples, level=level, seed=seed, paired=arrays)
    out[key], out[f"{key}_lo"], out[f"{key}_hi"] = point, lo, hi


def evaluate(
    u_test: Any,
    is_error_test: Any,
    u_fit: Any | None = None,
    is_error_fit: Any | None = None,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    ties: str = "mean",
) -> dict[str, Any]:
    """Every metric for one detector on one test set, with bootstrap CIs (``<key>_lo/_hi``).

    Keys: ``n, n_errors, base_rate(+CI), auroc, auprc, prr`` (normalised), ``prr_raw,
    prr_oracle, prr_random``. With ``u_fit``/``is_error_fit``: ``threshold`` (max F1 on fit),
    ``fit_f1``, ``precision, recall, f1, flag_rate`` on test at that threshold,
    ``f1_minus_always_error`` (paired CI), and the baselines ``always_error_{precision,recall,f1}``,
    ``random_{precision,recall,f1}`` (flag rate = fit base rate), ``coin_f1`` (rate 1/2).
    """
    e, u = _check(is_error_test, u_test)
    arrays = (u, e)
    out: dict[str, Any] = {"n": int(e.size), "n_errors": int(e.sum())}
    ci = dict(n_resamples=n_resamples, level=level, seed=seed)
    _with_ci(out, "base_rate", lambda uu, ee: base_rate(ee), arrays, **ci)
    _with_ci(out, "auroc", lambda uu, ee: auroc(ee, uu), arrays, **ci)
    _with_ci(out, "auprc", lambda uu, ee: auprc(ee, uu), arrays, **ci)
    _with_ci(out, "prr", lambda uu, ee: normalized_prr(uu, ee, ties=ties), arrays, **ci)
    out["prr_raw"] = prr(u, e, ties=ties)
    out["prr_oracle"] = prr_oracle(e)
    out["prr_random"] = prr_random(e)
    if (u_fit is None) != (is_error_fit is None):
        raise ValueError("give both u_fit and is_error_fit (for the P/R/F1 threshold) or neither")
    if u_fit is not None:
        ef, uf = _check(is_error_fit, u_fit)
        thr = choose_threshold(uf, ef)
        b, b_fit = out["base_rate"], float(ef.mean())
        out["threshold"] = thr
        out["fit_f1"] = precision_recall_f1(uf > thr, ef)[2]
        out["flag_rate"] = float((u > thr).mean()) if u.size else float("nan")
        for i, key in enumerate(("precision", "recall", "f1")):
            _with_ci(out, key, lambda uu, ee, i=i: precision_recall_f1(uu > thr, ee)[i], arrays, **ci)

        def f1_gain(uu: np.ndarray, ee: np.ndarray) -> float:
            bb = float(ee.mean())
            return precision_recall_f1(uu > thr, ee)[2] - always_error_baseline(bb)["f1"]

        _with_ci(out, "f1_minus_always_error", f1_gain, arrays, **ci)
        for name, base in (("always_error", always_error_baseline(b)), ("random", random_baseline(b, b_fit))):
            for k, v in base.items():
                out[f"{name}_{k}"] = v
        out["random_rate"] = b_fit
        out["coin_f1"] = random_baseline(b, 0.5)["f1"]
    return out


def compare(
    u_a: Any,
    u_b: Any,
    is_error: Any,
    metric: str = "auroc",
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap of metric(u_a) - metric(u_b) on the same rows: (difference, lo, hi)."""
    fns = {
        "auroc": lambda u, e: auroc(e, u),
        "auprc": lambda u, e: auprc(e, u),
        "prr": lambda u, e: normalized_prr(u, e),
    }
    if metric not in fns:
        raise ValueError(f"metric = {metric!r} is not allowed: choose one of {', '.join(map(repr, fns))}")
    e, a = _check(is_error, u_a)
    _, b = _check(is_error, u_b)
    fn = fns[metric]
    return bootstrap_ci(
        None,
        lambda aa, bb, ee: fn(aa, ee) - fn(bb, ee),
        n_resamples=n_resamples,
        level=level,
        seed=seed,
        paired=(a, b, e),
    )
