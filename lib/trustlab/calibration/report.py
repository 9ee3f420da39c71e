"""What the calibration stage reports: headline numbers, findings, the stage outputs and W&B.

* :func:`headline`: the flat numbers of ``headline.json`` (means over seeds, claim counts);
* :func:`findings`: markdown bullets, every number taken from this run's results;
* :func:`stage_outputs`: the :class:`~trustlab.reporting.outputs.StageOutputs` that
  ``write_outputs`` turns into ``metrics.json`` (``headline``, ``claims``, ``tables``: the
  summaries over seeds, ``lm``, ``config``), plot data under ``plots/`` and ``timing.json``
  (every wall time: per part and per trained model);
* :class:`RunLogger`: the ``on_run`` callback of :mod:`.run` that logs one W&B run per model;
* :func:`log_summary`: the family's W&B summary run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustlab.calibration import tables as tb
from trustlab.calibration.run import FAMILY, Results
from trustlab.core.claims import count_verdicts
from trustlab.reporting.outputs import StageOutputs

__all__ = ["RunLogger", "findings", "headline", "log_summary", "stage_outputs", "timing"]

# the models of each per-seed table: its rows with these keys share one training run
MODEL_KEYS = {"main": ["loss", "seed"], "waveforms": ["loss", "seed"], "robustness": ["loss", "noise", "rate", "seed"],
              "soft_labels": ["labels", "seed"], "anyloss": ["loss", "seed"]}  # fmt: skip


def _slug(text: Any) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text)).strip("_")


def _per_seed_tables(results: Results) -> dict[str, pd.DataFrame]:
    main = results.main.main if results.main is not None else pd.DataFrame()
    waves = results.waveforms.main if results.waveforms is not None else pd.DataFrame()
    return {"main": main, "waveforms": waves, "robustness": results.robustness, "soft_labels": results.soft_labels,
            "anyloss": results.anyloss}  # fmt: skip


def headline(results: Results, claims: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Flat, readable headline numbers (means over seeds):
    ``<loss>_id_acc``, ``<loss>[_ts|_ca]_id_ece``, ``<loss>[_ts|_ca]_shift_ece``, ``<loss>_shift_acc``;
    ``detect_ce_<detector>_[error|shift]_auroc``;
    ``waveforms_<loss>_id_acc``, ``waveforms_<loss>[_ts]_id_ece``; ``noise_<kind>_<pct>_<loss>_acc``; ``soft_<labels>_[id|shift]_ece``; ``anyloss_<loss>_[f1|ece]``;
    ``lm_<method>_ece`` / ``lm_<method>_temperature`` / ``lm_acc`` / ``lm_raw_conf`` (pooled test
    items); ``tuned_<dataset>_<loss>_<knob>`` (the chosen values); ``claims_<verdict>`` counts."""
    out: dict[str, float] = {}
    tuning = results.tuning
    if tuning is not None:
        for ds, by_loss in tuning.chosen.items():
            for loss, value in by_loss.items():
                out[f"tuned_{ds}_{loss}_{_slug(tuning.choice(ds, loss)[0])}"] = value
    main = results.main.main if results.main is not None else None
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
    waves = results.waveforms.main if results.waveforms is not None else None
    if waves is not None and not waves.empty:
        m = waves.groupby(["loss", "variant"], sort=False).mean(numeric_only=True)
        for (loss, variant), r in m.iterrows():
            if variant == "raw":
                out[f"waveforms_{loss}_id_acc"] = r["id_acc"]
            out[f"waveforms_{loss if variant == 'raw' else f'{loss}_{variant}'}_id_ece"] = r["id_ece"]
    det = results.main.detection if results.main is not None else None
    if det is not None and not det.empty:
        g = det[det["loss"] == "ce"].groupby("detector", sort=False)[["error_auroc", "shift_auroc"]].mean()
        for name, r in g.iterrows():
            out[f"detect_ce_{name}_error_auroc"] = r["error_auroc"]
            if np.isfinite(r["shift_auroc"]):
                out[f"detect_ce_{name}_shift_auroc"] = r["shift_auroc"]
    rob = results.robustness
    if rob is not None and not rob.empty:
        g = rob[rob["variant"] == "raw"].groupby(["noise", "rate", "loss"], sort=False)["id_acc"].mean()
        for (kind, rate, loss), v in g.items():
            out[f"noise_{kind}_{round(100 * rate)}_{loss}_acc"] = v
    soft = results.soft_labels
    if soft is not None and not soft.empty:
        g = soft.groupby("labels", sort=False).mean(numeric_only=True)
        for labels, r in g.iterrows():
            out[f"soft_{labels}_id_ece"] = r["id_ece"]
            if "shift_ece" in r:
                out[f"soft_{labels}_shift_ece"] = r["shift_ece"]
    anyl = results.anyloss
    if anyl is not None and not anyl.empty:
        g = anyl.groupby("loss", sort=False).mean(numeric_only=True)
        for loss, r in g.iterrows():
            out[f"anyloss_{loss}_f1"] = r["f1"]
            out[f"anyloss_{loss}_ece"] = r["ece"]
    lm = results.lm
    if lm is not None and not lm.table.empty:
        pooled = lm.table[lm.table["pool"] == "all"].groupby("method", sort=False).mean(numeric_only=True)
        for method, r in pooled.iterrows():
            out[f"lm_{method}_ece"] = r["ece"]
            if method != "raw":
                out[f"lm_{method}_temperature"] = r["temperature"]
        if "raw" in pooled.index:
            out["lm_acc"] = pooled.loc["raw", "acc"]
            out["lm_raw_conf"] = pooled.loc["raw", "conf"]
    for verdict, n in count_verdicts(claims).items():
        out[f"claims_{_slug(verdict)}"] = n
    return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in out.items()}


