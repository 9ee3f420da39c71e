"""The calibration family's tables: pandas DataFrames for the notebook and ``metrics.json``.

The run functions (:mod:`.run`, :mod:`.lm`) return per-seed rows; these functions summarise
them over seeds (``mean ± std`` strings for display, ``<metric>_mean`` / ``<metric>_std``
columns for ``metrics.json``). Timing columns (:data:`.run.TIMING_COLUMNS`) never enter a
summary: wall times go to ``timing.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from trustlab.calibration.run import TIMING_COLUMNS, MainTables
from trustlab.calibration.tuning import TuningResult, summarize_sweep
from trustlab.core.stats import mean_std

__all__ = [
    "LABELS",
    "MAIN_METRICS",
    "VARIANT_LABELS",
    "anyloss_table",
    "bins_for",
    "claims_frame",
    "detection_table",
    "format_summary",
    "hparams_table",
    "lm_pool_summary",
    "lm_table",
    "main_table",
    "per_shift_summary",
    "per_shift_table",
    "robustness_summary",
    "robustness_table",
    "severity_frame",
    "soft_label_table",
    "summarize",
    "tuned_values_table",
    "tuning_sweep_table",
    "without_timing",
]

MAIN_METRICS = ("acc", "nll", "ece", "ada_ece", "cw_ece", "brier", "aurc")
LABELS = {"acc": "Acc", "nll": "NLL", "ece": "ECE", "ada_ece": "AdaECE", "cw_ece": "cwECE", "brier": "Brier",
          "aurc": "AURC", "mce": "MCE", "temperature": "T"}  # fmt: skip
VARIANT_LABELS = {"raw": "raw", "ts": "+TS", "ca": "+CA"}


def _fmt(mu: float, sd: float, digits: int = 3) -> str:
    if not np.isfinite(mu):
        return "n/a"
    return f"{mu:.{digits}f} ± {sd:.{digits}f}"


def without_timing(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without its wall-time columns."""
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])


def summarize(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sample std over seeds: columns ``<metric>_mean``, ``<metric>_std`` and ``n``
    (``metrics``: every numeric column but the keys, the seed and the timing columns)."""
    by = list(by)
    if metrics is None:
        skip = {*by, "seed", *TIMING_COLUMNS}
        metrics = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for m in metrics:
            mu, sd = mean_std(g[m].to_numpy(float))
            row[f"{m}_mean"], row[f"{m}_std"] = mu, sd
        row["n"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], scale: float = 1.0,
                   digits: int = 2) -> pd.DataFrame:  # fmt: skip
    """``mean ± std`` strings per group (``scale=100`` for percentages)."""
    s = summarize(df, by, metrics)
    out = s[list(by)].copy()
    for m in metrics:
        out[m] = [f"{scale * a:.{digits}f} ± {scale * b:.{digits}f}" for a, b in zip(s[f"{m}_mean"], s[f"{m}_std"])]
    return out


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


def bins_for(bins: pd.DataFrame, loss: str, variant: str = "raw", split: str = "id") -> dict[str, np.ndarray]:
    """One reliability diagram's bins from ``MainTables.bins`` (for ``figures.reliability_diagram_from_bins``)."""
    sel = bins[(bins["loss"] == loss) & (bins["variant"] == variant) & (bins["split"] == split)].sort_values("bin")
    if sel.empty:
        raise KeyError(f"no bins for loss={loss!r}, variant={variant!r}, split={split!r}")
    return {k: sel[k].to_numpy(float) for k in ("lo", "hi", "count", "acc", "conf")}


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
                     variant: str = "raw", digits: int = 3) -> pd.DataFrame:  # fmt: skip
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
                        "shift_brier") if c in soft.columns]  # fmt: skip
    return format_summary(soft, ["labels", "loss"], cols, digits=digits)


def anyloss_table(anyl: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Binary losses on breast cancer: accuracy, F1, balanced accuracy, G-mean, precision,
    recall, NLL, ECE, Brier, mean ± std over seeds."""
    if anyl is None or anyl.empty:
        return pd.DataFrame()
    wanted = ("acc", "f1", "bacc", "gmean", "precision", "recall", "nll", "ece", "brier")
    cols = [c for c in wanted if c in anyl.columns]
    return format_summary(anyl, ["loss"], cols, digits=digits)


def detection_table(detection: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Error-detection AUROC (clean test errors) and shift AUROC (clean vs shifted) per loss and
    detector, mean ± std over seeds (the raw model, every detector fit on validation only)."""
    if detection is None or detection.empty:
        return pd.DataFrame()
    cols = [c for c in ("error_auroc", "shift_auroc") if detection[c].notna().any()]
    return format_summary(detection, ["loss", "detector"], cols, digits=digits)


def claims_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The claims rows for display: claim, metric, effect with its 95% interval, test, p, seeds,
    verdict, the minimum detectable effect against the paper's effect (power), reason and note
    (how both sides were tuned)."""
    cols = ["claim", "metric", "expected", "effect", "ci_low", "ci_high", "test", "p_value", "n", "verdict", "mde",
            "paper_effect", "power", "reason", "note", "paper", "id"]  # fmt: skip
    return pd.DataFrame(list(rows), columns=cols)


# -- tuning --------------------------------------------------------------------------------------


def tuning_sweep_table(tuning: TuningResult | None) -> pd.DataFrame:
    """The validation sweep, one row per dataset x loss x candidate (grid order): the knob, the
    candidate value, validation NLL (the selection score), ECE and accuracy (means over the
    tuning seeds, ``n`` of them) and ``chosen``."""
    if tuning is None or tuning.sweep.empty:
        return pd.DataFrame()
    s = summarize_sweep(tuning.sweep).rename(columns={"value": "candidate"})
    s["chosen"] = [tuning.chosen.get(ds, {}).get(loss) == v for ds, loss, v in zip(s["dataset"], s["loss"],
                                                                                   s["candidate"])]  # fmt: skip
    return s


def tuned_values_table(tuning: TuningResult | None) -> pd.DataFrame:
    """Per dataset and loss: the knob, its grid, the chosen value, the value it would have had
    untuned (params.yaml), the validation NLL / ECE at the chosen value and ``at_grid_end``
    (the choice is the smallest or largest value: the best value may lie outside the grid)."""
    sweep = tuning_sweep_table(tuning)
    if sweep.empty:
        return pd.DataFrame()
    rows = []
    for (ds, loss), g in sweep.groupby(["dataset", "loss"], sort=False):
        best = g[g["chosen"]].iloc[0]
        rows.append({"dataset": ds, "loss": loss, "knob": best["knob"], "grid": [float(v) for v in g["candidate"]],
                     "chosen": float(best["candidate"]), "untuned": tuning.untuned.get(ds, {}).get(loss, float("nan")),
                     "val_nll": float(best["val_nll"]), "val_ece": float(best["val_ece"]),
                     "at_grid_end": len(g) > 2 and best["candidate"] in (g["candidate"].min(),
                                                                          g["candidate"].max())})  # fmt: skip
    return pd.DataFrame(rows)


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
    }).reset_index()  # fmt: skip
