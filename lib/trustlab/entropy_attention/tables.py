"""The stage's tables (pandas DataFrames for the notebook, ``metrics.json`` and the plot data).

Runs that diverged or failed are reported in :func:`divergence_table` only: their final model
is that of an early, broken run, so their entropies and perplexity are left out of every other
table (NaN in :func:`run_metrics`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from trustlab.core.stats import mean_std
from trustlab.entropy_attention.entropy import collapsed_fraction, head_bins, overloaded_fraction
from trustlab.entropy_attention.results import Results, RunResult
from trustlab.entropy_attention.variants import get_variant

BIN_LABELS = ("0-25%", "25-50%", "50-75%", "75-100%")
BIN_COLUMNS = tuple(f"bin_{b}" for b in BIN_LABELS)


def _nanmean(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def early_layers(n_layer: int) -> list[int]:
    """The 'early' layers of the overload claims: the first half (at least one)."""
    return list(range(max(1, n_layer // 2)))


def run_metrics(r: RunResult, config: dict[str, Any]) -> dict[str, Any]:
    """One run's numbers: perplexity, entropy summaries, head bins, overload and collapse."""
    raw, norm = np.asarray(r.entropy, float), np.asarray(r.entropy_norm, float)
    if not r.ok:  # a stopped run's final entropies describe an early, broken model: left out
        raw, norm = np.full_like(raw, np.nan), np.full_like(norm, np.nan)
    early = early_layers(config["n_layer"])
    bins = head_bins(norm)
    row = {
        "variant": r.variant,
        "seed": r.seed,
        "gamma": r.gamma,
        "status": r.status,
        "val_loss": r.val_loss if r.ok else float("nan"),
        "val_ppl": r.val_ppl if r.ok else float("nan"),
        "val_bpt": r.val_bpt if r.ok else float("nan"),
        "steps": r.steps,
        "mean_entropy": _nanmean(raw),
        "mean_norm_entropy": _nanmean(norm),
        "early_norm_entropy": _nanmean(norm[early]),
        "overloaded": overloaded_fraction(norm, config["overload_threshold"]),
        "early_overloaded": overloaded_fraction(norm[early], config["overload_threshold"]),
        "collapsed": collapsed_fraction(raw, config["collapse_threshold"]),
        "top_bin": bins[-1],
    }
    row.update({col: b for col, b in zip(BIN_COLUMNS, bins)})
    for layer in range(raw.shape[0]):
        row[f"norm_entropy_L{layer}"] = _nanmean(norm[layer])
    return row


def runs_frame(results: Results, *, sweep: bool = False) -> pd.DataFrame:
    """One :func:`run_metrics` row per run (the gamma-sweep runs with ``sweep=True``)."""
    runs = results.sweep if sweep else results.runs
    return pd.DataFrame([run_metrics(r, results.config) for r in runs])


def order_variants(df: pd.DataFrame, variants: list[str]) -> list[str]:
    return [v for v in variants if v in set(df.variant)]


def _pm(values) -> str:
    x = [v for v in values if np.isfinite(v)]
    if not x:
        return "n/a"
    m, s = mean_std(x)
    return f"{m:.3f} ± {s:.3f}"


def perplexity_table(results: Results) -> pd.DataFrame:
    """Per variant: validation perplexity and bits per token (mean ± std over finished seeds),
    numeric columns for plots, and the diverged runs."""
    df = runs_frame(results)
    rows = []
    for v in order_variants(df, results.config["variants"]):
        d = df[df.variant == v]
        ok = d[d.status == "ok"]
        rows.append({
            "variant": v,
            "label": get_variant(v).label,
            "val_ppl": _pm(ok.val_ppl),
            "bits_per_token": _pm(ok.val_bpt),
            "ppl_mean": float(ok.val_ppl.mean()) if len(ok) else float("nan"),
            "ppl_std": float(ok.val_ppl.std(ddof=1)) if len(ok) > 1 else 0.0,
            "bpt_mean": float(ok.val_bpt.mean()) if len(ok) else float("nan"),
            "seeds_ok": int(len(ok)),
            "seeds_diverged": int((d.status != "ok").sum()),
        })  # fmt: skip
    return pd.DataFrame(rows)


def head_bin_table(results: Results) -> pd.DataFrame:
    """Per variant (mean over the seeds that did not diverge): fraction of heads in each quartile
    bin of the normalised entropy, overloaded and collapsed fractions, early-layer normalised
    entropy."""
    df = runs_frame(results)
    cols = [*BIN_COLUMNS, "overloaded", "early_overloaded", "collapsed", "early_norm_entropy", "mean_norm_entropy",
            "mean_entropy"]  # fmt: skip
    out = df.groupby("variant", sort=False)[cols].mean().reindex(order_variants(df, results.config["variants"]))
    return out.reset_index()