def findings(results: Results, claims: Sequence[Mapping[str, Any]]) -> str:
    """Markdown bullets generated from the results: each claim's verdict, effect and test, the
    lowest and highest shifted ECE per variant, the accuracy range of the raw models, and what
    temperature scaling did to the language model."""
    lines = []
    tuning = results.tuning
    if tuning is not None and not tuning.sweep.empty:
        lines.append(tuning_text(tuning))
    else:
        lines.append("- No tuning in this run: every loss trains at its params.yaml values "
                     "(calibration.tuning.enabled: false).")  # fmt: skip
    for c in claims:
        if c["verdict"] == "not evaluated":
            lines.append(f"- **{c['claim']}** ({c['metric']}): *not evaluated*: {c['reason']}.")
            continue
        power = ""
        if c.get("power") == "underpowered":
            power = " " + next((part.strip() for part in (c.get("note") or "").split(";")
                                if part.strip().startswith("underpowered")), "underpowered") + "."  # fmt: skip
            power = power.replace("; ", ", ")
        lines.append(f"- **{c['claim']}** ({c['metric']}, expected {c['expected']}): effect {c['effect']:+.4f} "
                     f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] over {c['n']} seeds, {c['test']} "
                     f"p = {c['p_value']:.3g} -> *{c['verdict']}*.{power}")  # fmt: skip
    main = results.main.main if results.main is not None else None
    if main is not None and not main.empty and "shift_ece" in main.columns:
        m = main.groupby(["variant", "loss"], sort=False)[["id_acc", "shift_ece"]].mean()
        for v in m.index.get_level_values(0).unique():
            mv = m.loc[v].sort_values("shift_ece")
            lowest, highest = mv["shift_ece"].iloc[0], mv["shift_ece"].iloc[-1]
            lines.append(f"- Lowest shifted ECE {tb.VARIANT_LABELS.get(v, v)}: {mv.index[0]} ({lowest:.3f}); "
                         f"highest: {mv.index[-1]} ({highest:.3f}).")  # fmt: skip
        acc = main[main["variant"] == "raw"].groupby("loss")["id_acc"].mean()
        lines.append(f"- Clean test accuracy of the raw models ranges {acc.min():.3f} ({acc.idxmin()}) to "
                     f"{acc.max():.3f} ({acc.idxmax()}): errors are frequent enough to measure calibration.")
    det = results.main.detection if results.main is not None else None
    if det is not None and not det.empty:
        g = det.groupby("detector", sort=False)[["error_auroc", "shift_auroc"]].mean()
        parts = [f"{name} {r['error_auroc']:.3f}" + (f" (shift {r['shift_auroc']:.3f})" if np.isfinite(r["shift_auroc"])
                                                    else "") for name, r in g.iterrows()]  # fmt: skip
        lines.append("- Error-detection AUROC of the raw models, mean over losses and seeds: " + "; ".join(parts) + ".")
    waves = results.waveforms.main if results.waveforms is not None else None
    if waves is not None and not waves.empty:
        acc = waves[waves["variant"] == "raw"].groupby("loss")["id_acc"].mean()
        ece = waves.groupby("variant", sort=False)["id_ece"].mean()
        lines.append(f"- Waveform digits: clean test accuracy ranges {acc.min():.3f} ({acc.idxmin()}) to "
                     f"{acc.max():.3f} ({acc.idxmax()}); mean ECE over losses "
                     + ", ".join(f"{tb.VARIANT_LABELS.get(v, v)} {e:.3f}" for v, e in ece.items()) + ".")
    lm = results.lm
    if lm is not None and not lm.table.empty:
        pooled = lm.table[lm.table["pool"] == "all"].groupby("method", sort=False)[["ece", "temperature", "acc"]].mean()
        if "raw" in pooled.index:
            parts = [f"{m}: ECE {r['ece']:.3f} (T = {r['temperature']:.2f})" for m, r in pooled.iterrows()]
            lines.append(f"- Language model (pooled held-out items, accuracy {pooled.loc['raw', 'acc']:.3f}): "
                         + "; ".join(parts) + ".")  # fmt: skip
    return "\n".join(lines)


