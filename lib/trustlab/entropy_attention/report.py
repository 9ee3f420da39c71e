"""The stage's report: headline numbers, the findings text (every number from this run's
results), the :class:`~trustlab.reporting.outputs.StageOutputs` for ``write_outputs``, and the
W&B side (one run per trained model through :func:`wandb_run_hook`, and the summary run)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from trustlab.core.claims import count_verdicts
from trustlab.entropy_attention import tables
from trustlab.entropy_attention.claims import FAMILY
from trustlab.entropy_attention.config import EntropyAttentionConfig
from trustlab.entropy_attention.figures import plot_run_heatmaps, plot_run_learned
from trustlab.entropy_attention.results import Results, RunResult
from trustlab.entropy_attention.run import OnRun, RunInfo, realised_overhead
from trustlab.reporting.outputs import StageOutputs
from trustlab.tracking import run_name, start_run

# |relative change of validation perplexity over the last 20% of steps| below which a curve is flat
FLAT_TOLERANCE = 0.01


# -- numbers ------------------------------------------------------------------------------------
def headline(results: Results, claims: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: perplexity, bits per token, top / middle bins, overloaded and collapsed
    shares; run and claim counts. No wall times (those are in :func:`timing`)."""
    h: dict[str, Any] = {}
    for _, r in tables.perplexity_table(results).iterrows():
        h[f"{r.variant}/val_ppl"] = r.ppl_mean
        h[f"{r.variant}/bits_per_token"] = r.bpt_mean
    for _, r in tables.head_bin_table(results).iterrows():
        h[f"{r.variant}/top_bin"] = r["bin_75-100%"]
        h[f"{r.variant}/middle_bins"] = r["bin_25-50%"] + r["bin_50-75%"]
        h[f"{r.variant}/overloaded"] = r.overloaded
        h[f"{r.variant}/collapsed"] = r.collapsed
    h["chosen_lam"] = results.chosen_lam
    flat = tables.flatness_table(results)
    if len(flat):
        h["worst_rel_change_last_20pct"] = float(flat.worst_rel_change.min())  # NaN: too few curve points
    runs = results.all_runs
    h["runs"] = len(runs)
    h["runs_diverged"] = sum(r.status != "ok" for r in runs)
    h["claims_supported"] = count_verdicts(claims)["supported"]
    h["claims_total"] = len(claims)
    return h


