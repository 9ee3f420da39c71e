"""Confidence intervals and claim verdicts shared by every family's claims table.

A claim row compares a method against a baseline on one metric. Over seeds the effect is
the mean of per-seed paired differences with a Student-t 95% CI (a bootstrap over 3-5
seeds is degenerate); over items (prompts, responses) it is a percentile bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Direction = Literal["decrease", "increase"]
VERDICTS = ("supported", "not supported", "inconclusive")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def t_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval: ``mean ± t_{(1+level)/2, n-1} * s / sqrt(n)``."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if x.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return m, m - half, m + half


def bootstrap_ci(
    data: Sequence | np.ndarray,
    statistic: Callable[..., float] = np.mean,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    paired: Sequence[np.ndarray] | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap CI of ``statistic(data)`` (resampling rows with replacement).

    With ``paired=(a, b, ...)`` the statistic is called as ``statistic(a[idx], b[idx], ...)``
    so that several arrays (e.g. labels and scores) are resampled together.
    """
    gen = np.random.default_rng(seed)
    arrays = [np.asarray(a) for a in (paired if paired is not None else [data])]
    n = len(arrays[0])
    point = float(statistic(*arrays))
    stats_ = []
    for _ in range(n_resamples):
        idx = gen.integers(0, n, n)
        try:
            stats_.append(float(statistic(*[a[idx] for a in arrays])))
        except ValueError:  # e.g. AUROC on a resample with a single class
            continue
    if not stats_:
        return point, float("nan"), float("nan")
    lo, hi = np.nanpercentile(stats_, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return point, float(lo), float(hi)


def verdict(ci_low: float, ci_high: float, expected: Direction) -> str:
    """``supported`` if the CI excludes 0 in the expected direction, ``not supported`` if it
    excludes 0 the other way, otherwise ``inconclusive`` (at this scale)."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "inconclusive"
    if expected == "decrease":
        return "supported" if ci_high < 0 else "not supported" if ci_low > 0 else "inconclusive"
    if expected == "increase":
        return "supported" if ci_low > 0 else "not supported" if ci_high < 0 else "inconclusive"
    raise ValueError(f"expected = {expected!r} is not allowed: 'decrease' or 'increase'")


@dataclass
class Claim:
    """One row of a family's claims table (also gathered into the front page)."""

    family: str
    claim: str
    paper: str
    metric: str
    expected: Direction
    effect: float
    ci_low: float
    ci_high: float
    n_seeds: int
    verdict: str
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def claim_from_seeds(
    family: str,
    claim: str,
    paper: str,
    metric: str,
    method: Sequence[float],
    baseline: Sequence[float],
    expected: Direction,
    note: str = "",
) -> Claim:
    """Effect = mean over seeds of (method - baseline), paired by seed, with a t 95% CI."""
    a, b = np.asarray(method, float), np.asarray(baseline, float)
    if a.shape != b.shape:
        raise ValueError(f"method and baseline need one value per seed each, got {a.shape} and {b.shape}")
    eff, lo, hi = t_ci(a - b)
    return Claim(family, claim, paper, metric, expected, eff, lo, hi, int(a.size), verdict(lo, hi, expected), note)