def tuning_text(tuning) -> str:
    """One markdown bullet: the budget, the selection rule and the chosen values of this run."""
    from trustlab.calibration.tuning import RULE

    per_ds = []
    for ds, by_loss in tuning.chosen.items():
        parts = [f"{loss} {tuning.choice(ds, loss)[0]} = {v:g}" for loss, v in by_loss.items()]
        per_ds.append(f"{ds}: " + ", ".join(parts))
    seeds = ", ".join(str(s) for s in tuning.seeds)
    chosen = tb.tuned_values_table(tuning)
    ends = chosen[chosen["at_grid_end"]] if not chosen.empty else chosen
    edge = (f" {len(ends)} of {len(chosen)} choices are at an end of their grid "
            f"({', '.join(f'{r.dataset} {r.loss}' for r in ends.itertuples())}): there the best value may lie outside "
            "the grid, and those losses are tuned as well as the budget allows, not to their optimum."
            if len(ends) else "")  # fmt: skip
    return (f"- **Tuning** (equal budget): every loss got {tuning.trials} values of one knob (its own, or the weight "
            f"decay for CE, Brier and MAE), each trained on tuning seed(s) {seeds} and scored on the validation "
            f"split only; the rule: {RULE}. Chosen ({'; '.join(per_ds)}). The test seeds then ran every loss at its "
            f"chosen value; the label-noise table reuses the digits choices.{edge}")  # fmt: skip