def divergence_table(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per variant: runs, diverged, errors, non-finite losses; the runs that did not finish)."""
    rows = []
    for r in results.all_runs:
        nonfinite = sum(1 for c in r.curve if not math.isfinite(c.get("loss", 0.0)))
        rows.append({"variant": r.variant, "seed": r.seed, "gamma": r.gamma, "lam": r.lam, "status": r.status,
                     "diverged_step": r.diverged_step, "nonfinite_losses": nonfinite, "reason": r.reason or ""})
    df = pd.DataFrame(rows)
    summary = df.groupby("variant", sort=False).agg(
        runs=("status", "size"),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        errors=("status", lambda s: int((s == "error").sum())),
        nonfinite_losses=("nonfinite_losses", "sum"),
    ).reset_index()
    return summary, df[df.status != "ok"].reset_index(drop=True)


def gamma_sweep_table(results: Results) -> pd.DataFrame:
    """The regularised variant at every gamma of the sweep (per seed): perplexity, top-bin and
    overloaded fractions, early-layer normalised entropy, mean learned theta."""
    c = results.config
    pool = [r for r in results.runs if r.variant == c["gamma_sweep_variant"] and r.gamma in c["gamma_sweep"]
            and r.seed in c["gamma_sweep_seeds"]] + list(results.sweep)  # fmt: skip
    rows = []
    for r in sorted(pool, key=lambda r: (r.gamma, r.seed)):
        m = run_metrics(r, c)
        theta = np.asarray(r.learned["theta"], float) if r.learned.get("theta") is not None else np.array([np.nan])
        rows.append({"gamma": r.gamma, "seed": r.seed, "status": r.status, "val_ppl": m["val_ppl"],
                     "val_bpt": m["val_bpt"], "top_bin": m["top_bin"], "overloaded": m["overloaded"],
                     "early_norm_entropy": m["early_norm_entropy"], "mean_theta": _nanmean(theta)})  # fmt: skip
    return pd.DataFrame(rows)


def lam_sweep_table(results: Results) -> pd.DataFrame:
    """The lambda sweep, one row per tuning run: lambda, seed, status, and on the *tuning*
    windows the perplexity and the overloaded shares (all layers and early layers); ``chosen``
    marks the lambda the main runs use."""
    c = results.config
    early = early_layers(c["n_layer"])
    rows = []
    for r in sorted(results.tuning, key=lambda r: (r.lam, r.seed)):
        norm = np.asarray(r.tune["entropy_norm"], float)
        if not r.ok:
            norm = np.full_like(norm, np.nan)
        rows.append({"lam": r.lam, "seed": r.seed, "status": r.status,
                     "tune_ppl": r.tune["val_ppl"] if r.ok else float("nan"),
                     "tune_overloaded": overloaded_fraction(norm, c["overload_threshold"]),
                     "tune_early_overloaded": overloaded_fraction(norm[early], c["overload_threshold"]),
                     "tune_early_norm_entropy": _nanmean(norm[early]),
                     "chosen": r.lam == results.chosen_lam})  # fmt: skip
    return pd.DataFrame(rows)


def _curve_rows(r: RunResult) -> list[dict[str, Any]]:
    return [{"variant": r.variant, "seed": r.seed, "step": h["step"], "val_loss": h["probe_loss"],
             "val_ppl": math.exp(h["probe_loss"]) if h["probe_loss"] < 700 else float("inf")}
            for h in r.history if "probe_loss" in h]  # fmt: skip


def validation_curve_frame(results: Results) -> pd.DataFrame:
    """Validation loss and perplexity of the probe batch (tuning windows) over training, per
    finished main run: variant, seed, step, val_loss, val_ppl."""
    return pd.DataFrame([row for r in ok_runs(results.runs) for row in _curve_rows(r)])


def relative_change_last(curve: pd.DataFrame, fraction: float = 0.2) -> float:
    """Relative change of the validation perplexity over the last ``fraction`` of the steps:
    ppl(last step) / ppl(the measured step nearest (1 - fraction) x last step) - 1. Near 0 =
    flattened; negative = still improving."""
    if len(curve) < 2:
        return float("nan")
    curve = curve.sort_values("step")
    last = curve.iloc[-1]
    target = (1 - fraction) * last.step
    before = curve.iloc[int(np.argmin(np.abs(curve.step.to_numpy() - target)))]
    return float(last.val_ppl / before.val_ppl - 1) if before.step < last.step else float("nan")


def flatness_table(results: Results, fraction: float = 0.2) -> pd.DataFrame:
    """Per variant: validation perplexity (probe batch) at the last step and its relative change
    over the last ``fraction`` of the steps, mean and worst (most negative) over seeds."""
    df = validation_curve_frame(results)
    rows = []
    for v in order_variants(df, results.config["variants"]) if len(df) else []:
        d = df[df.variant == v]
        change = [relative_change_last(g, fraction) for _, g in d.groupby("seed")]
        last = [g.sort_values("step").val_ppl.iloc[-1] for _, g in d.groupby("seed")]
        rows.append({"variant": v, "final_curve_ppl": _nanmean(last),
                     f"rel_change_last_{int(100 * fraction)}pct": _nanmean(change),
                     "worst_rel_change": float(np.nanmin(change)) if np.isfinite(change).any() else float("nan")})
    return pd.DataFrame(rows)


def ok_runs(runs: list[RunResult]) -> list[RunResult]:
    """Runs that finished (diverged runs are reported in the divergence table only)."""
    return [r for r in runs if r.ok]


def heatmap_frame(results: Results) -> pd.DataFrame:
    """Long format: variant, seed, layer, head, entropy (nats), entropy_norm (finished runs)."""
    rows = []
    for r in ok_runs(results.runs):
        for layer, (raw, norm) in enumerate(zip(r.entropy, r.entropy_norm)):
            for h, (e, n) in enumerate(zip(raw, norm)):
                rows.append({"variant": r.variant, "seed": r.seed, "layer": layer, "head": h, "entropy": e,
                             "entropy_norm": n})  # fmt: skip
    return pd.DataFrame(rows)


def history_frame(results: Results) -> pd.DataFrame:
    """Per-layer entropy of the probe batch over training (finished runs): variant, seed, step,
    layer, entropy, entropy_norm."""
    rows = []
    for r in ok_runs(results.runs):
        for h in r.history:
            for layer, e in enumerate(h["layer_mean"]):
                rows.append({"variant": r.variant, "seed": r.seed, "step": h["step"], "layer": layer,
                             "entropy": e, "entropy_norm": e / h["max_uniform"]})  # fmt: skip
    return pd.DataFrame(rows)


def learned_frames(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(theta rows: variant, seed, gamma, layer, head, theta; temperature rows: variant, layer,
    head, position, temperature (mean over seeds))."""
    theta_rows, temp = [], {}
    for r in ok_runs(results.runs + results.sweep):  # the lambda sweep's runs are in its own table
        if r.learned.get("theta") is not None:
            for layer, row in enumerate(r.learned["theta"]):
                for h, t in enumerate(row):
                    theta_rows.append({"variant": r.variant, "seed": r.seed, "gamma": r.gamma, "layer": layer,
                                       "head": h, "theta": t})  # fmt: skip
        if r.learned.get("temperature") is not None and r in results.runs:
            temp.setdefault(r.variant, []).append(np.asarray(r.learned["temperature"], float))
    temp_rows = []
    for v, arrs in temp.items():
        t = np.mean(np.stack(arrs), axis=0)
        for layer in range(t.shape[0]):
            for h in range(t.shape[1]):
                for p in range(t.shape[2]):
                    temp_rows.append({"variant": v, "layer": layer, "head": h, "position": p,
                                      "temperature": float(t[layer, h, p])})  # fmt: skip
    return pd.DataFrame(theta_rows), pd.DataFrame(temp_rows)


