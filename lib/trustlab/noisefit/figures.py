"""The stage's figures (matplotlib only here)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from trustlab.noisefit.config import EVAL_SPLITS
from trustlab.noisefit.run import Results
from trustlab.noisefit.tables import SPLIT_NAMES, hallucination_table, step_time_table
from trustlab.noisefit.variants import label


def plot_snr(results: Results, setting: str = "default"):
    """Per-layer SNR (mean ± std over seeds) with the layers each selection picked: marker
    size = the share of seeds that picked the layer."""
    df = pd.DataFrame(results.snr)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if df.empty:
        ax.set_title("per-layer SNR: no NoiseFiT variant was run")
        return fig
    df = df[df.setting == setting]
    base = df.groupby("layer").snr.agg(["mean", "std"]).reset_index()
    ax.bar(base.layer, base["mean"], yerr=base["std"].fillna(0), color="0.75", label="SNR (mean over seeds)")
    top = base.set_index("layer")["mean"]
    for variant, marker, color in (("noisefit_largest", "^", "tab:blue"), ("noisefit_lowest", "v", "tab:red")):
        sub = df[df.variant == variant]
        sel = sub[sub.selected]
        if not sel.empty:
            share = sel.groupby("layer").size() / sub.seed.nunique()
            ax.scatter(share.index, [top[i] * 1.08 for i in share.index], marker=marker, s=80 * share.values,
                       color=color, label=f"{label(variant)} picks", zorder=3)  # fmt: skip
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("SNR = mean|h| / mean|noise|")
    ax.set_xticks(sorted(df.layer.unique()))
    ax.legend(fontsize=8)
    ax.set_title("per-layer SNR and selected layers")
    fig.tight_layout()
    return fig


def plot_curves(results: Results, seed: int | None = None, setting: str = "default"):
    """Loss components over training steps, one panel per component, one line per variant."""
    df = pd.DataFrame(results.curves)
    comps = [c for c in ("ce", "soft", "consistency", "total") if c in df.columns]
    fig, axes = plt.subplots(1, max(len(comps), 1), figsize=(3.2 * max(len(comps), 1), 3), squeeze=False)
    if df.empty:
        return fig
    df = df[df.setting == setting]
    seed = df.seed.min() if seed is None else seed
    df = df[df.seed == seed]
    for ax, comp in zip(axes[0], comps):
        for variant, sub in df.groupby("variant", sort=False):
            if sub[comp].notna().any():
                ax.plot(sub.step, sub[comp], label=label(variant), lw=1)
        ax.set_title(f"noisefit/{comp}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"loss components (seed {seed}, setting {setting})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_hallucination(results: Results, setting: str = "default", prefix: str = ""):
    """Hallucination rate by split and variant (mean ± std over seeds); ``prefix="s_"`` for the
    sampling protocol."""
    table = hallucination_table(results, setting=setting)
    splits = [s for s in EVAL_SPLITS if f"{prefix}halluc_{s}" in table.columns]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table)), 3.4))
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(table))
    for j, s in enumerate(splits):
        ax.bar(x + j * width, table[f"{prefix}halluc_{s}"], width, yerr=table[f"{prefix}halluc_{s}_std"].fillna(0),
               label=SPLIT_NAMES.get(s, s))  # fmt: skip
    ax.set_xticks(x + width * (len(splits) - 1) / 2)
    ax.set_xticklabels(table.label if len(table) else [], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("hallucination rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    protocol = "sampled" if prefix == "s_" else "greedy"
    ax.set_title(f"hallucination rate by split (setting {setting}, {protocol})")
    fig.tight_layout()
    return fig


def plot_step_time(results: Results):
    """Training-step time relative to SFT per variant (mean ± std over seeds), default setting."""
    steps = step_time_table(results)
    fig, ax = plt.subplots(figsize=(6, 3))
    if steps.empty:
        return fig
    d = steps[steps.setting == "default"]
    ax.bar(range(len(d)), d.ratio_to_sft, yerr=d.ratio_to_sft_std.fillna(0), color="tab:gray")
    ax.scatter(range(len(d)), d.forward_passes, marker="_", s=300, color="tab:red", label="forward passes per step")
    ax.set_xticks(range(len(d)))
    ax.set_xticklabels(d.label, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("step time / SFT step time")
    ax.axhline(1, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("training cost relative to SFT (same run)")
    fig.tight_layout()
    return fig


DOSE_PANELS = (("halluc_qa_heldout", "hallucination, held-out people"),
               ("abstain_nonexistent_test", "abstention, non-existent people"),
               ("em_qa_train", "exact match, train people"))  # fmt: skip


def plot_dose_response(results: Results):
    """The sweeps as dose-response curves: x = the measured relative noise at the injection
    point (RMS noise / RMS activation, mean over training), y = validation rates; one line per
    swept variant (mean over the tuning seeds, the seeds as dots), the chosen value ringed."""
    df = pd.DataFrame(results.sweep)
    fig, axes = plt.subplots(1, len(DOSE_PANELS), figsize=(12, 3.4))
    if df.empty:
        axes[0].set_title("no noise-scale sweep was run (tune: false)")
        return fig
    colors = {"noisefit_largest": "tab:blue", "noisefit_lowest": "tab:red", "neftune": "tab:green"}
    for ax, (metric, title) in zip(axes, DOSE_PANELS):
        for variant, sub in df.groupby("variant", sort=False):
            color = colors.get(variant, "tab:gray")
            mean = sub.groupby("value")[["noise_ratio", metric]].mean().sort_index()
            ax.plot(mean.noise_ratio, mean[metric], "-o", color=color, label=label(variant), ms=4)
            ax.scatter(sub.noise_ratio, sub[metric], color=color, alpha=0.3, s=10)
            chosen = results.tuning.get(variant, {}).get("value")
            if chosen in mean.index:
                ax.scatter([mean.noise_ratio[chosen]], [mean[metric][chosen]], s=140, facecolors="none",
                           edgecolors=color, linewidths=1.5)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("RMS(noise) / RMS(activation) at the injection point")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("rate (validation people)")
    axes[0].legend(fontsize=8)
    fig.suptitle("noise dose-response (sweeps; ringed = chosen by the validation rule)", fontsize=10)
    fig.tight_layout()
    return fig