def timing(results: Results) -> dict[str, Any]:
    """Every wall time of the run: seconds per part, CPU seconds per part (workers included) and
    the cores they kept busy (cpu / wall), and per table the training seconds of each model
    (mean over seeds per loss / label source) and their total."""
    out: dict[str, Any] = {"part_seconds": dict(results.seconds)}
    if results.cpu_seconds:
        out["part_cpu_seconds"] = dict(results.cpu_seconds)
        out["part_cores_used"] = {k: v / results.seconds[k] for k, v in results.cpu_seconds.items()
                                  if results.seconds.get(k, 0) > 0}  # fmt: skip
        wall, cpu = sum(results.seconds.values()), sum(results.cpu_seconds.values())
        # the parts together (write_outputs adds the whole stage's wall time as stage_seconds)
        out["parts_seconds"], out["parts_cpu_seconds"] = wall, cpu
        out["parts_cores_used"] = cpu / wall if wall > 0 else float("nan")
    for name, df in _per_seed_tables(results).items():
        if df is None or df.empty or "train_seconds" not in df.columns:
            continue
        models = df.drop_duplicates(subset=MODEL_KEYS[name])
        out[f"{name}_train_seconds_total"] = float(models["train_seconds"].sum())
        by = MODEL_KEYS[name][0]
        per_model = models.groupby(by, sort=False)["train_seconds"].mean()
        out[f"{name}_train_seconds_mean"] = {str(k): float(v) for k, v in per_model.items()}
        if "eval_seconds" in models.columns:
            out[f"{name}_eval_seconds_total"] = float(models["eval_seconds"].sum())
    if results.tuning is not None and not results.tuning.sweep.empty:
        sw = results.tuning.sweep
        out["tuning_train_seconds_total"] = float(sw["train_seconds"].sum())
        out["tuning_trials"] = int(len(sw))
    if results.lm is not None and "collect_seconds" in results.lm.info:
        out["lm_collect_seconds"] = float(results.lm.info["collect_seconds"])
    return out


