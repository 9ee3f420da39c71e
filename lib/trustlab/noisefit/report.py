"""What the stage reports: headline numbers, the claims in words, the findings (every number
from this run's results), the outputs for ``write_outputs`` and the W&B summary run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustlab.core.claims import count_verdicts
from trustlab.noisefit import tables, tuning
from trustlab.noisefit.claims import arm
from trustlab.noisefit.run import FAMILY, Results
from trustlab.noisefit.variants import label
from trustlab.reporting.outputs import StageOutputs
from trustlab.tracking import start_run

HEADLINE_KEYS = ("halluc_qa_heldout", "halluc_nonexistent_test", "em_qa_train", "em_qa_heldout", "s_em_qa_heldout",
                 "abstain_recall", "mc_qa_heldout", "valid_qa_heldout")  # fmt: skip
NEW_FACTS_KEYS = ("halluc_qa_heldout", "em_qa_heldout", "em_new_facts")


def headline(results: Results, claims: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat, readable numbers: ``<variant>/<metric>`` (means over seeds, default setting),
    ``<variant>/new_facts/<metric>``, the number of runs and the claim verdict counts."""
    h: dict[str, Any] = {}
    table = tables.summary_table(results, HEADLINE_KEYS)
    for _, r in table.iterrows():
        for m in HEADLINE_KEYS:
            if m in table.columns and np.isfinite(r[m]):
                h[f"{r.variant}/{tables.readable(m)}"] = float(r[m])
    nf = tables.summary_table(results, NEW_FACTS_KEYS, setting="new_facts")
    for _, r in nf.iterrows():
        if r.variant == "base":
            continue
        for m in NEW_FACTS_KEYS:
            if m in nf.columns and np.isfinite(r[m]):
                h[f"{r.variant}/new_facts/{tables.readable(m)}"] = float(r[m])
    h["runs"] = sum(r["setting"] != "base" for r in results.rows)
    for verdict, n in count_verdicts(claims).items():
        h[f"claims_{verdict.replace(' ', '_')}"] = n
    return h


def arm_label(name: str) -> str:
    """``"sft@new_facts"`` -> ``"SFT [new_facts]"``."""
    variant, setting = arm(name)
    return label(variant) if setting in ("default", "base") else f"{label(variant)} [{setting}]"


def reading(row: dict[str, Any]) -> str:
    """A claim row in words, with the effect in percentage points (the metrics are shares)."""
    if row["verdict"] == "not evaluated":
        return f"not evaluated: {row['reason']}"
    diff = f"{arm_label(row['method'])} - {arm_label(row['baseline'])} = {100 * row['effect']:+.1f} pp"
    what = tables.phrase(row["metric"])
    test = f"p = {row['p_value']:.3g}, {row['test']}"
    if row["ci_low"] is None or row["ci_high"] is None:
        ci = f"no confidence interval, {test}"
    else:
        ci = f"95% CI [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] pp, {test}"
    if row["verdict"] == "supported":
        return f"supported: {diff} on {what} ({ci}), in the expected direction"
    if row["verdict"] == "not supported":
        return f"not supported: the opposite holds here, {diff} on {what} ({ci}); expected a {row['expected']}"
    return (f"inconclusive: {diff} on {what} ({ci}); no difference can be told apart from seed-to-seed "
            f"variation with {row['n']} seeds")  # fmt: skip


def claims_table(claims: list[dict[str, Any]]) -> pd.DataFrame:
    return tables.claims_frame(claims, [reading(r) for r in claims])


