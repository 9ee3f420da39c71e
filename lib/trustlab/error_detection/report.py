"""What the stage reports: headline numbers, findings text (every number from this run), the
:class:`~trustlab.reporting.outputs.StageOutputs` for ``write_outputs`` and the W&B runs.

``metrics.json`` keeps the stage's layout: ``headline``, ``claims`` (claims-engine rows),
``tables`` (detectors, by_task (per task and macro-averaged: the headline view), within_task, error_rates, per_layer, injected, models, claims,
and the step-localisation tables localisation and cache_growth when ``error_detection.correct`` ran),
``stats`` (one summary per model), ``injected_counts``, ``notes``, ``config``, plus the
separate ``f1_base_rate_check`` table (:func:`tables.f1_base_rate_check`). Wall times (the cost
table in seconds per 1000 responses, generation and detector times) go to ``timing.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustlab.core.paths import portable
from trustlab.core.claims import count_verdicts
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.correct import CorrectRun
from trustlab.error_detection.run import FAMILY, ModelRun, Results
from trustlab.error_detection.tables import (
    F1_READINGS,
    claims_frame,
    curve_frames,
    detector_table,
    error_rate_table,
    or_reason,
    task_table,
    top_keys,
    within_task_table,
)
from trustlab.reporting.outputs import StageOutputs

# metrics.json "tables" (and plots/<name>.csv), with what an empty one means
TABLE_REASONS = {
    "detectors": "no detector was configured",
    "by_task": "no detector ran on the primary span",
    "within_task": "no detector ran on the primary span",
    "error_rates": "no prompts",
    "per_layer": "error_detection.per_layer is empty",
    "injected": "no injected errors: no correct test response to corrupt, or no detector ran",
    "models": "no detector ran on the primary span",
    "claims": "no claims",
    "localisation": "error_detection.correct.enabled is false",
    "cache_growth": "error_detection.correct.enabled is false, or no growth checkpoints",
}
# plot data only (not in metrics.json)
CURVE_REASONS = {
    "roc": "no detector ran, or the test split has one class",
    "pr": "no detector ran, or the test split has one class",
    "rejection": "the test split is empty",
}
TIMING_TABLES = ("cost",)  # seconds per 1000 responses: timing.json only


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def headline(
    cfg: ErrorDetectionConfig,
    base: ModelRun,
    table: pd.DataFrame,
    claims: Sequence[Mapping[str, Any]],
    injected: pd.DataFrame | None,
    models: pd.DataFrame | None,
    f1_check: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Flat readable numbers: error rates; each detector's test AUROC and PRR per task and
    averaged over tasks (``<detector>/auroc_macro``, the primary number), pooled AUROC/PRR/AUPRC/F1
    as secondary ``..._pooled`` keys, Meta Ranking's judge calls, the F1 baselines, claim
    verdicts, the F1 base-rate check, injected and part-4 AUROCs.
    No wall times (those are in :func:`timing`)."""
    span = cfg.spans[0]
    h: dict[str, Any] = {}
    s = base.stats
    test = s.select(split="test")
    h["error_rate"] = float(s.labels().mean())
    h["test_error_rate"] = float(test.labels().mean())
    for t in sorted(set(s.task.tolist())):
        h[f"error_rate/{t}"] = float(s.labels()[s.task == t].mean())
    h["n_prompts"] = s.n
    h["n_test"] = test.n
    h["k_samples"] = s.K
    # primary: per task and the macro average over tasks; pooled numbers are secondary, named so
    for _, r in task_table(table, span, cfg.claims_min_per_class).iterrows():
        for m in ("auroc_macro", "prr_macro"):
            if _f(r[m]) is not None:
                h[f"{r.detector}/{m}"] = _f(r[m])
    per = table[(table.task != "all") & (table.span == span) & (table.status == "ok")]
    for _, r in per.iterrows():
        for m in ("auroc", "prr"):
            if m in r and _f(r[m]) is not None:
                h[f"{r.detector}/{m}/{r.task}"] = _f(r[m])
    t = table[(table.task == "all") & (table.span == span) & (table.status == "ok")]
    for _, r in t.iterrows():
        for m in ("auroc", "prr", "auprc", "f1"):
            if m in r and _f(r[m]) is not None:
                h[f"{r.detector}/{m}_pooled"] = _f(r[m])
        if int(r.get("judge_calls_per_response", 0) or 0):
            h[f"{r.detector}/judge_calls_per_response"] = int(r.judge_calls_per_response)
    if len(t) and "always_error_f1" in t:
        h["always_error_f1"] = _f(t.always_error_f1.iloc[0])
        h["random_f1"] = _f(t.random_f1.iloc[0])
    macro = task_table(table, span, cfg.claims_min_per_class)
    macro = macro[macro.auroc_macro.notna()] if len(macro) else macro
    if len(macro):
        best = macro.sort_values("auroc_macro", ascending=False).iloc[0]
        h["best_detector_test"] = f"{best.detector}@{span}"
        h["best_detector_test_auroc_macro"] = _f(best.auroc_macro)
    for c in claims:
        h[f"claim/{c['claim'][:48]}"] = c["verdict"]
    h["claims_supported"] = count_verdicts(claims)["supported"]
    h["claims_total"] = len(claims)
    if f1_check is not None and "f1_gain" in f1_check:
        r = f1_check.iloc[0]
        h["f1_base_rate_check/f1_gain"] = _f(r.f1_gain)
        h["f1_base_rate_check/reading"] = r.reading
    if injected is not None and len(injected):
        for _, r in injected[injected.span == span].iterrows():
            h[f"{r.detector}/injected_auroc"] = _f(r.injected_auroc)
    if models is not None and len(models):
        for _, r in models.iterrows():
            if r.model != "base" and _f(r.get("auroc")) is not None:
                h[f"{r.model}/{r.detector}/auroc"] = _f(r.auroc)
    return h