def timing_table(results: Results) -> pd.DataFrame:
    """Per-run wall times: variant, seed, gamma, lambda, steps, train s, ms/step, monitor s, eval s
    (for ``timing.json`` and the notebook, never a metric)."""
    return pd.DataFrame([
        {"variant": r.variant, "seed": r.seed, "gamma": r.gamma, "lam": r.lam, "steps": r.steps, "train_s": r.train_seconds,
         "ms_per_step": r.ms_per_step, "monitor_s": r.monitor_seconds, "eval_s": r.eval_seconds}
        for r in results.all_runs
    ])  # fmt: skip


def overhead_table(overhead: dict[str, Any], realised: dict[str, Any], log_every: int) -> pd.DataFrame:
    """The cost of measuring entropy, as what / value rows for the notebook."""
    every = log_every
    return pd.DataFrame([
        {"what": "fast training step (ms)", "value": overhead.get("fast_ms")},
        {"what": "step with entropy of every head (ms)", "value": overhead.get("every_step_ms")},
        {"what": "every-step measurement / fast path", "value": overhead.get("every_step_ratio")},
        {"what": "one probe measurement (ms)", "value": overhead.get("probe_ms")},
        {"what": f"logging steps only (every {every}) / fast path, estimated", "value": overhead.get("amortised_ratio")},
        {"what": "logging steps only, realised in this stage (train time / train time without monitoring)",
         "value": realised.get("ratio")},
    ])  # fmt: skip