def findings(results: Results, claims: list[dict[str, Any]]) -> str:
    """What the numbers of this run show, as markdown bullets (generated from the results, so
    they stay true when the params change)."""
    c = results.config
    t = tables.summary_table(results).set_index("variant") if results.rows else None
    out = [
        f"{sum(r['setting'] != 'base' for r in results.rows)} fine-tuning runs: {len(c['variants'])} variants x "
        f"{len(c['seeds'])} seed(s) of {c['steps']} steps x batch {c['batch_size']}"
        + (f", plus the new-facts setting for {', '.join(c['new_facts_variants'])}" if c["include_new_facts"] else "")
        + f"; k = {c['k']}, {c['noise_scale']} noise convention, alpha = {c['alpha']}, "
        f"lambda = {c['lambda_consistency']}; test metrics on the test people only."
    ]

    def val(v, m):
        return t.loc[v, m] if t is not None and v in t.index and m in t.columns else float("nan")

    if t is not None and "base" in t.index:
        out.append(f"Base model (greedy): exact match {val('base', 'em_qa_train'):.0%} on train people, "
                   f"{val('base', 'em_qa_heldout'):.0%} on held-out people; hallucination "
                   f"{val('base', 'halluc_qa_heldout'):.0%} on held-out and "
                   f"{val('base', 'halluc_nonexistent_test'):.0%} on non-existent people.")  # fmt: skip
    for v in ("sft", "neftune", "rdrop", "noisefit_largest", "noisefit_lowest"):
        if t is not None and v in t.index:
            out.append(f"{label(v)}: hallucination {val(v, 'halluc_qa_heldout'):.1%} (held-out) / "
                       f"{val(v, 'halluc_nonexistent_test'):.1%} (non-existent), exact match held-out "
                       f"{val(v, 'em_qa_heldout'):.1%}, abstention recall {val(v, 'abstain_recall'):.1%}.")  # fmt: skip
    for v in ("noisefit_kl_only", "noisefit_consistency_only"):
        if t is not None and v in t.index:
            out.append(f"{label(v)}: exact match on train people {val(v, 'em_qa_train'):.1%}, "
                       f"well-formed answers on held-out people {val(v, 'valid_qa_heldout'):.1%} (NoiseFiT-Largest "
                       f"{val('noisefit_largest', 'em_qa_train'):.1%} and "
                       f"{val('noisefit_largest', 'valid_qa_heldout'):.1%}).")  # fmt: skip
    out += sweep_findings(results)
    passes = tables.forward_passes_table(results)
    if len(passes):
        d = passes[passes.setting == "default"]
        out.append("Forward passes per training step: " + ", ".join(
            f"{r.label} {r.forward_passes}" for _, r in d.iterrows()) + " (measured step times: timing.json).")  # fmt: skip
    for row in claims:
        out.append(f"{row['claim']}: {reading(row)}.")
    n = count_verdicts(claims)
    out.append(f"Claim verdicts: {n['supported']} supported, {n['not supported']} not supported, "
               f"{n['inconclusive']} inconclusive, {n['not evaluated']} not evaluated.")  # fmt: skip
    return "\n".join(f"- {s}" for s in out)


def non_monotone(values: list[float], drop: float = 0.1) -> bool:
    """True when a curve falls by more than ``drop`` and later recovers by more than ``drop``
    (a collapse at one scale, a recovery at a larger one)."""
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            if values[i] - values[j] > drop and any(values[k] - values[j] > drop for k in range(j + 1, len(values))):
                return True
    return False