def correct_headline(localisation: pd.DataFrame | None, run: CorrectRun | None = None) -> dict[str, Any]:
    """Step-localisation numbers: each localiser's exact and within-one accuracy on natural and
    injected errors (``correct/<localiser>/<stream>_<metric>``) and the fit-chosen baseline."""
    h: dict[str, Any] = {}
    if localisation is None or not len(localisation) or "natural_exact" not in localisation:
        return h
    for _, r in localisation.iterrows():
        for key in ("natural_exact", "natural_within_one", "injected_exact", "injected_within_one"):
            if _f(r[key]) is not None:
                h[f"correct/{r.localiser}/{key}"] = _f(r[key])
    if run is not None:
        h["correct/baseline"] = run.baseline
        h["correct/n_natural"] = int(localisation.natural_n.max())
        h["correct/n_injected"] = int(localisation.injected_n.max())
    return h


def timing(cfg: ErrorDetectionConfig, results: Results, cost: pd.DataFrame | None) -> dict[str, Any]:
    """Wall times for ``timing.json``: each detector's seconds per 1000 responses on the primary
    span, the base model's generation seconds, the cost table and each model's timings."""
    span = cfg.spans[0]
    out: dict[str, Any] = {}
    if cost is not None and len(cost):
        for _, r in cost[cost.span == span].iterrows():
            out[f"{r.detector}/s_per_1k"] = _f(r.total_s_per_1k)
        out["cost"] = cost.to_dict(orient="records")
    base = results.base.timing
    out["generation_s"] = base.get("greedy_s", 0) + base.get("sampling_s", 0)
    out["models"] = {r.name: dict(r.timing) for r in results.runs}
    if results.usage:  # stage wall and CPU seconds: cores kept busy = cpu_s / wall_s
        out["usage"] = dict(results.usage)
    if results.correct is not None:  # step localisation: generation, injection, each localiser's fit and streams
        out["correct"] = dict(results.correct.timing)
    return out


