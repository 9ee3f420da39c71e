"""The entropy-attention claims, as data, and the rows the claims engine makes of them.

Each claim compares two variants on one metric, paired by training seed
(:func:`trustlab.core.claims.seed_row`). A seed where either run diverged has no finished model
to measure, so it is left out of the pair and counted in the row's note; a claim left with fewer
than two seeds, or whose variants were not run, is a *not evaluated* row.

Metrics (from :func:`trustlab.entropy_attention.tables.run_metrics`): ``early_norm_entropy`` is
the mean normalised entropy of the first half of the layers (0 = one-hot, 1 = uniform causal
attention), ``early_overloaded`` / ``overloaded`` the share of heads above the overload
threshold in those layers / in all layers, ``val_ppl`` the validation perplexity per byte; all
on the test windows, which the choice of lambda (on the tuning windows) never sees. The
regularised variants run at the chosen lambda (``Results.chosen_lam``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trustlab.core.claims import ClaimSpec, check_specs, seed_row, unevaluated_row
from trustlab.entropy_attention.results import Results
from trustlab.entropy_attention.tables import runs_frame
from trustlab.entropy_attention.variants import get_variant

FAMILY = "entropy_attention"
PAPER = "Jha & Reagen 2025 (arXiv 2501.03489)"
SHARE = (0.0, 1.0)
PERPLEXITY = (1.0, math.inf)

CLAIMS: tuple[ClaimSpec, ...] = check_specs((
    ClaimSpec(
        id="no_layernorm_gelu_raises_early_entropy",
        claim="Removing LayerNorm from the GELU model (SM+G vs SM+LN+G) raises the early layers' normalised "
              "attention entropy (entropic overload)",
        paper=f"{PAPER}: early layers of LayerNorm-free models go near-uniform",
        metric="early_norm_entropy", method="SM+G", baseline="SM+LN+G", expected="increase", range=SHARE,
    ),
    ClaimSpec(
        id="no_layernorm_relu_raises_early_entropy",
        claim="Removing LayerNorm from the ReLU model (SM+R vs SM+LN+R) raises the early layers' normalised "
              "attention entropy (entropic overload)",
        paper=f"{PAPER}: early layers of LayerNorm-free models go near-uniform",
        metric="early_norm_entropy", method="SM+R", baseline="SM+LN+R", expected="increase", range=SHARE,
    ),
    ClaimSpec(
        id="no_layernorm_gelu_raises_early_overloaded_share",
        claim="Removing LayerNorm from the GELU model (SM+G vs SM+LN+G) raises the share of overloaded heads "
              "in the early layers",
        paper=f"{PAPER}: SM+G has 58% of its heads in the top entropy bin",
        metric="early_overloaded", method="SM+G", baseline="SM+LN+G", expected="increase", range=SHARE,
    ),
    ClaimSpec(
        id="ereg_lowers_early_entropy",
        claim="The entropy regularizer (EReg(SM(t)+ScFuFFN) vs SM(t)+ScFuFFN, final LayerNorm kept) lowers the "
              "early layers' normalised attention entropy",
        paper=f"{PAPER}: the regularizer lowers the share of near-uniform heads",
        metric="early_norm_entropy", method="EReg(SM(t)+ScFuFFN)", baseline="SM(t)+ScFuFFN", expected="decrease",
        range=SHARE,
    ),
    ClaimSpec(
        id="ereg_lowers_early_entropy_no_final_ln",
        claim="The entropy regularizer without the final LayerNorm (EReg(SM(t)+ScFuFFN)-noFLN vs "
              "SM(t)+ScFuFFN-noFLN) lowers the early layers' normalised attention entropy",
        paper=f"{PAPER}: the regularizer lowers the share of near-uniform heads",
        metric="early_norm_entropy", method="EReg(SM(t)+ScFuFFN)-noFLN", baseline="SM(t)+ScFuFFN-noFLN",
        expected="decrease", range=SHARE,
    ),
    ClaimSpec(
        id="ereg_lowers_overloaded_share",
        claim="The entropy regularizer (EReg(SM(t)+ScFuFFN) vs SM(t)+ScFuFFN) lowers the share of overloaded "
              "heads over all layers",
        paper=f"{PAPER}: the regularizer lowers the share of near-uniform heads",
        metric="overloaded", method="EReg(SM(t)+ScFuFFN)", baseline="SM(t)+ScFuFFN", expected="decrease",
        range=SHARE,
    ),
    ClaimSpec(
        id="ereg_lowers_perplexity_vs_scfu",
        claim="The regularised model EReg(SM(t)+ScFuFFN) has lower validation perplexity than SM+ScFuFFN "
              "(final LayerNorm kept)",
        paper=f"{PAPER}, Table 1: SM+ScFuFFN 3.48 -> EReg(SM(t)+ScFuFFN) 3.21 (-7.8%)",
        metric="val_ppl", method="EReg(SM(t)+ScFuFFN)", baseline="SM+ScFuFFN", expected="decrease",
        range=PERPLEXITY,
        note="the paper's perplexities are over GPT-2 tokens, ours over bytes: only the sign and the relative "
             "change compare",
    ),
    ClaimSpec(
        id="ereg_lowers_perplexity_vs_scfu_no_final_ln",
        claim="Without the final LayerNorm, EReg(SM(t)+ScFuFFN)-noFLN has lower validation perplexity than "
              "SM+ScFuFFN-noFLN",
        paper=f"{PAPER}, Table 1: SM+ScFuFFN 3.48 -> EReg(SM(t)+ScFuFFN) 3.21 (-7.8%)",
        metric="val_ppl", method="EReg(SM(t)+ScFuFFN)-noFLN", baseline="SM+ScFuFFN-noFLN", expected="decrease",
        range=PERPLEXITY,
        note="the paper's perplexities are over GPT-2 tokens, ours over bytes: only the sign and the relative "
             "change compare",
    ),
    ClaimSpec(
        id="ereg_lowers_perplexity_vs_temperature_only",
        claim="The regularizer alone (EReg(SM(t)+ScFuFFN) vs SM(t)+ScFuFFN, same learnable temperatures) lowers "
              "validation perplexity",
        paper=f"{PAPER}: the regularizer recovers part of the perplexity lost by removing nonlinearities",
        metric="val_ppl", method="EReg(SM(t)+ScFuFFN)", baseline="SM(t)+ScFuFFN", expected="decrease",
        range=PERPLEXITY,
    ),
    ClaimSpec(
        id="relu_beats_gelu_without_layernorm",
        claim="Without LayerNorm, the ReLU model (SM+R) has lower validation perplexity than the GELU model (SM+G)",
        paper=f"{PAPER}, Table 1: ReLU-based LayerNorm-free models train better (SM+R 2.94)",
        metric="val_ppl", method="SM+R", baseline="SM+G", expected="decrease", range=PERPLEXITY,
    ),
))  # fmt: skip


def _by_seed(df, variant: str, metric: str) -> dict[int, float]:
    d = df[df.variant == variant]
    return {int(s): float(v) for s, v in zip(d.seed, d[metric])}


def claim_row(spec: ClaimSpec, method: dict[int, float], baseline: dict[int, float], extra_note: str = ""
              ) -> dict[str, Any]:  # fmt: skip
    """One claim from per-seed values of the two variants: seeds where either run has no value
    (it diverged) are left out and counted in the note (``extra_note`` is appended to it)."""
    common = sorted(set(method) & set(baseline))
    seeds = [s for s in common if np.isfinite(method[s]) and np.isfinite(baseline[s])]
    dropped = len(common) - len(seeds)
    if dropped and len(seeds) < 2:  # say why so few seeds are left (seed_row would only count them)
        return unevaluated_row(FAMILY, spec, f"{len(seeds)} paired seed(s) with both runs finished, {dropped} "
                                             f"dropped (diverged); a seed-level test needs at least 2", len(seeds))
    note = f"{spec.method} - {spec.baseline}" + (f"; {dropped} seed(s) dropped (diverged)" if dropped else "")
    if spec.metric == "val_ppl" and seeds:
        rel = float(np.mean([method[s] / baseline[s] - 1 for s in seeds]))
        note += f"; relative {100 * rel:+.1f}%"
    note += extra_note
    return seed_row(FAMILY, spec, {s: method[s] for s in seeds}, {s: baseline[s] for s in seeds}, note=note)


def _lambda_note(spec: ClaimSpec, chosen_lam: float | None) -> str:
    """The regularizer's lambda, for a claim with a regularised variant on either side."""
    if chosen_lam is None or not any(get_variant(v).entropy_reg for v in (spec.method, spec.baseline)):
        return ""
    off = ": the regularizer off, so no effect" if chosen_lam == 0 else ""
    return f"; lambda = {chosen_lam:g} (chosen on the tuning windows{off})"


def claim_rows(results: Results, specs: tuple[ClaimSpec, ...] = CLAIMS) -> list[dict[str, Any]]:
    """One row per claim (every claim of :data:`CLAIMS` by default), in order; a claim whose
    variants were not both run is 'not evaluated'."""
    df = runs_frame(results)
    ran = set(df.variant) if len(df) else set()
    rows = []
    for spec in specs:
        missing = [v for v in (spec.method, spec.baseline) if v not in ran]
        if missing:
            rows.append(unevaluated_row(FAMILY, spec, f"variant(s) not run: {', '.join(missing)}"))
            continue
        rows.append(claim_row(spec, _by_seed(df, spec.method, spec.metric), _by_seed(df, spec.baseline, spec.metric),
                              extra_note=_lambda_note(spec, results.chosen_lam)))  # fmt: skip
    return rows