def sweep_findings(results: Results) -> list[str]:
    """The sweeps in words: the rule, each grid with its measured noise and validation score,
    the chosen value, and, where a curve collapses then recovers, what changed along it."""
    sweep = tables.sweep_table(results)
    if sweep.empty:
        return ["The noise scales were not tuned (tune: false): every variant ran at its params value."]
    out = [f"Noise-scale tuning: every swept variant gets {len(results.tuning[next(iter(results.tuning))]['grid'])} "
           f"values x {len(results.config['tune_seeds'])} seed(s) on the validation people; rule: {tuning.RULE}."]
    for variant, sub in sweep.groupby("variant", sort=False):
        c = results.tuning[variant]
        points = ", ".join(f"{r.value:g} (noise/act {r.noise_ratio:.3g}, score {r.score:.3f}, train EM "
                           f"{r.em_qa_train:.2f})" for r in sub.itertuples())  # fmt: skip
        none_effect = c["value"] == min(c["grid"])
        out.append(f"{label(variant)} {c['param']}: {points}; chosen {c['value']:g}"
                   + (" — the smallest value, i.e. the rule prefers (almost) no noise" if none_effect else "") + ".")
        em = sub.em_qa_train.tolist()
        if non_monotone(em):
            runs = [r for r in results.sweep if r["variant"] == variant]
            layers = {x: sorted({r.get("selected_layers", "") for r in runs if r["value"] == x}) for x in sub.value}
            per_unit = (sub.noise_ratio / sub.value).round(4).tolist()
            changed = len({tuple(v) for v in layers.values()}) > 1
            out.append(f"{label(variant)}: train exact match collapses and then recovers along the sweep "
                       f"({', '.join(f'{x:.2f}' for x in em)}). Diagnostics: measured noise per unit "
                       f"{c['param']} = {per_unit} (a falling value means the adaptive scale saturates); "
                       f"selected layers {'change' if changed else 'stay the same'} across the grid "
                       f"({'; '.join(f'{k:g}: {v}' for k, v in layers.items())}).")  # fmt: skip
    return out


def stage_outputs(results: Results, claims: list[dict[str, Any]]) -> StageOutputs:
    """Everything ``write_outputs`` writes: metrics.json tables, plot data and timing.json."""
    passes = tables.forward_passes_table(results)
    return StageOutputs(
        stage=FAMILY,
        headline=headline(results, claims),
        claims=claims,
        tables={
            "table": tables.summary_table(results),
            "table_new_facts": tables.summary_table(results, setting="new_facts"),
            "hallucination": tables.hallucination_table(results),
            "forward_passes": passes,
            "sweep": tables.sweep_table(results),
            "tuning": tables.tuning_table(results),
        },
        extra={
            "tuning_rule": tuning.RULE,
            "claims_reading": {r["claim"]: reading(r) for r in claims},
            "exported": dict(results.exported),
            "config": results.config,
        },
        plots={
            "runs": tables.runs_frame(results),
            "curves": tables.curves_frame(results),
            "snr": pd.DataFrame(results.snr),
            "forward_passes": passes,
            "hallucination": tables.hallucination_long(results),
            "claims": claims_table(claims),
            "sweep": tables.sweep_table(results),
        },
        timing={
            "training_seconds": results.seconds,
            "cpu_seconds": results.cpu_seconds,
            "workers": results.workers,
            "cores_used": results.cpu_seconds / results.seconds if results.seconds else float("nan"),
            "sweep_runs": tables.run_seconds(Results(rows=results.sweep)).to_dict(orient="records"),
            "step_time": tables.step_time_table(results).to_dict(orient="records"),
            "runs": tables.run_seconds(results).to_dict(orient="records"),
        },
    )


def log_summary(
    results: Results,
    claims: list[dict[str, Any]],
    figures: dict[str, Any] | None = None,
    *,
    html_path: str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """The W&B summary run of the stage (group ``noisefit``): the results, hallucination,
    step-time, SNR and claims tables, the figures, the headline as summary and the summary page."""
    with start_run(FAMILY, "summary", "noisefit-summary", config or results.config, tags=["summary"]) as run:
        run.log_table("results", tables.summary_table(results, fmt=True))
        run.log_table("results_new_facts", tables.summary_table(results, setting="new_facts", fmt=True))
        run.log_table("hallucination", tables.hallucination_table(results, fmt=True))
        run.log_table("step_time", tables.step_time_table(results))
        run.log_table("claims", claims_table(claims))
        if results.sweep:
            run.log_table("sweep", tables.sweep_table(results))
            run.log_table("tuning", tables.tuning_table(results))
        if results.snr:
            run.log_table("snr", pd.DataFrame(results.snr))
        for name, fig in (figures or {}).items():
            run.log_image(name, fig)
        run.summary(headline(results, claims))
        if html_path is not None and Path(html_path).exists():
            run.log_html("summary_html", html_path)