def stage_outputs(
    results: Results,
    tables: Mapping[str, pd.DataFrame],
    claims: Sequence[Mapping[str, Any]],
    f1_check: pd.DataFrame,
    notes: Mapping[str, Any] | None = None,
) -> StageOutputs:
    """Everything ``write_outputs`` writes. ``tables`` holds the notebook's DataFrames by name:
    those in :data:`TABLE_REASONS` go to ``metrics.json`` and plots, the curves to plots only,
    the cost table to ``timing.json``; an empty one becomes a row saying why."""
    cfg, base = results.cfg, results.base
    unknown = sorted(set(tables) - set(TABLE_REASONS) - set(CURVE_REASONS) - set(TIMING_TABLES))
    if unknown:
        raise ValueError(f"stage_outputs: unknown tables {unknown}; known: "
                         f"{sorted([*TABLE_REASONS, *CURVE_REASONS, *TIMING_TABLES])}")  # fmt: skip
    kept = {name: or_reason(tables[name], why) for name, why in TABLE_REASONS.items() if name in tables}
    curves = {name: or_reason(tables[name], why) for name, why in CURVE_REASONS.items() if name in tables}
    head = headline(cfg, base, tables["detectors"], claims, tables.get("injected"), tables.get("models"), f1_check)
    head.update(correct_headline(tables.get("localisation"), results.correct))
    return StageOutputs(
        stage=FAMILY,
        headline=head,
        tables={"f1_base_rate_check": f1_check},
        claims=list(claims),
        plots={**kept, **curves, "f1_base_rate_check": f1_check},
        extra={
            "tables": {name: df.to_dict(orient="records") for name, df in kept.items()},
            "stats": {
                r.name: {
                    **r.stats.summary(),
                    "reused": r.reused,
                    "settings": r.stats.meta.get("settings"),
                    "model_sha256": r.stats.meta.get("model_sha256"),
                    "path": portable(r.path),
                }
                for r in results.runs
            },
            "injected_counts": base.injected.counts if base.injected else None,
            "notes": {**dict(notes or {}),
                      **({"correct_counts": results.correct.counts} if results.correct is not None else {})},
            "config": cfg.to_dict(),
        },
        timing=timing(cfg, results, tables.get("cost")),
    )


# -- narrative ------------------------------------------------------------------------------------


def _claim_line(c: Mapping[str, Any]) -> str:
    if c["verdict"] == "not evaluated":
        return f"- Claim *{c['claim']}*: **not evaluated** ({c['reason']})."
    return (f"- Claim *{c['claim']}*: effect {c['effect']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], "
            f"p = {c['p_value']:.3g} -> **{c['verdict']}**.")  # fmt: skip


