"""Equal-budget tuning of the noise scales on the validation people.

Every noise-injecting method gets the same budget: one grid of the same number of values
(``sigma0_grid`` for NoiseFiT, ``neftune_alpha_grid`` for NEFTune, from "no effect" to
"harmful"), each value fine-tuned with every seed of ``tune_seeds`` and evaluated (greedy) on
the *validation* people only (``trustlab.noisefit.world.split_part``). One rule picks the value
for every method (:data:`RULE`); the chosen values then run on every seed of ``seeds`` and the
claims compare tuned against tuned on the *test* people.

* The swept variants are the :data:`PRIMARY` ones that the run needs: NEFTune, NoiseFiT-Largest
  and NoiseFiT-Lowest (Largest and Lowest are the two sides of a claim, so each is tuned).
* A variant that is not swept but has a noise knob (the loss-term ablations) takes the value
  chosen for the primary variant with the same knob and layer selection: an ablation changes
  the loss, not the noise.
* SFT has no noise knob; the grids start at a value with no measurable effect, so "tuned
  NoiseFiT" can always fall back to behaving like SFT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.variants import get_variant

# objective -> (the config field it is tuned on, the config field of its grid)
KNOBS: dict[str, tuple[str, str]] = {
    "noisefit": ("sigma0", "sigma0_grid"),
    "noisy_ce": ("sigma0", "sigma0_grid"),
    "neftune": ("neftune_alpha", "neftune_alpha_grid"),
}
PRIMARY = ("neftune", "noisefit_largest", "noisefit_lowest")
SCORE_METRICS = ("halluc_qa_heldout", "halluc_nonexistent_test")
RULE = ("the value with the lowest validation hallucination (greedy; the mean of the held-out and the "
        "non-existent people's rates, averaged over the tuning seeds); ties go to the smaller noise")  # fmt: skip


def knob(variant: str) -> str | None:
    """The config field a variant's noise scale lives in (None: no noise to tune)."""
    entry = KNOBS.get(get_variant(variant).objective)
    return entry[0] if entry else None


def grid(cfg: NoiseFitConfig, variant: str) -> list[float]:
    return list(getattr(cfg, KNOBS[get_variant(variant).objective][1]))


def source(variant: str) -> str | None:
    """The primary variant whose tuned value ``variant`` uses (itself for a primary one)."""
    if knob(variant) is None:
        return None
    selection = get_variant(variant).selection
    for p in PRIMARY:
        if knob(p) == knob(variant) and get_variant(p).selection == selection:
            return p
    return None


def used_variants(cfg: NoiseFitConfig) -> list[str]:
    return list(cfg.variants) + [v for v in (cfg.new_facts_variants if cfg.include_new_facts else [])
                                 if v not in cfg.variants]  # fmt: skip


def swept_variants(cfg: NoiseFitConfig) -> list[str]:
    """The primary variants the run needs, in :data:`PRIMARY` order (none when ``tune`` is off)."""
    if not cfg.tune:
        return []
    needed = {source(v) for v in used_variants(cfg)}
    return [p for p in PRIMARY if p in needed]


def trials(cfg: NoiseFitConfig) -> list[tuple[str, float, int]]:
    """(variant, value, seed) of every sweep run: the same number for every swept variant."""
    return [(v, float(x), s) for v in swept_variants(cfg) for x in grid(cfg, v) for s in cfg.tune_seeds]


def with_value(cfg: NoiseFitConfig, variant: str, value: float) -> NoiseFitConfig:
    """``cfg`` with ``variant``'s noise knob set to ``value``."""
    return dataclasses.replace(cfg, **{knob(variant): float(value)})


def score(row: dict[str, Any]) -> float:
    return float(np.mean([row.get(m, float("nan")) for m in SCORE_METRICS]))


def choose(sweep_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """variant -> ``{"param", "value", "score", "grid", "scores"}`` by :data:`RULE`."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in sweep_rows):
        rows = [r for r in sweep_rows if r["variant"] == variant]
        values = sorted({r["value"] for r in rows})
        scores = {x: float(np.mean([score(r) for r in rows if r["value"] == x])) for x in values}
        finite = [x for x in values if np.isfinite(scores[x])]
        # rounding makes equal rates (shares of the same item count) tie exactly; min() keeps the first = smallest
        best = min(finite, key=lambda x: round(scores[x], 9)) if finite else values[0]
        out[variant] = {"param": rows[0]["param"], "value": best, "score": scores[best], "grid": values,
                        "scores": [scores[x] for x in values]}  # fmt: skip
    return out


def tuned_config(cfg: NoiseFitConfig, variant: str, chosen: dict[str, dict[str, Any]]) -> NoiseFitConfig:
    """``cfg`` with the value chosen for ``variant``'s source (``cfg`` unchanged when none)."""
    src = source(variant)
    if src is None or src not in chosen:
        return cfg
    return with_value(cfg, variant, chosen[src]["value"])