def timing(results: Results, overhead: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything measured in seconds, and the entropy-measurement overhead, for ``timing.json``."""
    overhead = dict(overhead or {})
    realised = realised_overhead(results)
    return {
        "training_seconds": results.seconds,
        "training_cpu_seconds": results.cpu_seconds,
        "training_cores_used": results.cpu_seconds / results.seconds if results.seconds > 0 else None,
        "workers": results.workers,
        "train_seconds": realised["train_seconds"],
        "entropy_every_step_ratio": overhead.get("every_step_ratio"),
        "entropy_logging_steps_ratio": overhead.get("amortised_ratio"),
        "entropy_monitor_realised_ratio": realised["ratio"],
        "overhead": {"measured": overhead, "realised": realised},
        "runs": tables.timing_table(results).to_dict(orient="records"),
    }


def stage_outputs(results: Results, claims: list[dict[str, Any]], overhead: Mapping[str, Any] | None = None
                  ) -> StageOutputs:  # fmt: skip
    """What ``write_outputs`` writes for this stage."""
    div_summary, div_runs = tables.divergence_table(results)
    theta, temperature = tables.learned_frames(results)
    perplexity, head_bins = tables.perplexity_table(results), tables.head_bin_table(results)
    gamma_sweep = tables.gamma_sweep_table(results)
    lam_sweep, flatness = tables.lam_sweep_table(results), tables.flatness_table(results)
    return StageOutputs(
        stage=FAMILY,
        headline=headline(results, claims),
        claims=claims,
        tables={"perplexity": perplexity, "head_bins": head_bins, "divergence": div_summary,
                "divergence_runs": div_runs, "gamma_sweep": gamma_sweep, "lam_sweep": lam_sweep,
                "flatness": flatness},
        plots={"runs": tables.runs_frame(results), "perplexity": perplexity, "head_bins": head_bins,
               "heatmaps": tables.heatmap_frame(results), "entropy_history": tables.history_frame(results),
               "gamma_sweep": gamma_sweep, "theta": theta, "temperature": temperature, "lam_sweep": lam_sweep,
               "validation_curves": tables.validation_curve_frame(results)},
        extra={"corpus": results.corpus, "config": results.config},
        timing=timing(results, overhead),
    )  # fmt: skip


# -- findings -----------------------------------------------------------------------------------
def findings(results: Results, claims: list[dict[str, Any]], overhead: Mapping[str, Any] | None = None) -> str:
    """Plain statements of what this run's numbers show (markdown; generated, so it stays true
    when the profile changes). Paper values are named as such."""
    bins = tables.head_bin_table(results).set_index("variant")
    ppl = tables.perplexity_table(results).set_index("variant")
    c = results.config
    out = [f"Each run saw {c['steps']} steps x {c['batch_size']} windows x {c['block_size']} tokens "
           f"= {c['steps'] * c['batch_size'] * c['block_size']:,} tokens, with {len(c['seeds'])} seed(s)."]
    flat = tables.flatness_table(results)
    if len(flat) and flat.worst_rel_change.notna().any():
        worst = flat.loc[flat.worst_rel_change.idxmin()]
        out.append(f"Validation perplexity over the last 20% of the steps changed by {flat.iloc[:, 2].mean():+.1%} on "
                   f"average over variants (worst run: {worst.worst_rel_change:+.1%}, {worst.variant}).")
        if worst.worst_rel_change < -FLAT_TOLERANCE:
            out.append(f"The curves have not flattened (a change beyond {FLAT_TOLERANCE:.0%}): the effects below are "
                       "those of this training budget and can change with longer training.")
    elif len(flat):
        out.append("Too few validation-curve points to measure flatness (raise steps or lower log_every).")
    lam = tables.lam_sweep_table(results)
    if len(lam):
        by = lam.groupby("lam")[["tune_ppl", "tune_overloaded"]].mean()
        steps = "; ".join(f"{k:g}: ppl {r.tune_ppl:.3f}, overloaded {r.tune_overloaded:.0%}" for k, r in by.iterrows())
        off = " (the regularizer off: its best setting here is no effect)" if results.chosen_lam == 0 else ""
        out.append(f"Lambda sweep of {c['lam_sweep_variant']} on {len(c['tune_seeds'])} tuning seed(s), tuning "
                   f"windows: {steps}. Chosen lambda = {results.chosen_lam:g}{off}; the claims use it on the test "
                   f"windows.")

    def early(v: str) -> float | None:
        return bins.loc[v, "early_norm_entropy"] if v in bins.index else None

    for ln, no in (("SM+LN+G", "SM+G"), ("SM+LN+R", "SM+R")):
        if early(ln) is not None and early(no) is not None:
            out.append(f"Early-layer normalised entropy: {ln} {early(ln):.2f} vs {no} {early(no):.2f} "
                       f"(overloaded heads {bins.loc[ln, 'overloaded']:.0%} vs {bins.loc[no, 'overloaded']:.0%}; "
                       f"top-bin {bins.loc[ln, 'bin_75-100%']:.0%} vs {bins.loc[no, 'bin_75-100%']:.0%}).")
    if "SM+LN+G" in bins.index:
        mid = bins.loc["SM+LN+G", "bin_25-50%"] + bins.loc["SM+LN+G", "bin_50-75%"]
        out.append(f"Baseline heads in the two middle bins: {mid:.0%} (paper: about 90%).")
    heat = tables.heatmap_frame(results)
    layers = heat.groupby(["variant", "layer"]).entropy.mean() if len(heat) else None

    def per_layer(v: str) -> str:
        if layers is None or v not in layers.index.get_level_values(0):
            return "n/a"
        return ", ".join(f"{x:.2f}" for x in layers.loc[v].values)

    for sfx in ("", "-noFLN"):
        reg, t, plain = f"EReg(SM(t)+ScFuFFN){sfx}", f"SM(t)+ScFuFFN{sfx}", f"SM+ScFuFFN{sfx}"
        if reg in bins.index and t in bins.index:
            out.append(f"Per-layer mean entropy (nats, layers 0..L-1), {t}: {per_layer(t)}; {reg}: {per_layer(reg)}.")
            line = (f"Regularizer ({'no final LN' if sfx else 'final LN kept'}): early-layer normalised entropy "
                    f"{bins.loc[t, 'early_norm_entropy']:.2f} ({t}) -> {bins.loc[reg, 'early_norm_entropy']:.2f} ({reg})")
            if plain in ppl.index and np.isfinite(ppl.loc[plain, "ppl_mean"]) and np.isfinite(ppl.loc[reg, "ppl_mean"]):
                rel = ppl.loc[reg, "ppl_mean"] / ppl.loc[plain, "ppl_mean"] - 1
                line += (f"; perplexity {ppl.loc[plain, 'ppl_mean']:.3f} ({plain}) -> {ppl.loc[reg, 'ppl_mean']:.3f} "
                         f"({100 * rel:+.1f}%; paper -7.8%)")
            out.append(line + ".")
    if "SM+R" in ppl.index and "SM+G" in ppl.index:
        out.append(f"ReLU vs GELU without LayerNorm: perplexity {ppl.loc['SM+R', 'ppl_mean']:.3f} vs "
                   f"{ppl.loc['SM+G', 'ppl_mean']:.3f}.")
    runs = results.all_runs
    out.append(f"Diverged or failed runs: {sum(r.status != 'ok' for r in runs)} of {len(runs)}.")
    if overhead:
        target = "within" if overhead["amortised_ratio"] <= 1.5 else "above"
        out.append(f"Entropy measurement: every step would cost {overhead['every_step_ratio']:.2f}x the fast path; "
                   f"measuring only every {overhead['log_every']} steps costs {overhead['amortised_ratio']:.3f}x, "
                   f"{target} the 1.5x budget.")
    counts = {k: v for k, v in count_verdicts(claims).items() if v}
    out.append("Claim verdicts: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ".")
    return "\n".join(f"- {s}" for s in out)


# -- W&B ------------------------------------------------------------------------------------------
class _WandbRunHook:
    """Logs one training run: per-layer entropy on monitor steps, the loss on logging steps, and
    at the end its summary numbers and (online, if asked) its heatmaps."""

    def __init__(self, run, cfg: EntropyAttentionConfig):
        self.run, self.cfg = run, cfg

    def on_entropy(self, row: dict[str, Any]) -> None:
        data = {f"entropy/layer{i}": e for i, e in enumerate(row["layer_mean"])}
        data.update({f"entropy_norm/layer{i}": e / row["max_uniform"] for i, e in enumerate(row["layer_mean"])})
        self.run.log(data, step=row["step"])

    def on_train_log(self, row: dict[str, Any]) -> None:
        if "loss" in row and (row["step"] % self.cfg.log_every == 0 or row["step"] == 1):
            self.run.log({k: row[k] for k in ("loss", "ce", "ent_reg", "lr") if k in row}, step=row["step"])

    def on_result(self, result: RunResult) -> None:
        m = tables.run_metrics(result, self.cfg.to_dict())
        keys = ("val_ppl", "val_bpt", "status", "overloaded", "collapsed", "early_norm_entropy", "top_bin")
        self.run.summary({**{k: m[k] for k in keys}, "ms_per_step": result.ms_per_step})
        if self.run.live and self.cfg.wandb_images:
            fig = plot_run_heatmaps(result)
            self.run.log_image("entropy_heatmaps", fig)
            plt.close(fig)
            if result.learned.get("theta") is not None or result.learned.get("temperature") is not None:
                fig = plot_run_learned(result)
                self.run.log_image("learned_theta_temperature", fig)
                plt.close(fig)


@dataclass(frozen=True)
class WandbRunHook:
    """The ``on_run`` hook of :func:`trustlab.entropy_attention.run.run_stage` that opens one W&B
    run per trained model (named ``<variant>[-gamma<g>][-lam<l>]-seed<s>``). A plain picklable
    object, so worker processes open their own runs."""

    cfg: EntropyAttentionConfig

    @contextmanager
    def __call__(self, info: RunInfo) -> Iterator[_WandbRunHook]:
        extra = {"gamma": f"{info.gamma:g}"} if info.gamma_swept else {}
        if "lam_sweep" in info.tags:
            extra["lam"] = f"{info.config['lam_effective']:g}"
        name = run_name(info.variant, info.seed, **extra)
        with start_run(family=FAMILY, job_type="train", name=name, config=info.config, tags=list(info.tags)) as run:
            yield _WandbRunHook(run, self.cfg)


def wandb_run_hook(cfg: EntropyAttentionConfig) -> OnRun:
    """The W&B ``on_run`` hook for ``cfg`` (see :class:`WandbRunHook`)."""
    return WandbRunHook(cfg)


def log_summary(results: Results, tables_: Mapping[str, Any], figures: Mapping[str, Any],
                config: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    """The W&B summary run: the tables (``log_table``) and figures."""
    with start_run(family=FAMILY, job_type="summary", name=f"{FAMILY}-summary", config=config or results.config,
                   tags=["summary"]) as run:  # fmt: skip
        for name, df in tables_.items():
            run.log_table(name, df)
        for name, fig in figures.items():
            run.log_image(name, fig)
        run.summary({"stage_seconds": results.seconds, "runs": len(results.all_runs)})