def findings(
    cfg: ErrorDetectionConfig,
    base: ModelRun,
    table: pd.DataFrame,
    claims: Sequence[Mapping[str, Any]],
    err_table: pd.DataFrame,
    injected: pd.DataFrame | None = None,
    models: pd.DataFrame | None = None,
    f1_check: pd.DataFrame | None = None,
    localisation: pd.DataFrame | None = None,
) -> str:
    """Markdown bullets generated from the results (no hand-written numbers)."""
    span = cfg.spans[0]
    lines = []
    all_row = err_table[(err_table.task == "all")].iloc[0]
    lo, hi = cfg.expected_error_rate
    per_task = err_table[(err_table.source == "all") & (err_table.task != "all")]
    outside = [f"{r.task} {r.error_rate:.0%}" for _, r in per_task.iterrows() if not lo <= r.error_rate <= hi]
    lines.append(
        f"- Greedy error rate {all_row.error_rate:.1%} over {int(all_row.n)} prompts; per task: "
        + ", ".join(f"{r.task} {r.error_rate:.0%}" for _, r in per_task.iterrows())
        + (f". Outside the target range [{lo:.0%}, {hi:.0%}]: {', '.join(outside)}." if outside else ".")
    )
    t = table[(table.task == "all") & (table.span == span) & (table.status == "ok")].sort_values(
        "auroc", ascending=False
    )
    macro = task_table(table, span, cfg.claims_min_per_class)
    macro = macro[macro.auroc_macro.notna()].sort_values("auroc_macro", ascending=False) if len(macro) else macro
    if len(macro):
        lines.append(
            f"- Best test AUROC averaged over tasks on the {span} span: {macro.iloc[0].label} "
            f"{macro.iloc[0].auroc_macro:.3f} over {int(macro.iloc[0].tasks)} tasks; worst: {macro.iloc[-1].label} "
            f"{macro.iloc[-1].auroc_macro:.3f}."
        )
    by = macro.set_index("detector") if len(macro) else None
    for name in ("spc_uq", "meta_ranking"):
        if by is not None and name in by.index and "msp" in by.index:
            r, calls = by.loc[name], int(by.loc[name].judge_calls_per_response)
            lines.append(
                f"- {r.label}: AUROC {r.auroc_macro:.3f}, PRR {r.prr_macro:.3f} averaged over tasks, vs MSP "
                f"{by.loc['msp'].auroc_macro:.3f} / {by.loc['msp'].prr_macro:.3f}"
                + (f", at {calls} judge calls per response." if calls else ".")
            )
    if len(t):
        top = t.iloc[0]
        lines.append(
            f"- Pooled over all test responses (secondary): best {top.label} {top.auroc:.3f} "
            f"[{top.auroc_lo:.3f}, {top.auroc_hi:.3f}]; worst: {t.iloc[-1].label} {t.iloc[-1].auroc:.3f}."
        )
        if "always_error_f1" in t:
            beat = t[t.f1_minus_always_error_lo > 0]
            lines.append(
                f"- F1 of the always-error baseline: {t.always_error_f1.iloc[0]:.3f} (base rate "
                f"{t.base_rate.iloc[0]:.3f}); detectors whose F1 beats it with a CI excluding 0: "
                f"{', '.join(beat.label) if len(beat) else 'none'}."
            )
    wt = within_task_table(table, span, cfg.claims_min_per_class)
    if len(wt) and wt.auroc_within_task_mean.notna().any():
        gap = wt.auroc_pooled - wt.auroc_within_task_mean
        worst = wt.loc[gap.idxmax()]
        lines.append(
            f"- Pooled vs within-task AUROC: the largest drop is {worst.label} ({worst.auroc_pooled:.3f} pooled, "
            f"{worst.auroc_within_task_mean:.3f} mean within task): part of a pooled AUROC can come from "
            f"recognising the task, whose error rates differ."
        )
    lines += [_claim_line(c) for c in claims]
    if f1_check is not None and "f1_gain" in f1_check:
        r = f1_check.iloc[0]
        lines.append(
            f"- F1 at the base rate: {r.detector} (AUROC {r.auroc:.3f} [{r.auroc_lo:.3f}, {r.auroc_hi:.3f}]) has F1 "
            f"{r.f1:.3f} vs always-error {r.always_error_f1:.3f}, gain {r.f1_gain:+.3f} [{r.f1_gain_lo:+.3f}, "
            f"{r.f1_gain_hi:+.3f}]: {F1_READINGS[r.reading]}; {r.informative_not_beating_always_error} of "
            f"{r.informative} detectors with AUROC CI above 0.5 do not beat always-error on F1."
        )
    elif f1_check is not None and "note" in f1_check:
        lines.append(f"- F1 at the base rate: not checked ({f1_check.note.iloc[0]}).")
    if injected is not None and len(injected):
        t = injected[(injected.span == span) & (injected["mode"] == "self")]
        if len(t):
            gap = (t.injected_auroc - t.natural_auroc).mean()
            lines.append(
                f"- Injected errors: mean AUROC over non-sampling detectors {t.injected_auroc.mean():.3f} vs "
                f"{t.natural_auroc.mean():.3f} on natural errors (difference {gap:+.3f})."
            )
    lines += _localisation_lines(localisation)
    if models is not None and len(models) and models.model.nunique() > 1:
        ok = models[models.status == "ok"]
        means = ok.groupby("model", sort=False).agg(auroc=("auroc", "mean"), error_rate=("error_rate", "first"))
        lines.append(
            "- Part 4, mean AUROC over detectors per model: "
            + ", ".join(f"{m} {r.auroc:.3f} (error rate {r.error_rate:.0%})" for m, r in means.iterrows())
            + "."
        )
    return "\n".join(lines)


