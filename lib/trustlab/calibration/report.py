"""Tables, figures, output files and W&B logging for the ``calibration`` notebook.

The experiment functions (:mod:`.experiment`, :mod:`.lm`) return per-seed DataFrames; this
module turns them into what the report shows: ``mean ± std`` tables over seeds, ECE against
shift severity, reliability diagrams, the headline numbers of ``metrics.json``, plot data for
``dvc plots``, one W&B run per trained model and the family's summary run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustlab.calibration.experiment import FAMILY, MainTables, bins_for, format_summary, summarize
from trustlab.core.stats import Claim

__all__ = [
    "LABELS",
    "MAIN_METRICS",
    "RunLogger",
    "anyloss_table",
    "claims_frame",
    "findings",
    "headline",
    "hparams_table",
    "lm_pool_summary",
    "lm_table",
    "log_summary",
    "main_table",
    "per_shift_summary",
    "per_shift_table",
    "plot_ece_vs_severity",
    "plot_lm_reliability",
    "plot_reliability_grid",
    "robustness_summary",
    "robustness_table",
    "severity_frame",
    "soft_label_table",
    "write_outputs",
]

MAIN_METRICS = ("acc", "nll", "ece", "ada_ece", "cw_ece", "brier", "aurc")
LABELS = {"acc": "Acc", "nll": "NLL", "ece": "ECE", "ada_ece": "AdaECE", "cw_ece": "cwECE", "brier": "Brier",
          "aurc": "AURC", "mce": "MCE", "temperature": "T"}
VARIANT_LABELS = {"raw": "raw", "ts": "+TS", "ca": "+CA"}


def _fmt(mu: float, sd: float, digits: int = 3) -> str:
    if not np.isfinite(mu):
        return "n/a"
    return f"{mu:.{digits}f} ± {sd:.{digits}f}"


def hparams_table(cfg) -> pd.DataFrame:
    """Every main-table loss with its full hyperparameters (registry defaults + overrides);
    blank where a loss has no such parameter."""
    df = pd.DataFrame([{"loss": loss, **cfg.hparams_for(loss)} for loss in cfg.losses]).set_index("loss")
    return df.astype(object).where(df.notna(), "")


# -- main table ----------------------------------------------------------------------------------


def main_table(main: pd.DataFrame, split: str = "id", digits: int = 3) -> pd.DataFrame:
    """One row per loss x variant (raw, +TS, +CA): Acc, NLL, ECE, AdaECE, cwECE, Brier, AURC on
    ``split`` ("id" = clean test set, "shift" = averaged over every shift and severity), as
    ``mean ± std`` over seeds; plus the temperature (the CA column: its mean per-sample T)."""
    cols = [f"{split}_{m}" for m in MAIN_METRICS if f"{split}_{m}" in main.columns]
    if not cols:
        return pd.DataFrame()
    extra = ["temperature"] if "temperature" in main.columns else []
    t = format_summary(main, ["loss", "variant"], cols + extra, digits=digits)
    t["variant"] = t["variant"].map(lambda v: VARIANT_LABELS.get(v, v))
    return t.rename(columns={c: LABELS[c.split("_", 1)[1]] for c in cols} | {"temperature": "T"})


def per_shift_summary(per_shift: pd.DataFrame) -> pd.DataFrame:
    """Per loss x variant x shift: metrics averaged over severities within each seed, then
    mean and std over seeds (``<metric>_mean`` / ``<metric>_std``)."""
    if per_shift is None or per_shift.empty:
        return pd.DataFrame()
    metrics = [m for m in MAIN_METRICS if m in per_shift.columns]
    per_seed = per_shift.groupby(["loss", "variant", "shift", "seed"], sort=False)[metrics].mean().reset_index()
    return summarize(per_seed, ["loss", "variant", "shift"], metrics)


def per_shift_table(per_shift: pd.DataFrame, metric: str = "ece", digits: int = 3) -> pd.DataFrame:
    """``metric`` (mean ± std over seeds, averaged over severities) per loss x variant (rows)
    and shift (columns)."""
    s = per_shift_summary(per_shift)
    if s.empty:
        return s
    s["value"] = [_fmt(a, b, digits) for a, b in zip(s[f"{metric}_mean"], s[f"{metric}_std"])]
    t = s.pivot_table(index=["loss", "variant"], columns="shift", values="value", aggfunc="first", sort=False)
    t = t.reindex(columns=list(dict.fromkeys(s["shift"])))
    t.columns.name = None
    t = t.reset_index()
    t["variant"] = t["variant"].map(lambda v: VARIANT_LABELS.get(v, v))
    return t


def severity_frame(tables: MainTables, metrics: Sequence[str] = ("ece", "acc")) -> pd.DataFrame:
    """ECE (and accuracy) against shift severity per loss x variant: averaged over the shift
    kinds within each seed, then mean / std over seeds. Severity 0 is the clean test set."""
    main, ps = tables.main, tables.per_shift
    rows = []
    if not main.empty:
        clean = main.rename(columns={f"id_{m}": m for m in metrics}).assign(severity=0)
        rows.append(clean[["loss", "variant", "seed", "severity", *metrics]])
    if ps is not None and not ps.empty:
        rows.append(ps.groupby(["loss", "variant", "severity", "seed"], sort=False)[list(metrics)].mean().reset_index())
    if not rows:
        return pd.DataFrame()
    df = pd.concat(rows, ignore_index=True)
    out = summarize(df, ["loss", "variant", "severity"], list(metrics))
    out = out.rename(columns={f"{m}_mean": m for m in metrics})
    return out.sort_values(["loss", "variant", "severity"], kind="stable").reset_index(drop=True)


def plot_ece_vs_severity(sev: pd.DataFrame, variants: Sequence[str] = ("raw", "ts", "ca"), metric: str = "ece"):
    """One panel per variant, one line per loss: ``metric`` (mean over seeds and shift kinds)
    against severity (0 = clean), with ±1 std bands."""
    import matplotlib.pyplot as plt

    variants = [v for v in variants if v in set(sev["variant"])]
    losses = list(dict.fromkeys(sev["loss"]))
    cmap = plt.get_cmap("tab20" if len(losses) > 10 else "tab10")
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.6), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, v in zip(axes[0], variants):
        for i, loss in enumerate(losses):
            d = sev[(sev["loss"] == loss) & (sev["variant"] == v)].sort_values("severity")
            if d.empty:
                continue
            ax.plot(d["severity"], d[metric], marker="o", ms=3, color=cmap(i), label=loss)
            sd = d.get(f"{metric}_std")
            if sd is not None:
                ax.fill_between(d["severity"], d[metric] - sd, d[metric] + sd, color=cmap(i), alpha=0.08)
        ax.set_title(f"{VARIANT_LABELS.get(v, v)}")
        ax.set_xlabel("shift severity (0 = clean)")
        ax.set_xticks(sorted(set(sev["severity"])))
    axes[0][0].set_ylabel(f"{LABELS.get(metric, metric)} (mean over shift kinds)")
    axes[0][-1].legend(fontsize="x-small", ncol=2, loc="upper left")
    return fig


def plot_reliability_grid(bins: pd.DataFrame, loss: str = "ce", variants: Sequence[str] = ("raw", "ts", "ca"),
                          splits: Sequence[str] = ("id", "shift")):
    """Reliability diagrams of one loss (first seed): rows = test split (clean / shifted,
    pooled over every shift and severity), columns = raw, +TS, +CA."""
    import matplotlib.pyplot as plt

    from trustlab.calibration.metrics import reliability_diagram_from_bins

    present = set(zip(bins["variant"], bins["split"])) if not bins.empty else set()
    variants = [v for v in variants if any((v, s) in present for s in splits)]
    splits = [s for s in splits if any((v, s) in present for v in variants)]
    fig, axes = plt.subplots(len(splits), len(variants), figsize=(3.6 * len(variants), 3.5 * len(splits)),
                             squeeze=False, layout="constrained")
    names = {"id": "clean test", "shift": "shifted (pooled)"}
    for r, split in enumerate(splits):
        for c, v in enumerate(variants):
            ax = axes[r][c]
            try:
                reliability_diagram_from_bins(bins_for(bins, loss, v, split), ax=ax,
                                              title=f"{loss} {VARIANT_LABELS.get(v, v)}, {names.get(split, split)}")
            except KeyError:
                ax.set_visible(False)
    return fig


# -- the other tables ----------------------------------------------------------------------------


def robustness_summary(rob: pd.DataFrame, main: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long summary: loss x noise kind x rate x variant, mean/std of id_acc and id_ece, with
    rate-0 rows (clean labels) taken from the main table for the losses it trained."""
    if rob is None or rob.empty:
        return pd.DataFrame()
    frames = [rob[["loss", "noise", "rate", "variant", "seed", "id_acc", "id_ece"]]]
    if main is not None and not main.empty:
        losses = list(dict.fromkeys(rob["loss"]))
        clean = main[main["loss"].isin(losses) & main["variant"].isin(set(rob["variant"]))]
        if not clean.empty:
            frames.insert(0, clean[["loss", "variant", "seed", "id_acc", "id_ece"]].assign(noise="none", rate=0.0))
    df = pd.concat(frames, ignore_index=True)
    return summarize(df, ["loss", "noise", "rate", "variant"], ["id_acc", "id_ece"])


