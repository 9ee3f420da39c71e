"""The family's claims, as data, and the one function that turns results into claim rows.

Every claim compares two detectors' test AUROC on ONE model: the effect is method - baseline,
its interval and p-value come from the paired bootstrap over test responses that every table
uses (:func:`run.paired_resample_weights`), and the verdict from the claims engine
(:func:`trustlab.core.claims.item_row`). The interval covers response sampling only, not the
variation between training runs.

AUROC is ``claims_aggregate``: ``task_mean`` = the mean of the per-task AUROCs over the tasks
with at least ``claims_min_per_class`` wrong and right test responses (what per-benchmark papers
report; pooling tasks whose error rates differ lets a detector score by recognising the task),
falling back to pooled when no task qualifies; ``pooled`` = one AUROC over all test rows. Each
row's note gives the other aggregate. "The best of a group" is chosen on the fit split's
out-of-fold AUROC, never on test labels.

The step-localisation claim (:data:`CORRECT_CLAIMS`, rows from :func:`correct_claim_rows`)
compares exact-step accuracy, not AUROC: the CORRECT schema cache vs the better no-cache
baseline on the fit split, paired over the natural test trajectories with a written first wrong
step (same bootstrap resamples as :func:`tables.localisation_table`).

Whether F1 at the base rate misleads (ReaLMistake) is not a method-beats-baseline question: it
is the separate table :func:`trustlab.error_detection.tables.f1_base_rate_check`.
Background: docs/methods/error_detection.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from trustlab.core.claims import ClaimSpec, check_specs, item_row, unevaluated_row
from trustlab.error_detection import metrics as M
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.correct import METHOD, CorrectRun, stream_hits
from trustlab.error_detection.run import (
    FAMILY,
    LOGIT,
    MAHALANOBIS_AND_PROBE,
    SINGLE_PASS_PROBABILITY,
    DetectorResult,
    aggregate_auroc,
    aggregate_tasks,
    best_of,
    paired_resample_weights,
)
from trustlab.error_detection.statistics import GenerationStats

CLAIMS: tuple[ClaimSpec, ...] = check_specs((
    ClaimSpec(
        id="sampling_beats_single_pass",
        claim="sampling-based consistency beats single-pass probability",
        paper="RPC; lm-polygraph",
        metric="AUROC",
        method="self_consistency",
        baseline="the better of msp and perplexity on the fit split",
        expected="increase", unit="items", range=(0.0, 1.0),
    ),
    ClaimSpec(
        id="rpc_beats_consistency_and_perplexity",
        claim="RPC beats both self-consistency and perplexity",
        paper="RPC (perplexity consistency + pruning)",
        metric="AUROC",
        method="rpc",
        baseline="the stronger of self_consistency and perplexity (effect = min of the two differences)",
        expected="increase", unit="items", range=(0.0, 1.0),
    ),
    ClaimSpec(
        id="hidden_state_beats_logit",
        claim="hidden-state detectors (Mahalanobis, probe) beat logit-based detectors",
        paper="Lee et al.; lm-polygraph",
        metric="AUROC",
        method="the best of mahalanobis, mahalanobis_lee and linear_probe on the fit split",
        baseline="the best of msp, perplexity, mean_token_entropy and zero_shot_z on the fit split",
        expected="increase", unit="items", range=(0.0, 1.0),
        note="the hidden-state detectors are trained on fit labels, the logit ones are zero-shot",
    ),
    ClaimSpec(
        id="spc_beats_msp",
        claim="SPC-UQ (split-point residual heads) beats MSP at the same single-pass cost",
        paper="Post-Hoc Split-Point Self-Consistency Verification (SPC-UQ)",
        metric="AUROC",
        method="spc_uq",
        baseline="msp",
        expected="increase", unit="items", range=(0.0, 1.0),
        note="adaptation: top-1 vs rest at each answer token, linear residual heads on the stored statistics; "
             "default score 1 - the SPC-adjusted confidence (uncertainty: discrepancy = the paper's score)",
    ),
    ClaimSpec(
        id="meta_ranking_beats_msp",
        claim="Meta Ranking with five references beats MSP",
        paper="Enabling Weak LLMs to Judge Response Reliability via Meta Ranking",
        metric="AUROC",
        method="meta_ranking",
        baseline="msp",
        expected="increase", unit="items", range=(0.0, 1.0),
        note="adaptation: the judge is a learned pairwise comparator over stored statistics, not an LM",
    ),
))  # fmt: skip
CORRECT_CLAIMS: tuple[ClaimSpec, ...] = check_specs((
    ClaimSpec(
        id="schema_cache_localises_first_wrong_step",
        claim="The schema cache localises the first wrong step better than the no-cache baselines",
        paper="CORRECT (Yu et al. 2025, arXiv:2509.24088)",
        metric="exact-step accuracy (natural errors)",
        method="correct_schema_cache",
        baseline="the better of first_low_prob and max_entropy on the fit split",
        expected="increase", unit="items", range=(0.0, 1.0),
        paper_effect=0.198,
        paper_effect_source="abstract: step-level localisation up to 19.8% better than existing methods (the best "
                            "of seven multi-agent applications), read as +0.198 exact-step accuracy",
        note="adaptation: schemata are vectors of the model's token statistics retrieved by nearest neighbours, "
             "not LLM-written summaries read by an LLM; the cache grows over the test stream, so the items are "
             "not independent",
    ),
))  # fmt: skip
check_specs(CLAIMS + CORRECT_CLAIMS)  # ids unique across the family

# claims "<method> beats <baseline>" between two named detectors (CLAIMS ids -> the two registry names)
PAIRWISE = {"spc_beats_msp": ("spc_uq", "msp"), "meta_ranking_beats_msp": ("meta_ranking", "msp")}


def claim_rows(
    cfg: ErrorDetectionConfig, stats: GenerationStats, dets: Mapping[str, DetectorResult], span: str | None = None
) -> list[dict[str, Any]]:
    """One claims-engine row per spec in :data:`CLAIMS`, on the test split of ``stats``."""
    span = span or cfg.spans[0]
    agg, kmin = cfg.claims_aggregate, cfg.claims_min_per_class
    test = stats.select(split="test")
    e = test.labels()
    W = paired_resample_weights(cfg, test.n)
    tasks = aggregate_tasks(test, agg, kmin)
    other = None if tasks is not None else aggregate_tasks(test, "task_mean", kmin)
    metric = "AUROC (pooled)" if tasks is None else "AUROC (mean over tasks)"
    scope = (f"pooled over {test.n} test responses" if tasks is None else
             f"mean over tasks {', '.join(tasks)} (>= {kmin} of each class in test)")  # fmt: skip
    if agg == "task_mean" and tasks is None:
        scope += f"; no task has >= {kmin} of each class, so pooled"
    specs = {s.id: dataclasses.replace(s, metric=metric) for s in CLAIMS}

    def get(name: str) -> DetectorResult | None:
        d = dets.get(f"{name}@{span}")
        return d if d is not None and d.ok else None

    def auc(d: DetectorResult) -> tuple[float, np.ndarray]:
        return aggregate_auroc(d.u_test, e, test.task, tasks, W)

    def alt(d: DetectorResult) -> str:
        """The other aggregate, for the note."""
        if tasks is None:
            return f"{aggregate_auroc(d.u_test, e, test.task, other)[0]:.3f} mean over tasks" if other else "n/a"
        return f"{M.auroc(e, d.u_test):.3f} pooled"

    def row(spec_id: str, effect: float, replicates: np.ndarray, note: str) -> dict[str, Any]:
        return item_row(FAMILY, specs[spec_id], effect, replicates, test.n, note=f"{note}; {scope}")

    def missing(spec_id: str, why: str) -> dict[str, Any]:
        return unevaluated_row(FAMILY, specs[spec_id], why, test.n)

    sc, ppl, rpc = get("self_consistency"), get("perplexity"), get("rpc")
    single = best_of(stats, dets, SINGLE_PASS_PROBABILITY, span, agg, kmin)
    hidden = best_of(stats, dets, MAHALANOBIS_AND_PROBE, span, agg, kmin)
    logit = best_of(stats, dets, LOGIT, span, agg, kmin)
    if not e.any() or e.all():
        why = f"the test split has only one class ({int(e.sum())} wrong of {test.n}): AUROC is undefined"
        return [missing(s.id, why) for s in CLAIMS]
    no_fit_auroc = "has no fit-split AUROC (it did not run, or the fit split has one class)"

    rows = []
    if sc is None or single is None:
        rows.append(missing("sampling_beats_single_pass", f"self_consistency did not run on the {span} span"
                            if sc is None else f"neither msp nor perplexity {no_fit_auroc}"))  # fmt: skip
    else:
        (a, ab), (b, bb) = auc(sc), auc(dets[single])
        rows.append(row("sampling_beats_single_pass", a - b, ab - bb,
                        f"self_consistency@{span} {a:.3f} ({alt(sc)}) - {single} {b:.3f} ({alt(dets[single])}; best "
                        f"of MSP/perplexity on the fit split); K = {stats.K}"))  # fmt: skip
    if rpc is None or sc is None or ppl is None:
        absent = [n for n, d in (("rpc", rpc), ("self_consistency", sc), ("perplexity", ppl)) if d is None]
        rows.append(missing("rpc_beats_consistency_and_perplexity",
                            f"{', '.join(absent)} did not run on the {span} span"))  # fmt: skip
    else:
        (r, rb), (s_, sb), (p, pb) = auc(rpc), auc(sc), auc(ppl)
        rows.append(row("rpc_beats_consistency_and_perplexity", min(r - s_, r - p), np.minimum(rb - sb, rb - pb),
                        f"min(RPC - SC, RPC - perplexity): RPC {r:.3f} ({alt(rpc)}), SC {s_:.3f}, "
                        f"perplexity {p:.3f}"))  # fmt: skip
    if hidden is None or logit is None:
        group = "no hidden-state detector (mahalanobis, mahalanobis_lee, linear_probe)" if hidden is None else \
            "no logit detector (msp, perplexity, mean_token_entropy, zero_shot_z)"
        rows.append(missing("hidden_state_beats_logit", f"{group} {no_fit_auroc}"))
    else:
        (h, hb), (l_, lb) = auc(dets[hidden]), auc(dets[logit])
        rows.append(row("hidden_state_beats_logit", h - l_, hb - lb,
                        f"{hidden} {h:.3f} ({alt(dets[hidden])}) - {logit} {l_:.3f} ({alt(dets[logit])}); each the "
                        f"best of its group on the fit split"))  # fmt: skip
    for spec_id, (method, baseline) in PAIRWISE.items():
        m, b = get(method), get(baseline)
        if m is None or b is None:
            absent = [n for n, d in ((method, m), (baseline, b)) if d is None]
            rows.append(missing(spec_id, f"{', '.join(absent)} did not run on the {span} span"))
            continue
        (a, ab), (c, cb) = auc(m), auc(b)
        calls = m.estimator.calls_per_response if m.estimator is not None else 0
        cost = f"; {calls} judge calls per response" if calls else ""
        rows.append(row(spec_id, a - c, ab - cb, f"{method}@{span} {a:.3f} ({alt(m)}) - {baseline}@{span} {c:.3f} "
                                                 f"({alt(b)}){cost}"))  # fmt: skip
    return rows


def correct_claim_rows(cfg: ErrorDetectionConfig, run: CorrectRun | None) -> list[dict[str, Any]]:
    """One claims-engine row per spec in :data:`CORRECT_CLAIMS`: the schema cache's exact-step
    accuracy minus the fit-chosen baseline's, paired over the natural test trajectories with a
    written first wrong step (percentile bootstrap over them)."""
    spec = CORRECT_CLAIMS[0]
    if run is None:
        return [unevaluated_row(FAMILY, spec, "error_detection.correct.enabled is false")]
    n = int(run.stream("natural").localisable.sum())
    method = stream_hits(run, METHOD, "natural")
    if method is None:
        why = run.status.get(METHOD, f"{METHOD} is not among error_detection.correct.localisers")
        return [unevaluated_row(FAMILY, spec, f"{METHOD}: {why}", n)]
    if run.baseline is None:
        return [unevaluated_row(FAMILY, spec, "neither first_low_prob nor max_entropy ran (not configured, or "
                                              "not applicable on the fit split)", n)]  # fmt: skip
    base = stream_hits(run, run.baseline, "natural")
    if n == 0:
        return [unevaluated_row(FAMILY, spec, "no natural test trajectory has a written wrong step", 0)]
    diff = method[0] - base[0]
    reps = diff[M.resample_indices(n, cfg.bootstrap_resamples, cfg.seed)].mean(1)
    fit_acc = {k: run.localisers[k].fit_accuracy_ for k in run.localisers}
    note = (f"{METHOD} {method[0].mean():.3f} - {run.baseline} {base[0].mean():.3f} exact-step accuracy over {n} "
            f"natural test trajectories with a written first wrong step; baseline chosen on the fit split "
            f"({', '.join(f'{k} {fit_acc[k]:.3f}' for k in ('first_low_prob', 'max_entropy') if k in fit_acc)})")
    return [item_row(FAMILY, spec, float(diff.mean()), reps, n, note=note)]