def stage_outputs(results: Results, claims: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> StageOutputs:
    """Everything the stage writes (see the module docstring). Plot data: ``ece_vs_severity``
    (loss, variant, severity, ece, acc), ``reliability`` (bins of every loss x variant x split,
    first seed), the per-seed tables (``main``, ``per_shift``, ``robustness``, ``soft_labels``,
    ``anyloss``, ``tuning_sweep``: one row per tuning trial), ``claims`` and, for the LM,
    ``lm_calibration`` / ``lm_reliability`` / ``lm_items``. ``tables`` also holds the tuning
    sweep (``tuning_sweep``) and the chosen values (``tuning_chosen``); ``tuning`` the rule, the
    budget and the choices."""
    mt = results.main
    summaries: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    if mt is not None:
        sev = tb.severity_frame(mt)
        summaries["main"] = tb.summarize(mt.main, ["loss", "variant"]).to_dict(orient="records")
        summaries["per_shift"] = tb.per_shift_summary(mt.per_shift).to_dict(orient="records")
        summaries["ece_vs_severity"] = sev.to_dict(orient="records")
        plots["main"] = tb.without_timing(mt.main)
        if not mt.per_shift.empty:
            plots["per_shift"] = mt.per_shift
        plots["ece_vs_severity"] = sev
        if not mt.detection.empty:
            summaries["detection"] = tb.summarize(mt.detection, ["loss", "detector"]).to_dict(orient="records")
            plots["detection"] = mt.detection
        if not mt.bins.empty:
            plots["reliability"] = mt.bins
    wt = results.waveforms
    if wt is not None and not wt.main.empty:
        summaries["waveforms"] = tb.summarize(wt.main, ["loss", "variant"]).to_dict(orient="records")
        plots["waveforms"] = tb.without_timing(wt.main)
        if not wt.detection.empty:
            det = wt.detection.dropna(axis=1, how="all")  # no shifted sets: no shift AUROC
            summaries["waveforms_detection"] = tb.summarize(det, ["loss", "detector"]).to_dict(orient="records")
            plots["waveforms_detection"] = det
    rob = results.robustness
    if rob is not None and not rob.empty:
        summaries["robustness"] = tb.robustness_summary(rob, mt.main if mt is not None else None).to_dict(
            orient="records")
        plots["robustness"] = tb.without_timing(rob)
    for name, df, by in (("soft_labels", results.soft_labels, ["labels", "loss"]),
                         ("anyloss", results.anyloss, ["loss"])):  # fmt: skip
        if df is not None and not df.empty:
            summaries[name] = tb.summarize(df, by).to_dict(orient="records")
            plots[name] = tb.without_timing(df)
    tuning_part = None
    tuning = results.tuning
    if tuning is not None and not tuning.sweep.empty:
        from trustlab.calibration.tuning import RULE, SCORE

        summaries["tuning_sweep"] = tb.tuning_sweep_table(tuning).to_dict(orient="records")
        summaries["tuning_chosen"] = tb.tuned_values_table(tuning).to_dict(orient="records")
        plots["tuning_sweep"] = tb.without_timing(tuning.sweep)
        chosen = {ds: {loss: {"knob": tuning.choice(ds, loss)[0], "value": v} for loss, v in by_loss.items()}
                  for ds, by_loss in tuning.chosen.items()}  # fmt: skip
        tuning_part = {"rule": RULE, "score": SCORE, "trials": tuning.trials, "seeds": list(tuning.seeds),
                       "chosen": chosen}
    plots["claims"] = tb.claims_frame(claims)
    lm_part = None
    lm = results.lm
    if lm is not None:
        summaries["lm"] = [] if lm.table.empty else tb.summarize(lm.table, ["pool", "method"]).to_dict(orient="records")
        plots["lm_calibration"] = lm.table
        plots["lm_reliability"] = lm.bins
        plots["lm_items"] = lm.items
        lm_part = {"info": {k: v for k, v in lm.info.items() if k != "collect_seconds"},
                   "temperatures": lm.temperatures.to_dict(orient="records"),
                   "pools": tb.lm_pool_summary(lm).to_dict(orient="records")}  # fmt: skip
    return StageOutputs(
        stage=FAMILY,
        headline=headline(results, claims),
        claims=list(claims),
        plots=plots,
        extra={"tables": summaries, "lm": lm_part, "tuning": tuning_part, "config": dict(config)},
        timing=timing(results),
    )


# -- W&B -----------------------------------------------------------------------------------------


class RunLogger:
    """An ``on_run(name, seed, metrics)`` callback for the run functions: one W&B run per
    (model, seed) in group ``calibration``, job type = the table, with the run's metrics as its
    summary. ``hparams(name)`` may add the loss's hyperparameters to the run config."""

    def __init__(self, job_type: str, config: Mapping[str, Any] | None = None, hparams=None, enabled: bool = True):
        self.job_type = job_type
        self.config = dict(config or {})
        self.hparams = hparams
        self.enabled = enabled
        self.names: list[str] = []

    def __call__(self, name: str, seed: int, metrics: Mapping[str, Any]) -> None:
        from trustlab.tracking import run_name, start_run

        this_run = run_name(f"{self.job_type}-{name}", seed)
        self.names.append(this_run)
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
        with start_run(family=FAMILY, job_type=self.job_type, name=this_run, config=config,
                       tags=[self.job_type, str(name)]) as run:  # fmt: skip
            run.summary(clean)


def log_summary(tables: Mapping[str, pd.DataFrame], figures: Mapping[str, Any], claims_df: pd.DataFrame,
                config: Mapping[str, Any] | None = None, html_path: str | os.PathLike | None = None,
                summary: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    """The family's W&B summary run: tables (``wandb.Table``), the claims table, figures,
    the headline numbers as summary and the HTML summary page."""
    from trustlab.tracking import start_run

    with start_run(family=FAMILY, job_type="summary", name="calibration-summary", config=dict(config or {}),
                   tags=["summary"]) as run:  # fmt: skip
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