def robustness_table(rob: pd.DataFrame, main: pd.DataFrame | None = None, metric: str = "id_acc",
                     variant: str = "raw", digits: int = 3) -> pd.DataFrame:
    """``metric`` (clean test set, mean ± std over seeds) per loss (rows) and label-noise
    setting (columns: ``clean``, ``<kind> <rate>``) after training on noisy labels."""
    s = robustness_summary(rob, main)
    if s.empty:
        return s
    s = s[s["variant"] == variant].copy()
    s["setting"] = ["clean" if k == "none" else f"{k} {r:.0%}" for k, r in zip(s["noise"], s["rate"])]
    s["value"] = [_fmt(a, b, digits) for a, b in zip(s[f"{metric}_mean"], s[f"{metric}_std"])]
    order = list(dict.fromkeys(s.sort_values(["rate"], kind="stable")["setting"]))
    t = s.pivot_table(index="loss", columns="setting", values="value", aggfunc="first", sort=False)
    t = t.reindex(columns=order, index=list(dict.fromkeys(rob["loss"])))
    t.columns.name = None
    return t.reset_index()


def soft_label_table(soft: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Label source (majority vote / soft labels) x metrics, clean and shifted, mean ± std."""
    if soft is None or soft.empty:
        return pd.DataFrame()
    cols = [c for c in ("label_acc", "id_acc", "id_nll", "id_ece", "id_brier", "shift_acc", "shift_nll", "shift_ece",
                        "shift_brier") if c in soft.columns]
    return format_summary(soft, ["labels", "loss"], cols, digits=digits)


def anyloss_table(anyl: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    if anyl is None or anyl.empty:
        return pd.DataFrame()
    wanted = ("acc", "f1", "bacc", "gmean", "precision", "recall", "nll", "ece", "brier")
    cols = [c for c in wanted if c in anyl.columns]
    return format_summary(anyl, ["loss"], cols, digits=digits)


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    cols = ["claim", "metric", "expected", "effect", "ci_low", "ci_high", "n_seeds", "verdict", "note", "paper"]
    return pd.DataFrame([c.as_dict() for c in claims], columns=["family", *cols])[cols]


# -- the language model --------------------------------------------------------------------------


def lm_table(res, digits: int = 3) -> pd.DataFrame:
    """Answer-level metrics per pool (``all`` first) and method, mean ± std over split seeds."""
    t = res.table
    if t is None or t.empty:
        return pd.DataFrame()
    cols = ["temperature", "acc", "conf", "ece", "ada_ece", "brier", "nll", "auroc"]
    out = format_summary(t, ["pool", "method"], cols, digits=digits)
    n = t.groupby(["pool", "method"], sort=False)["n"].mean().reset_index(drop=True)
    out.insert(2, "n_test", n.round().astype(int).to_numpy())
    return out


def lm_pool_summary(res) -> pd.DataFrame:
    """Per pool, every sampled item at T = 1: count, accuracy, mean confidence, mean answer
    tokens, share of answers that ended with ``<eos>``."""
    it = res.items
    g = it.groupby("pool", sort=False)
    return pd.DataFrame({
        "items": g.size(),
        "accuracy": g["correct"].mean(),
        "mean_confidence": g["confidence"].mean(),
        "mean_tokens": g["n_tokens"].mean(),
        "ended_with_eos": g["finish"].apply(lambda s: float((s == "eos").mean())),
    }).reset_index()


def plot_lm_reliability(res):
    """Reliability diagrams of the answer-level confidence, pooled test items of the first split
    seed: raw and each temperature-scaling objective."""
    import matplotlib.pyplot as plt

    from trustlab.calibration.metrics import reliability_diagram_from_bins

    methods = list(dict.fromkeys(res.bins["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.8 * len(methods), 3.7), squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], methods):
        b = res.bins[res.bins["method"] == m].sort_values("bin")
        t = float(b["temperature"].iloc[0])
        reliability_diagram_from_bins({k: b[k].to_numpy(float) for k in ("lo", "hi", "count", "acc", "conf")}, ax=ax,
                                      title=f"LM {m} (T = {t:.2f})")
        ax.set_xlabel("answer confidence (sequence probability)")
    return fig


# -- headline and files --------------------------------------------------------------------------


def _slug(text: Any) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text)).strip("_")


def headline(tables: Mapping[str, Any], claims: Sequence[Claim], lm=None,
             stage_seconds: float | None = None) -> dict[str, float]:
    """Flat, readable headline numbers (means over seeds):
    ``<loss>_id_acc``, ``<loss>[_ts|_ca]_id_ece``, ``<loss>[_ts|_ca]_shift_ece``, ``<loss>_shift_acc``;
    ``noise_<kind>_<pct>_<loss>_acc``; ``soft_<labels>_[id|shift]_ece``; ``anyloss_<loss>_[f1|ece]``;
    ``lm_<method>_ece`` / ``lm_<method>_temperature`` / ``lm_acc`` (pooled test items);
    ``claims_<verdict>`` counts; ``stage_seconds``."""
    out: dict[str, float] = {}
    main = tables.get("main")
    main = main.main if isinstance(main, MainTables) else main
    if main is not None and not main.empty:
        m = main.groupby(["loss", "variant"], sort=False).mean(numeric_only=True)
        for (loss, variant), r in m.iterrows():
            tag = loss if variant == "raw" else f"{loss}_{variant}"
            if variant == "raw":
                out[f"{loss}_id_acc"] = r["id_acc"]
                if "shift_acc" in r:
                    out[f"{loss}_shift_acc"] = r["shift_acc"]
            out[f"{tag}_id_ece"] = r["id_ece"]
            if "shift_ece" in r:
                out[f"{tag}_shift_ece"] = r["shift_ece"]
    rob = tables.get("robustness")
    if rob is not None and not rob.empty:
        g = rob[rob["variant"] == "raw"].groupby(["noise", "rate", "loss"], sort=False)["id_acc"].mean()
        for (kind, rate, loss), v in g.items():
            out[f"noise_{kind}_{round(100 * rate)}_{loss}_acc"] = v
    soft = tables.get("soft_labels")
    if soft is not None and not soft.empty:
        g = soft.groupby("labels", sort=False).mean(numeric_only=True)
        for labels, r in g.iterrows():
            out[f"soft_{labels}_id_ece"] = r["id_ece"]
            if "shift_ece" in r:
                out[f"soft_{labels}_shift_ece"] = r["shift_ece"]
    anyl = tables.get("anyloss")
    if anyl is not None and not anyl.empty:
        g = anyl.groupby("loss", sort=False).mean(numeric_only=True)
        for loss, r in g.iterrows():
            out[f"anyloss_{loss}_f1"] = r["f1"]
            out[f"anyloss_{loss}_ece"] = r["ece"]
    if lm is not None and not lm.table.empty:
        pooled = lm.table[lm.table["pool"] == "all"].groupby("method", sort=False).mean(numeric_only=True)
        for method, r in pooled.iterrows():
            out[f"lm_{method}_ece"] = r["ece"]
            if method != "raw":
                out[f"lm_{method}_temperature"] = r["temperature"]
        if "raw" in pooled.index:
            out["lm_acc"] = pooled.loc["raw", "acc"]
            out["lm_raw_conf"] = pooled.loc["raw", "conf"]
    for v in ("supported", "not supported", "inconclusive"):
        out[f"claims_{_slug(v)}"] = sum(c.verdict == v for c in claims)
    if stage_seconds is not None:
        out["stage_seconds"] = round(float(stage_seconds), 1)
    return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in out.items()}


def findings(claims: Sequence[Claim], tables: Mapping[str, Any], lm=None) -> str:
    """Markdown bullets generated from the results: each claim's verdict and effect, the best
    raw / TS losses on shifted ECE, and what temperature scaling did to the LM."""
    lines = []
    for c in claims:
        lines.append(f"- **{c.claim}** ({c.metric}, expected {c.expected}): effect {c.effect:+.4f} "
                     f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}] over {c.n_seeds} seeds -> *{c.verdict}*.")
    main = tables.get("main")
    main = main.main if isinstance(main, MainTables) else main
    if main is not None and not main.empty and "shift_ece" in main.columns:
        m = main.groupby(["variant", "loss"], sort=False)[["id_acc", "shift_ece"]].mean()
        for v in ("raw", "ts", "ca"):
            if v in m.index.get_level_values(0):
                mv = m.loc[v].sort_values("shift_ece")
                lines.append(f"- Lowest shifted ECE {VARIANT_LABELS[v]}: {mv.index[0]} "
                             f"({mv['shift_ece'].iloc[0]:.3f}); "
                             f"highest: {mv.index[-1]} ({mv['shift_ece'].iloc[-1]:.3f}).")
        acc = main[main["variant"] == "raw"].groupby("loss")["id_acc"].mean()
        lines.append(f"- Clean test accuracy of the raw models ranges {acc.min():.3f} ({acc.idxmin()}) to "
                     f"{acc.max():.3f} ({acc.idxmax()}): errors are frequent enough to measure calibration.")
    if lm is not None and not lm.table.empty:
        pooled = lm.table[lm.table["pool"] == "all"].groupby("method", sort=False)[["ece", "temperature", "acc"]].mean()
        if "raw" in pooled.index:
            parts = [f"{m}: ECE {r['ece']:.3f} (T = {r['temperature']:.2f})" for m, r in pooled.iterrows()]
            lines.append(f"- Language model (pooled held-out items, accuracy {pooled.loc['raw', 'acc']:.3f}): "
                         + "; ".join(parts) + ".")
    return "\n".join(lines)


def write_outputs(reports_dir: str | os.PathLike, tables: Mapping[str, Any], claims: Sequence[Claim], *, lm=None,
                  config: Mapping[str, Any] | None = None, profile: str | None = None,
                  stage_seconds: float | None = None) -> dict[str, Any]:
    """``metrics.json`` (headline, claims, summary tables, config, timing) and plot data:
    ``plots/ece_vs_severity.csv`` (loss, variant, severity, ece, acc), ``plots/reliability.csv``
    (reliability bins of every loss x variant x split, first seed), the per-seed tables
    (``main.csv``, ``per_shift.csv``, ``robustness.csv``, ``soft_labels.csv``, ``anyloss.csv``),
    ``claims.csv`` and, for the LM, ``lm_calibration.csv`` / ``lm_reliability.csv`` / ``lm_items.csv``."""
    from trustlab.core.provenance import provenance
    from trustlab.tracking import write_metrics, write_plot

    reports_dir = Path(reports_dir)
    mt = tables.get("main")
    summaries: dict[str, Any] = {}
    if isinstance(mt, MainTables):
        summaries["main"] = summarize(mt.main, ["loss", "variant"]).to_dict(orient="records")
        summaries["per_shift"] = per_shift_summary(mt.per_shift).to_dict(orient="records")
        sev = severity_frame(mt)
        summaries["ece_vs_severity"] = sev.to_dict(orient="records")
        write_plot(FAMILY, "main", mt.main, reports_dir)
        if not mt.per_shift.empty:
            write_plot(FAMILY, "per_shift", mt.per_shift, reports_dir)
        write_plot(FAMILY, "ece_vs_severity", sev, reports_dir)
        if not mt.bins.empty:
            write_plot(FAMILY, "reliability", mt.bins, reports_dir)
    rob = tables.get("robustness")
    if rob is not None and not rob.empty:
        summaries["robustness"] = robustness_summary(rob, mt.main if isinstance(mt, MainTables) else None).to_dict(
            orient="records")
        write_plot(FAMILY, "robustness", rob, reports_dir)
    for name, by in (("soft_labels", ["labels", "loss"]), ("anyloss", ["loss"])):
        df = tables.get(name)
        if df is not None and not df.empty:
            summaries[name] = summarize(df, by).to_dict(orient="records")
            write_plot(FAMILY, name, df, reports_dir)
    cf = claims_frame(claims)
    write_plot(FAMILY, "claims", cf, reports_dir)
    lm_part = None
    if lm is not None:
        summaries["lm"] = [] if lm.table.empty else summarize(lm.table, ["pool", "method"]).to_dict(orient="records")
        write_plot(FAMILY, "lm_calibration", lm.table, reports_dir)
        write_plot(FAMILY, "lm_reliability", lm.bins, reports_dir)
        write_plot(FAMILY, "lm_items", lm.items, reports_dir)
        lm_part = {"info": lm.info, "temperatures": lm.temperatures.to_dict(orient="records"),
                   "pools": lm_pool_summary(lm).to_dict(orient="records")}
    metrics = {
        "headline": headline(tables, claims, lm, stage_seconds),
        "claims": [c.as_dict() for c in claims],
        "tables": summaries,
        "lm": lm_part,
        "config": dict(config or {}),
        "run": {"profile": profile, "stage_seconds": stage_seconds},
        "provenance": provenance(),
    }
    write_metrics(FAMILY, metrics, reports_dir)
    return metrics




# -- W&B -----------------------------------------------------------------------------------------


class RunLogger:
    """An ``on_run(name, seed, metrics)`` callback for the experiment functions: one W&B run per
    (model, seed) in group ``calibration``, job type = the table, with the run's metrics as its
    summary. ``hparams(name)`` may add the loss's hyperparameters to the run config."""

    def __init__(self, job_type: str, config: Mapping[str, Any] | None = None, hparams=None, enabled: bool = True):
        self.job_type = job_type
        self.config = dict(config or {})
        self.hparams = hparams
        self.enabled = enabled
        self.names: list[str] = []

    def __call__(self, name: str, seed: int, metrics: Mapping[str, Any]) -> None:
        from trustlab.tracking import start_run

        from trustlab.tracking import run_name as convention

        run_name = convention(f"{self.job_type}-{name}", seed)
        self.names.append(run_name)
        if not self.enabled:
            return
        hp = {}
        if self.hparams is not None:
            try:
                hp = dict(self.hparams(name))
            except (KeyError, ValueError):  # names like "soft:aggregate" or "ce@uniform0.4" are not losses
                hp = {}
        config = {**self.config, "table": self.job_type, "model": name, "seed": seed, "hparams": hp}
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        with start_run(family=FAMILY, job_type=self.job_type, name=run_name, config=config,
                       tags=[self.job_type, str(name)]) as run:
            run.summary(clean)


def log_summary(tables: Mapping[str, pd.DataFrame], figures: Mapping[str, Any], claims_df: pd.DataFrame,
                config: Mapping[str, Any] | None = None, html_path: str | os.PathLike | None = None,
                summary: Mapping[str, Any] | None = None) -> None:
    """The family's W&B summary run: tables (``wandb.Table``), the claims table, figures,
    the headline numbers as summary and the HTML summary page."""
    from trustlab.tracking import start_run

    with start_run(family=FAMILY, job_type="summary", name="calibration-summary", config=dict(config or {}),
                   tags=["summary"]) as run:
        for name, df in tables.items():
            if df is not None and len(df):
                run.log_table(name, df)
        run.log_table("claims", claims_df)
        for name, fig in figures.items():
            run.log_image(name, fig)
        if summary:
            run.summary(dict(summary))
        if html_path is not None and Path(html_path).exists():
            run.log_html("summary_html", html_path)
