"""Choosing a hyperparameter from a sweep: the mechanics every family's tuning shares.

A family sweeps each method's knob over a grid on validation data, scores every candidate
(lower is better), and keeps one value per method. Two rules make such comparisons fair and
repeatable, and live here so that they are stated once:

* **Equal budget**: every compared method gets the same number of candidates
  (:func:`check_equal_budget`), so no side wins by being tried more often.
* **Selection**: the candidate with the lowest score (:func:`select_lowest`); a candidate
  whose score is not finite (a diverged run) counts as +inf, and ties go to the first value
  in grid order, so the choice does not depend on floating-point noise in the last digits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from trustlab.core.config import ConfigError

__all__ = ["TIE_DECIMALS", "check_equal_budget", "check_grid", "select_lowest"]

# scores equal to this many decimals are a tie (the first grid value wins)
TIE_DECIMALS = 9


def select_lowest(scores: Sequence[float], decimals: int = TIE_DECIMALS) -> int:
    """Index of the lowest score in grid order: non-finite scores count as +inf, and scores
    equal after rounding to ``decimals`` are a tie that the earliest index wins (so a sweep
    whose every run diverged selects the first value)."""
    if len(scores) == 0:
        raise ValueError("select_lowest needs at least one score")

    def key(i: int) -> float:
        s = float(scores[i])
        return round(s, decimals) if math.isfinite(s) else math.inf

    return min(range(len(scores)), key=key)  # min keeps the first of equal keys


def check_grid(values: Sequence[float], where: str) -> None:
    """A grid is a non-empty list of distinct finite numbers; raise :class:`ConfigError` naming
    ``where`` otherwise."""
    if len(values) == 0:
        raise ConfigError(f"{where} is empty: give at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where} = {list(values)!r}: {v!r} is not allowed: finite numbers only")
    if len(set(float(v) for v in values)) != len(values):
        raise ConfigError(f"{where} = {list(values)!r} is not allowed: each value at most once")


def check_equal_budget(grids: Mapping[str, Sequence[float]], trials: int, where: str) -> None:
    """Every grid in ``grids`` (method -> values) has exactly ``trials`` values; the error
    names the first method that differs, its length and the budget."""
    for name, values in grids.items():
        if len(values) != trials:
            raise ConfigError(
                f"{where}.{name} has {len(values)} value(s) {list(values)!r}: every tuned method gets the same "
                f"budget, exactly trials = {trials} values"
            )