def _localisation_lines(t: pd.DataFrame | None) -> list[str]:
    """The step-localisation bullets: every localiser's exact-step accuracy on natural and injected errors."""
    if t is None or not len(t) or "natural_exact" not in t:
        return []
    ok = t[t.status == "ok"]
    if not len(ok):
        return [f"- Step localisation: no localiser ran ({t.status.iloc[0]})."]

    def acc(r, which):
        v = r[f"{which}_exact"]
        return "n/a" if not np.isfinite(v) else f"{v:.3f} [{r[f'{which}_exact_lo']:.3f}, {r[f'{which}_exact_hi']:.3f}]"

    n_nat, n_inj = int(ok.natural_n.max()), int(ok.injected_n.max())
    return [
        f"- Step localisation, exact-step accuracy on {n_nat} natural / {n_inj} injected first wrong steps: "
        + "; ".join(f"{r.label} {acc(r, 'natural')} / {acc(r, 'injected')}" for _, r in ok.iterrows()) + "."
    ]


# -- Weights & Biases -------------------------------------------------------------------------------


def log_runs(
    results: Results,
    tables: Mapping[str, Any],
    figures: Mapping[str, Any],
    claims: Sequence[Mapping[str, Any]],
    *,
    profile: str | None = None,
    html_path: str | Path | None = None,
    summary: Mapping[str, Any] | None = None,
) -> list[str]:
    """One W&B run per model (group ``error_detection``, job type ``detect``, named
    ``<model>-seed<seed>``): its detector table, error rates, ROC/PR and rejection curves
    (images) and summary numbers. Then the family's summary run (job type ``summary``): the
    claims, detector, cost, per-layer, injected, model-comparison, F1 base-rate and
    step-localisation tables, every figure of the stage, the headline numbers and the HTML summary."""
    import matplotlib.pyplot as plt

    from trustlab.error_detection.figures import plot_rejection, plot_roc_pr
    from trustlab.tracking import run_name, start_run

    cfg = results.cfg
    names = []
    for i, run in enumerate(results.runs):
        config = {**cfg.to_dict(), "profile": profile, "model_name": run.name, "model_path": run.path}
        with start_run(FAMILY, "detect", run_name(run.name, cfg.seed), config, tags=[run.name]) as wb:
            det = detector_table(cfg, run.stats, run.dets, per_task=False) if i else tables["detectors"]
            wb.log_table("detectors", det)
            wb.log_table("error_rates", error_rate_table(run.stats, cfg.expected_error_rate))
            span = next(iter(run.dets.values())).span if run.dets else cfg.spans[0]
            roc, pr, rej = curve_frames(run.stats, run.dets, top_keys(det, span))
            base_rate = float(run.stats.select(split="test").labels().mean())
            for name, fig in (("roc_pr", plot_roc_pr(roc, pr, base_rate)), ("rejection_curves", plot_rejection(rej))):
                if fig is not None:
                    wb.log_image(name, fig)
                    plt.close(fig)
            wb.summary({"error_rate": float(run.stats.labels().mean()),
                        **{f"timing/{k}": v for k, v in run.timing.items()}})  # fmt: skip
            names.append(wb.name)
    config = {**cfg.to_dict(), "profile": profile, "models": {r.name: r.path for r in results.runs}}
    with start_run(FAMILY, "summary", f"{FAMILY}-summary", config, tags=["summary"]) as wb:
        wb.log_table("claims", claims_frame(claims))
        for name in ("detectors", "cost", "per_layer", "injected", "models", "f1_base_rate_check", "localisation",
                     "cache_growth"):
            df = tables.get(name)
            if df is not None and len(df):
                wb.log_table(name, df)
        for name, fig in figures.items():
            wb.log_image(name, fig)
        if html_path is not None and Path(html_path).exists():
            wb.log_html("summary_html", html_path)
        wb.summary(dict(summary or {}))
        names.append(wb.name)
    return names
