"""The stage's tables (pandas) for the notebook, ``metrics.json`` and the plot data.

Rows follow the variant table's order, the base model first; values are mean ± std
(sample std, ddof=1) over seeds. Wall times and their ratios appear only in :func:`step_time_table`
and :func:`run_seconds` (for ``timing.json`` and the notebook); every other table is free of them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from trustlab.core.stats import mean_std
from trustlab.noisefit.config import EVAL_SPLITS
from trustlab.noisefit.run import TIMING_COLUMNS, Results
from trustlab.noisefit.tuning import score, source
from trustlab.noisefit.variants import VARIANTS, get_variant
from trustlab.noisefit.world import SETTINGS

HEADLINE_METRICS = (
    "em_qa_train", "em_qa_heldout", "halluc_qa_heldout", "halluc_nonexistent_test",
    "abstain_precision", "abstain_recall", "mc_qa_heldout", "mc_abstain_nonexistent_test", "valid_qa_heldout",
    "s_em_qa_heldout", "s_halluc_qa_heldout", "s_halluc_nonexistent_test", "agree_qa_heldout",
)  # fmt: skip

# readable names (headline keys, table headers) of the metric keys of evaluate()
METRIC_NAMES = {
    "em_qa_train": "exact_match_train",
    "em_qa_heldout": "exact_match_heldout",
    "em_new_facts": "exact_match_new_facts",
    "halluc_qa_train": "hallucination_train",
    "halluc_qa_heldout": "hallucination_heldout",
    "halluc_new_facts": "hallucination_new_facts",
    "halluc_nonexistent_test": "hallucination_nonexistent",
    "abstain_precision": "abstention_precision",
    "abstain_recall": "abstention_recall",
    "mc_qa_heldout": "mc_accuracy_heldout",
    "mc_abstain_nonexistent_test": "mc_abstains_nonexistent",
    "s_em_qa_heldout": "sampled_exact_match_heldout",
    "s_halluc_qa_heldout": "sampled_hallucination_heldout",
    "s_halluc_nonexistent_test": "sampled_hallucination_nonexistent",
    "agree_qa_heldout": "sample_agreement_heldout",
    "valid_qa_heldout": "well_formed_heldout",
    "step_ratio": "step_time_vs_sft",
}
SPLIT_NAMES = {
    "qa_train": "train people",
    "qa_heldout": "held-out people",
    "new_facts": "new-facts people",
    "nonexistent_test": "non-existent people",
}


def readable(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def phrase(metric: str) -> str:
    """``"s_halluc_qa_heldout"`` -> ``"hallucination rate on held-out people (sampled)"``."""
    sampled = metric.startswith("s_")
    m = metric[2:] if sampled else metric
    kinds = (("halluc_", "hallucination rate"), ("em_", "exact match"), ("mc_", "multiple-choice accuracy"),
             ("valid_", "well-formed answer rate"))  # fmt: skip
    for prefix, what in kinds:
        split = m[len(prefix) :]
        if m.startswith(prefix) and split in SPLIT_NAMES:
            return f"{what} on {SPLIT_NAMES[split]}" + (" (sampled)" if sampled else "")
    return readable(metric).replace("_", " ")


def results_frame(results: Results) -> pd.DataFrame:
    return pd.DataFrame(results.rows)


def runs_frame(results: Results) -> pd.DataFrame:
    """One row per run (plot data): every metric, the step-time ratio, no wall times."""
    return results_frame(results).drop(columns=list(TIMING_COLUMNS), errors="ignore")


def curves_frame(results: Results) -> pd.DataFrame:
    """The training curves (plot data) without the per-step wall time."""
    return pd.DataFrame(results.curves).drop(columns=["step_time"], errors="ignore")


def variant_order(variants) -> list[str]:
    present = set(variants)
    return [v for v in ["base", *VARIANTS] if v in present]


def summary_table(
    results: Results, metrics: Sequence[str] = HEADLINE_METRICS, setting: str = "default", fmt: bool = False
) -> pd.DataFrame:
    """Mean ± std over seeds per variant, the base model first; ``fmt`` gives ``"mean ± std"``."""
    df = results_frame(results)
    if df.empty:
        return pd.DataFrame()
    df = df[df.setting.isin([setting, "base"])]
    metrics = [m for m in metrics if m in df.columns]
    out = []
    for variant in variant_order(df.variant):
        sub = df[df.variant == variant]
        row: dict[str, Any] = {"variant": variant, "label": sub.label.iloc[0], "n_seeds": len(sub)}
        for m in metrics:
            vals = sub[m].astype(float).dropna().to_numpy()
            mu, sd = mean_std(vals) if len(vals) else (float("nan"), float("nan"))
            if fmt:
                row[m] = f"{mu:.3f} ± {sd:.3f}" if np.isfinite(mu) else "n/a"
            else:
                row[m], row[f"{m}_std"] = mu, sd
        out.append(row)
    return pd.DataFrame(out)


def hallucination_table(results: Results, setting: str = "default", fmt: bool = False, sampled: bool = True):
    """Hallucination rate per variant and evaluation split, greedy and (``sampled``) the
    sampling protocol. Columns ``halluc_<split>`` / ``s_halluc_<split>``."""
    metrics = [f"halluc_{s}" for s in EVAL_SPLITS]
    if sampled:
        metrics += [f"s_halluc_{s}" for s in EVAL_SPLITS]
    return summary_table(results, metrics, setting, fmt)


def hallucination_column(name: str) -> str:
    """``"s_halluc_qa_heldout"`` -> ``"sampled: held-out people"`` (table headers)."""
    for prefix, protocol in (("s_halluc_", "sampled"), ("halluc_", "greedy")):
        if name.startswith(prefix):
            split = name[len(prefix) :]
            std = split.endswith("_std")
            split = split[:-4] if std else split
            return f"{protocol}: {SPLIT_NAMES.get(split, split)}" + (" (std)" if std else "")
    return name


def hallucination_long(results: Results) -> pd.DataFrame:
    """Long form for the plot CSV: setting, variant, split, protocol, mean, std, n_seeds."""
    rows = []
    for setting in SETTINGS:
        t = hallucination_table(results, setting)
        for _, r in t.iterrows():
            if setting != "default" and r.variant == "base":
                continue
            for split in EVAL_SPLITS:
                for prefix, protocol in (("", "greedy"), ("s_", "sampled")):
                    key = f"{prefix}halluc_{split}"
                    if key in t.columns and np.isfinite(r[key]):
                        rows.append({"setting": setting, "variant": r.variant, "label": r.label, "split": split,
                                     "protocol": protocol, "mean": r[key], "std": r[f"{key}_std"],
                                     "n_seeds": r.n_seeds})  # fmt: skip
    return pd.DataFrame(rows)


def _forward_passes(variant: str) -> int:
    from trustlab.noisefit.objectives import forward_passes  # torch: only when there are runs

    return forward_passes(get_variant(variant))


def forward_passes_table(results: Results) -> pd.DataFrame:
    """Per (setting, variant): the forward passes its objective makes per training step (the
    deterministic side of the training cost; the measured step times are in ``timing.json``)."""
    df = results_frame(results)
    if df.empty:
        return pd.DataFrame()
    g = df[df.setting != "base"].groupby(["setting", "variant"], sort=False)
    return pd.DataFrame({"label": g.label.first(), "forward_passes": g.variant.first().map(_forward_passes),
                         "n_seeds": g.seed.nunique()}).reset_index()  # fmt: skip


def step_time_table(results: Results) -> pd.DataFrame:
    """Per (setting, variant): the forward passes per step, the median step time in ms and
    relative to SFT's (same seed and setting, same process), mean ± std over seeds, and the
    training seconds. Wall times: this table goes to ``timing.json`` and the notebook only."""
    df = results_frame(results)
    if df.empty or "step_ratio" not in df.columns:
        return pd.DataFrame()
    g = df[df.setting != "base"].groupby(["setting", "variant"], sort=False)
    return pd.DataFrame(
        {
            "label": g.label.first(),
            "forward_passes": g.variant.first().map(_forward_passes),
            "ratio_to_sft": g.step_ratio.mean(),
            "ratio_to_sft_std": g.step_ratio.std(),
            "ms_per_step": g.step_time.mean() * 1e3,
            "ms_per_step_std": g.step_time.std() * 1e3,
            "train_s": g.train_s.mean(),
            "n_seeds": g.seed.nunique(),
        }
    ).reset_index()


def run_seconds(results: Results) -> pd.DataFrame:
    """Per run: training and evaluation seconds and the median step time (``timing.json``)."""
    df = results_frame(results)
    cols = [c for c in ("setting", "variant", "seed", *TIMING_COLUMNS) if c in df.columns]
    return df[cols] if not df.empty else pd.DataFrame()


def snr_table(results: Results, setting: str = "default") -> pd.DataFrame:
    """Per-layer SNR of the base model, once per seed. The SNR is measured before any update
    with the seed's noise draws, so every noise-injecting variant of a seed sees the same
    numbers: they are folded into one row that lists those variants."""
    df = pd.DataFrame(results.snr)
    if df.empty:
        return pd.DataFrame()
    df = df[df.setting == setting]
    wide = df.pivot_table(index=["seed", "variant"], columns="layer", values="snr", sort=False)
    rows = []
    for (seed, variant), values in wide.iterrows():
        key = (seed, tuple(np.round(values.to_numpy(float), 12)))
        match = next((r for r in rows if r["_key"] == key), None)
        if match is None:
            rows.append({"_key": key, "seed": seed, "variants": [variant],
                         **{f"layer {layer}": v for layer, v in values.items()}})  # fmt: skip
        else:
            match["variants"].append(variant)
    out = pd.DataFrame(rows).drop(columns="_key")
    out["variants"] = out.variants.map(", ".join)
    return out.sort_values("seed", kind="stable").reset_index(drop=True)


def selected_layers_table(results: Results, setting: str = "default") -> pd.DataFrame:
    """The layers each noise-injecting variant selected, one column per seed."""
    df = pd.DataFrame(results.snr)
    if df.empty:
        return pd.DataFrame()
    df = df[(df.setting == setting) & df.selected]
    picked = df.groupby(["variant", "seed"], sort=False).layer.apply(lambda s: " ".join(map(str, sorted(s))))
    table = picked.unstack("seed")
    table.columns = [f"seed {s}" for s in table.columns]
    return table.reindex(variant_order(table.index)).reset_index()


def claims_frame(rows: Sequence[dict[str, Any]], readings: Sequence[str] | None = None) -> pd.DataFrame:
    """The claims rows of the engine as a table, with the verdict in words when given."""
    frame = pd.DataFrame(list(rows))
    if readings is not None:
        frame["reading"] = list(readings)
    return frame


# -- the noise-scale sweeps (validation people) -------------------------------------------------
SWEEP_METRICS = ("noise_ratio", "halluc_qa_heldout", "halluc_nonexistent_test", "abstain_nonexistent_test",
                 "em_qa_train", "em_qa_heldout", "valid_qa_heldout")  # fmt: skip


def sweep_table(results: Results) -> pd.DataFrame:
    """One row per (swept variant, value): mean over the tuning seeds of the measured relative
    noise (RMS noise / RMS activation), the validation rates, the rule's score and which value
    was chosen."""
    df = pd.DataFrame(results.sweep)
    if df.empty:
        return pd.DataFrame()
    df = df.assign(score=[score(r) for r in results.sweep])
    metrics = [m for m in (*SWEEP_METRICS, "score") if m in df.columns]
    out = df.groupby(["variant", "param", "value"], sort=False)[metrics].mean().reset_index()
    out.insert(1, "label", [get_variant(v).label for v in out.variant])
    out.insert(4, "n_seeds", df.groupby(["variant", "param", "value"], sort=False).size().to_numpy())
    out["chosen"] = [results.tuning.get(v, {}).get("value") == x for v, x in zip(out.variant, out.value)]
    return out


def tuning_table(results: Results) -> pd.DataFrame:
    """The chosen value of every swept variant, its validation score, and the variants that use it."""
    used = [v for v in dict.fromkeys(r["variant"] for r in results.rows) if v != "base"]
    rows = []
    for variant, c in results.tuning.items():
        rows.append({"variant": variant, "label": get_variant(variant).label, "param": c["param"],
                     "chosen": c["value"], "validation_score": c["score"], "trials": len(c["grid"]),
                     "grid": " ".join(f"{x:g}" for x in c["grid"]),
                     "used_by": ", ".join(v for v in used if source(v) == variant)})  # fmt: skip
    return pd.DataFrame(rows)
