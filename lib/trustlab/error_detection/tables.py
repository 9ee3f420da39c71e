"""The stage's tables: pandas DataFrames for the notebook, ``metrics.json`` and the plot data.

Every metric is on the test split with percentile bootstrap CIs over test responses (the same
resamples for every detector: :func:`run.paired_resample_weights`). A table that comes out
empty is returned as one row whose ``note`` says why (:func:`or_reason`), so the report and
``metrics.json`` show the reason instead of nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from trustlab.error_detection import metrics as M
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.correct import CorrectRun
from trustlab.error_detection.estimators import per_layer_auroc
from trustlab.error_detection.run import (
    SAMPLING,
    SHORT,
    DetectorResult,
    InjectedResult,
    ModelRun,
    aggregate_auroc,
    aggregate_tasks,
    best_of,
    paired_resample_weights,
    quiet_fit_warnings,
)
from trustlab.error_detection.statistics import GenerationStats


def or_reason(df: pd.DataFrame, reason: str) -> pd.DataFrame:
    """``df``, or one row ``{"note": reason}`` when it is empty."""
    return df if len(df) else pd.DataFrame([{"note": reason}])


def detector_table(
    cfg: ErrorDetectionConfig,
    stats: GenerationStats,
    dets: Mapping[str, DetectorResult],
    *,
    per_task: bool | None = None,
):
    """One row per (detector, span, task) with every metric of :func:`metrics.evaluate` (task
    ``all`` = every test row). The F1 threshold is chosen on the fit rows of the same task."""

    fit, test = stats.fit_test()
    groups = [("all", None)]
    if cfg.per_task if per_task is None else per_task:
        groups += [(t, t) for t in sorted(set(test.task.tolist()))]
    rows = []
    for det in dets.values():
        for label, task in groups:
            tm = np.ones(test.n, bool) if task is None else test.task == task
            fm = np.ones(fit.n, bool) if task is None else fit.task == task
            row: dict[str, Any] = {"detector": det.name, "span": det.span, "task": label, "group": det.group,
                                   "label": SHORT.get(det.name, det.name), "status": det.status,
                                   "judge_calls_per_response": judge_calls(det)}  # fmt: skip
            if det.ok and tm.any():
                ef = fit.labels()[fm]
                with_f1 = fm.any() and ef.any()
                row.update(M.evaluate(
                    det.u_test[tm], test.labels()[tm], det.u_fit[fm] if with_f1 else None, ef if with_f1 else None,
                    n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed,
                ))  # fmt: skip
                row["fit_auroc"] = M.auroc(ef, det.u_fit[fm]) if fm.any() else float("nan")
            else:
                row["n"] = int(tm.sum())
            rows.append(row)
    return pd.DataFrame(rows)


def judge_calls(det: DetectorResult) -> int:
    """Judge calls per scored response (Meta Ranking's comparisons; 0 for the other detectors)."""
    return int(det.estimator.calls_per_response) if det.estimator is not None else 0


def task_table(table, span: str, min_per_class: int = 5):
    """The headline view, one row per detector on ``span``: AUROC and PRR averaged over tasks
    (macro; the tasks with at least ``min_per_class`` wrong and right test responses), each
    task's AUROC, and, secondary and labelled so, the AUROC pooled over all test responses."""

    t = table[(table.span == span) & (table.status == "ok")]
    rows = []
    for det, g in t.groupby("detector", sort=False):
        per = g[(g.task != "all") & (g.n_errors >= min_per_class) & (g.n - g.n_errors >= min_per_class)]
        pooled = g[g.task == "all"]
        row = {"detector": det, "label": SHORT.get(det, det), "auroc_macro": _nanmean(per.auroc),
               "prr_macro": _nanmean(per.prr), "tasks": int(per.auroc.notna().sum())}  # fmt: skip
        row.update({f"auroc/{r.task}": float(r.auroc) for _, r in per.iterrows()})
        row["auroc_pooled (secondary)"] = float(pooled.auroc.iloc[0]) if len(pooled) else float("nan")
        row["judge_calls_per_response"] = int(g.judge_calls_per_response.iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def display_table(table, task: str = "all", span: str | None = None, digits: int = 3):
    """A compact view: AUROC [CI], AUPRC (base rate), PRR [CI], F1 vs always-error / random."""

    t = table[table.task == task]
    if span is not None:
        t = t[t.span == span]

    def ci(r, k):
        v = r.get(k)
        if v is None or not np.isfinite(v):
            return ""
        return f"{v:.{digits}f} [{r.get(k + '_lo', np.nan):.{digits}f}, {r.get(k + '_hi', np.nan):.{digits}f}]"

    rows = []
    for _, r in t.iterrows():
        rows.append({
            "detector": r.label, "span": r.span, "AUROC [95% CI]": ci(r, "auroc"),
            "AUPRC [95% CI]": ci(r, "auprc"), "base rate": r.get("base_rate"),
            "PRR [95% CI]": ci(r, "prr"), "F1 [95% CI]": ci(r, "f1"),
            "F1 always-error": r.get("always_error_f1"), "F1 random": r.get("random_f1"),
            "flag rate": r.get("flag_rate"), "judge calls": r.get("judge_calls_per_response", 0),
            "status": "" if r.status == "ok" else r.status[:60],
        })  # fmt: skip
    return pd.DataFrame(rows)


def _nanmean(x) -> float:
    v = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def within_task_table(table, span: str, min_per_class: int = 5):
    """Pooled test AUROC/PRR next to their means over tasks (each task's own value, over the
    tasks with at least ``min_per_class`` wrong and right test responses, as in the claims). A
    detector that only recognises *which task* a prompt belongs to scores well pooled when
    tasks differ in error rate, and at chance within each task."""

    t = table[(table.span == span) & (table.status == "ok")]
    keep = (t.task == "all") | ((t.n_errors >= min_per_class) & (t.n - t.n_errors >= min_per_class))
    t = t[keep]
    rows = []
    for det, g in t.groupby("detector", sort=False):
        pooled = g[g.task == "all"]
        per = g[g.task != "all"]
        rows.append({"detector": det, "label": SHORT.get(det, det),
                     "auroc_pooled": float(pooled.auroc.iloc[0]) if len(pooled) else float("nan"),
                     "auroc_within_task_mean": _nanmean(per.auroc),
                     "prr_pooled": float(pooled.prr.iloc[0]) if len(pooled) else float("nan"),
                     "prr_within_task_mean": _nanmean(per.prr),
                     "tasks": int(per.auroc.notna().sum())})  # fmt: skip
    return pd.DataFrame(rows)


def error_rate_table(stats: GenerationStats, expected: Sequence[float] | None = None):
    """Error rate per task and source split (and the QA outcome classes), fit and test together."""

    info = stats.meta.get("row_info", {})
    df = pd.DataFrame({
        "task": stats.task, "source": [info.get(str(i), {}).get("source", "") for i in stats.ids],
        "is_error": stats.labels(), "qa_class": [info.get(str(i), {}).get("qa_class", "") for i in stats.ids],
        "finish": [info.get(str(i), {}).get("finish", "") for i in stats.ids],
    })  # fmt: skip
    rows = []
    for (task, source), g in [
        (("all", "all"), df),
        *[((t, "all"), g) for t, g in df.groupby("task", sort=True)],
        *[(k, g) for k, g in df.groupby(["task", "source"], sort=True)],
    ]:
        row = {
            "task": task,
            "source": source,
            "n": len(g),
            "errors": int(g.is_error.sum()),
            "error_rate": float(g.is_error.mean()),
            "hit_max_tokens": float((g.finish == "length").mean()),
        }
        for c in ("hallucination", "abstain", "other"):
            if (g.qa_class != "").any():
                row[f"qa_{c}"] = float((g.qa_class == c).mean())
        if expected is not None:
            row["in_expected_range"] = bool(expected[0] <= row["error_rate"] <= expected[1])
        rows.append(row)
    return pd.DataFrame(rows).drop_duplicates(subset=["task", "source"])


def cost_table(stats: GenerationStats, dets: Mapping[str, DetectorResult], timing: Mapping[str, float]):
    """Seconds per 1000 responses per detector, generation included.

    ``model_s_per_1k``: the model work the detector needs, per 1000 prompts: the greedy pass
    without hidden states (``greedy_plain_s``) for logit detectors, plus the K samples
    (``sampling_s``) for sampling detectors; the greedy pass recording hidden states
    (``greedy_s``) for hidden-state detectors. ``fit_s``: one-off fit on the fit split
    (seconds). ``score_s_per_1k``: scoring the test split, per 1000 responses.
    ``total_s_per_1k`` = model + score + fit amortised over the test responses of this stage.
    Wall-clock on a shared CPU: read the ratios, not the digits.
    """

    n = max(int(timing.get("n", stats.n)), 1)
    n_test = max(int((stats.split == "test").sum()), 1)
    per = lambda s: 1000.0 * s / n  # noqa: E731
    greedy_plain = timing.get("greedy_plain_s", timing["greedy_s"])
    rows = []
    for det in dets.values():
        if det.group == "sampling":
            model_s = per(greedy_plain + timing["sampling_s"])
            needs = f"greedy + K={stats.K} samples"
        elif det.group == "hidden":
            model_s = per(timing["greedy_s"])
            needs = "greedy + hidden states"
        else:
            model_s = per(greedy_plain)
            needs = "greedy"
        score = 1000.0 * det.score_s / n_test
        rows.append({"detector": det.name, "span": det.span, "label": SHORT.get(det.name, det.name), "needs": needs,
                     "model_s_per_1k": model_s, "fit_s": det.fit_s, "score_s_per_1k": score,
                     "total_s_per_1k": model_s + score + 1000.0 * det.fit_s / n_test,
                     "status": det.status})  # fmt: skip
    return pd.DataFrame(rows)


def per_layer_table(cfg: ErrorDetectionConfig, stats: GenerationStats):
    """Test AUROC of each ``cfg.per_layer`` method fitted on one layer at a time, per span."""

    fit, test = stats.fit_test()
    rows = []
    for method in cfg.per_layer:
        kw = {k: v for k, v in cfg.estimator_kwargs(method).items() if k not in ("layer", "layers")}
        for span in cfg.spans:
            try:
                with quiet_fit_warnings():
                    rows += per_layer_auroc(fit, test, method=method, span=span, **kw)
            except ValueError as exc:
                rows.append({"layer": None, "method": method, "span": span, "auroc": float("nan"), "note": str(exc)})
    return pd.DataFrame(rows)


def curve_frames(stats: GenerationStats, dets: Mapping[str, DetectorResult], keys: Sequence[str]):
    """ROC, precision-recall and rejection-curve points of the given detectors on the test split."""
    from sklearn.metrics import precision_recall_curve, roc_curve  # scikit-learn only when curves are drawn

    test = stats.select(split="test")
    e = test.labels()
    roc, pr, rej = [], [], []
    for key in keys:
        det = dets[key]
        if not det.ok or e.all() or not e.any():
            continue
        fpr, tpr, _ = roc_curve(e, det.u_test)
        roc += [{"detector": key, "fpr": a, "tpr": b} for a, b in zip(fpr, tpr)]
        p, r, _ = precision_recall_curve(e, det.u_test)
        pr += [{"detector": key, "recall": b, "precision": a} for a, b in zip(p, r)]
        c = M.rejection_curve(det.u_test, e)
        rej += [
            {"detector": key, "rejection_rate": a, "accuracy_kept": b}
            for a, b in zip(c["rejection_rate"], c["quality"])
        ]
    if len(e):
        c = M.rejection_curve(np.zeros(len(e)), e)
        rej += [
            {"detector": "oracle", "rejection_rate": a, "accuracy_kept": b}
            for a, b in zip(c["rejection_rate"], c["oracle"])
        ]
        rej += [
            {"detector": "random", "rejection_rate": a, "accuracy_kept": b}
            for a, b in zip(c["rejection_rate"], c["random"])
        ]
    return pd.DataFrame(roc), pd.DataFrame(pr), pd.DataFrame(rej)


def top_keys(table, span: str, k: int = 3, always: Sequence[str] = ("perplexity",)) -> list[str]:
    """The k detectors on ``span`` with the highest test AUROC (for display only) plus the
    reference detectors in ``always``."""
    t = table[(table.task == "all") & (table.status == "ok") & (table.span == span)].sort_values(
        "auroc", ascending=False
    )
    keys = [f"{r.detector}@{r.span}" for _, r in t.head(k).iterrows()]
    present = {f"{r.detector}@{r.span}" for _, r in t.iterrows()}
    keys += [f"{n}@{span}" for n in always if f"{n}@{span}" in present and f"{n}@{span}" not in keys]
    return keys


# -- injected errors ---------------------------------------------------------------------------------


def injected_table(
    cfg: ErrorDetectionConfig, stats: GenerationStats, dets: Mapping[str, DetectorResult], inj: InjectedResult
):
    """Per detector and span: natural test AUROC vs injected AUROC (originals vs their
    corruptions), both with CIs, the paired win rate P(u_injected > u_original) (+ ties / 2) and
    the per-task injected AUROC. ``mode`` = ``verifier`` for sampling detectors (see
    :mod:`trustlab.error_detection.inject`)."""

    if inj.stats is None:
        return pd.DataFrame()
    e_nat = stats.select(split="test").labels()
    s = inj.stats
    e = s.labels()
    pair = np.array([s.meta["row_info"][str(i)]["pair"] for i in s.ids])
    rows = []
    for key, det in dets.items():
        if not det.ok or key not in inj.u:
            continue
        u = inj.u[key]
        nat = M.evaluate(det.u_test, e_nat, n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed)
        ij = M.evaluate(u, e, n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed)
        by = {p: i for i, p in enumerate(s.ids) if not e[i]}
        wins = [float(u[i] > u[by[pair[i]]]) + 0.5 * float(u[i] == u[by[pair[i]]]) for i in np.flatnonzero(e)]
        row = {"detector": det.name, "span": det.span, "label": SHORT.get(det.name, det.name),
               "mode": "verifier" if det.name in SAMPLING else "self",
               "natural_auroc": nat["auroc"], "natural_auroc_lo": nat["auroc_lo"], "natural_auroc_hi": nat["auroc_hi"],
               "injected_auroc": ij["auroc"], "injected_auroc_lo": ij["auroc_lo"], "injected_auroc_hi": ij["auroc_hi"],
               "pair_win_rate": float(np.mean(wins)) if wins else float("nan"), "n_pairs": len(wins)}  # fmt: skip
        for task in sorted(set(s.task.tolist())):
            m = s.task == task
            row[f"injected_auroc_{task}"] = M.auroc(e[m], u[m])
        rows.append(row)
    return pd.DataFrame(rows)


def injection_examples(inj: InjectedResult, n: int = 2):
    """A few (task, kind, original, corrupted) rows per task, for the report."""

    if inj.stats is None:
        return pd.DataFrame()
    s = inj.stats
    rows = []
    for task in sorted(set(s.task.tolist())):
        idx = [i for i in np.flatnonzero(s.task == task) if s.is_error[i]][:n]
        for i in idx:
            pid = s.meta["row_info"][str(s.ids[i])]["pair"]
            j = int(np.flatnonzero(s.ids == pid)[0])
            rows.append({"task": task, "kind": s.meta["row_info"][str(s.ids[i])]["kind"], "prompt": s.prompt[i],
                         "original": s.response[j], "injected": s.response[i]})  # fmt: skip
    return pd.DataFrame(rows)


# -- part 4: models -----------------------------------------------------------------------------------


def model_table(cfg: ErrorDetectionConfig, runs: Sequence[ModelRun], span: str | None = None):
    """Part 4: per model and detector, test AUROC and PRR with CIs and the error rate; for every
    model after the first listed fine-tuned one, the paired difference to it (same prompts,
    resampled together)."""

    span = span or cfg.spans[0]
    rows = []
    ref = runs[1] if len(runs) > 2 else None  # the first listed model (e.g. sft) is the reference for the others
    for run in runs:
        test = run.stats.select(split="test")
        e = test.labels()
        W = paired_resample_weights(cfg, test.n)
        for det in run.dets.values():
            if det.span != span:
                continue
            row = {"model": run.name, "detector": det.name, "label": SHORT.get(det.name, det.name),
                   "error_rate": float(e.mean()), "n": test.n, "status": det.status}  # fmt: skip
            if det.ok:
                ev = M.evaluate(det.u_test, e, n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed)
                row.update({k: ev[k] for k in ("auroc", "auroc_lo", "auroc_hi", "prr", "prr_lo", "prr_hi", "auprc")})
                tasks = aggregate_tasks(test, "task_mean", cfg.claims_min_per_class)
                if tasks is not None:
                    row["auroc_task_mean"] = aggregate_auroc(det.u_test, e, test.task, tasks)[0]
                if ref is not None and run is not ref and run.name != "base":
                    rd = ref.dets.get(det.key)
                    rtest = ref.stats.select(split="test")
                    if rd is not None and rd.ok and np.array_equal(rtest.ids, test.ids):
                        re_ = rtest.labels()
                        for metric, fn, batch in (("auroc", M.auroc, M.auroc_w),):
                            d = fn(e, det.u_test) - fn(re_, rd.u_test)
                            lo, hi = M.percentile_ci(batch(det.u_test, e, W) - batch(rd.u_test, re_, W), cfg.ci_level)
                            row[f"{metric}_minus_{ref.name}"] = d
                            row[f"{metric}_minus_{ref.name}_lo"] = lo
                            row[f"{metric}_minus_{ref.name}_hi"] = hi
            rows.append(row)
    return pd.DataFrame(rows)


# -- step-level localisation (CORRECT, adaptation) ----------------------------------------------------


def localisation_table(cfg: ErrorDetectionConfig, run: CorrectRun | None):
    """Per localiser: exact-step and within-one-step accuracy on the natural and on the injected
    test trajectories that have a written wrong step, with percentile bootstrap CIs over those
    trajectories (the same resamples for every localiser, so intervals are paired), the fit-split
    exact accuracy that chose the baseline, the fitted threshold and the cost without wall
    time: model passes (one greedy pass, or one teacher-forced pass for injected errors, shared by
    every localiser) and the cached vectors each step is compared with. Wall times: timing.json."""
    from trustlab.error_detection.correct import LOCALISERS, stream_hits

    if run is None:
        return pd.DataFrame()
    rows = []
    for name, status in run.status.items():
        loc = run.localisers.get(name)
        cls = LOCALISERS.get(name)
        row = {"localiser": name, "label": cls.label, "status": status, "online": cls.online,
               "chosen_baseline": name == run.baseline,
               "fit_exact": loc.fit_accuracy_ if loc is not None else float("nan"),
               "threshold": float(loc.tau_) if loc is not None and np.isfinite(loc.tau_) else float("nan")}  # fmt: skip
        for which in ("natural", "injected"):
            h = stream_hits(run, name, which)
            row[f"{which}_n"] = len(h[0]) if h is not None else 0
            for metric, values in zip(("exact", "within_one"), h if h is not None else (None, None)):
                key = f"{which}_{metric}"
                if values is None or not len(values):
                    row[key] = row[f"{key}_lo"] = row[f"{key}_hi"] = float("nan")
                    continue
                boot = values[M.resample_indices(len(values), cfg.bootstrap_resamples, cfg.seed)].mean(1)
                row[key] = float(values.mean())
                row[f"{key}_lo"], row[f"{key}_hi"] = M.percentile_ci(boot, cfg.ci_level)
        row["model_passes"] = 1
        row["cache_schemata_fit"] = loc.cache_size if loc is not None else 0
        row["cached_vectors_per_step_fit"] = loc.cache_entries if loc is not None else 0
        rows.append(row)
    return pd.DataFrame(rows)


def localisation_display(table, digits: int = 3):
    """The localisation table with ``value [lo, hi]`` strings, for reading."""
    if not len(table) or "natural_exact" not in table:
        return table

    def ci(r, k):
        if not np.isfinite(r[k]):
            return "n/a"
        return f"{r[k]:.{digits}f} [{r[k + '_lo']:.{digits}f}, {r[k + '_hi']:.{digits}f}]"

    return pd.DataFrame([{
        "localiser": r.label + (" (baseline for the claim)" if r.chosen_baseline else ""),
        "fit exact": round(r.fit_exact, digits) if np.isfinite(r.fit_exact) else "n/a",
        f"natural exact (n = {r.natural_n})": ci(r, "natural_exact"),
        "natural within 1": ci(r, "natural_within_one"),
        f"injected exact (n = {r.injected_n})": ci(r, "injected_exact"),
        "injected within 1": ci(r, "injected_within_one"),
        "cached vectors per step": r.cached_vectors_per_step_fit,
        "status": r.status,
    } for _, r in table.iterrows()])  # fmt: skip


def localisation_seconds(run: CorrectRun | None):
    """Wall seconds per 1000 natural test trajectories of each localiser (its fit amortised over
    them, the online cache's updates included), beside the greedy pass they all share. For the
    notebook; the raw timings go to timing.json."""
    if run is None:
        return pd.DataFrame()
    n = max(int(run.timing.get("n_natural_test", 0)), 1)
    per_1k = 1000.0 / n
    rows = [{"localiser": name, "fit_and_localise_s_per_1k": (run.timing.get(f"{name}/fit_s", 0.0)
                                                              + run.timing.get(f"{name}/natural_s", 0.0)) * per_1k}
            for name in run.status]  # fmt: skip
    rows.append({"localiser": "(greedy pass, shared)",
                 "fit_and_localise_s_per_1k": run.timing.get("generation_s", 0.0) * 1000.0 / max(run.natural.n, 1)})
    return pd.DataFrame(rows)


def cache_growth_table(run: CorrectRun | None):
    """Exact and within-one accuracy on the rest of the natural test stream after the first c
    test trajectories were diagnosed into the cache (frozen from there), per checkpoint c, for
    every localiser (those without a cache do not change with c except through the items left)."""
    return pd.DataFrame(run.growth) if run is not None else pd.DataFrame()


# -- outputs --------------------------------------------------------------------------------------


def claims_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Claims-engine rows as a DataFrame (columns ``trustlab.core.claims.COLUMNS``)."""
    from trustlab.core.claims import COLUMNS

    return pd.DataFrame(list(rows), columns=list(COLUMNS))


# -- F1 at the base rate (ReaLMistake) -------------------------------------------------------------

F1_READINGS = {
    "misleading": "F1 does not credit an informative detector over always-error",
    "credits": "F1 credits the detector over always-error",
    "undecided": "undecided: the detector's AUROC interval reaches 0.5 and its F1 gain's reaches 0",
}


def f1_base_rate_check(
    cfg: ErrorDetectionConfig, stats: GenerationStats, dets: Mapping[str, DetectorResult], span: str | None = None
) -> pd.DataFrame:
    """Does F1 at the base rate mislead? (ReaLMistake: answering "error" always beats LLM judges
    on F1 when most responses are wrong.) Not a method-beats-baseline claim, so a table of its own.

    The detector with the best fit-split AUROC on ``span`` flags u above a threshold chosen on the
    fit split (per task for ``claims_aggregate: task_mean``); ``f1_gain`` = its test F1 minus the
    always-error F1 2b/(1+b), with a bootstrap CI over test responses (the claims' resamples).
    ``reading``: *misleading* when the detector's AUROC CI lies above 0.5 while the F1 gain's CI
    reaches 0 (F1 does not credit an informative detector), *credits* when the F1 gain's CI lies
    above 0, *undecided* otherwise. ``informative`` counts the detectors whose AUROC CI lies above
    0.5, ``informative_not_beating_always_error`` those of them whose F1 gain is <= 0.
    """
    span = span or cfg.spans[0]
    agg, kmin, level = cfg.claims_aggregate, cfg.claims_min_per_class, cfg.ci_level
    fit, test = stats.fit_test()
    e, ef = test.labels(), fit.labels()
    W = paired_resample_weights(cfg, test.n)
    tasks = aggregate_tasks(test, agg, kmin)
    groups = [np.ones(test.n, bool)] if tasks is None else [test.task == t for t in tasks]
    fgroups = [np.ones(fit.n, bool)] if tasks is None else [fit.task == t for t in tasks]
    keys = [k for k, d in dets.items() if d.ok and d.span == span]
    best = best_of(stats, dets, [dets[k].name for k in keys], span, agg, kmin)
    if not e.any() or e.all():
        return or_reason(pd.DataFrame(), f"the test split has only one class ({int(e.sum())} wrong of {test.n}): "
                                         "AUROC is undefined")  # fmt: skip
    if best is None:
        return or_reason(pd.DataFrame(), f"no detector gave a fit-split AUROC on the {span} span")
    if any(not ef[fm].any() for fm in fgroups):
        return or_reason(pd.DataFrame(), "a task has no wrong fit response: no F1 threshold can be chosen")

    def f1_gain(d: DetectorResult) -> tuple[float, float, np.ndarray, list[float]]:
        gains, always, boots, thresholds = [], [], [], []
        for m, fm in zip(groups, fgroups):
            thr = M.choose_threshold(d.u_fit[fm], ef[fm])
            b = float(e[m].mean())
            always.append(2 * b / (1 + b))
            gains.append(M.precision_recall_f1(d.u_test[m] > thr, e[m])[2] - always[-1])
            wm = W[:, m]
            bb = (wm @ e[m].astype(float)) / wm.sum(axis=1)
            boots.append(M.prf_w(d.u_test[m] > thr, e[m], wm)[2] - np.where(bb > 0, 2 * bb / (1 + bb), 0.0))
            thresholds.append(thr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resample columns
            return float(np.mean(gains)), float(np.mean(always)), np.nanmean(np.stack(boots), axis=0), thresholds

    def auroc_ci(d: DetectorResult) -> tuple[float, float, float]:
        point, boot = aggregate_auroc(d.u_test, e, test.task, tasks, W)
        return (point, *M.percentile_ci(boot, level))

    d = dets[best]
    gain, always, gain_boot, thresholds = f1_gain(d)
    gain_lo, gain_hi = M.percentile_ci(gain_boot, level)
    auc, auc_lo, auc_hi = auroc_ci(d)
    informative = [k for k in keys if auroc_ci(dets[k])[1] > 0.5]
    not_beating = [k for k in informative if f1_gain(dets[k])[0] <= 0]
    reading = "credits" if gain_lo > 0 else "misleading" if auc_lo > 0.5 else "undecided"
    scope = "pooled over all test responses" if tasks is None else f"mean over tasks {', '.join(tasks)}"
    return pd.DataFrame([{
        "detector": best, "aggregate": scope, "base_rate": float(e.mean()), "n": test.n,
        "auroc": auc, "auroc_lo": auc_lo, "auroc_hi": auc_hi,
        "f1": gain + always, "always_error_f1": always, "f1_gain": gain, "f1_gain_lo": gain_lo, "f1_gain_hi": gain_hi,
        "thresholds": ", ".join(f"{t:.3g}" for t in thresholds), "informative": len(informative),
        "informative_not_beating_always_error": len(not_beating), "reading": reading,
        "note": f"{F1_READINGS[reading]}; the detector is the best by fit-split AUROC and its thresholds are chosen "
                f"on the fit split; {level:.0%} bootstrap intervals over {test.n} test responses",
    }])  # fmt: skip
