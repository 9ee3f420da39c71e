"""The calibration family's figures (matplotlib only here).

Reliability diagrams (Guo et al. 2017) from binned data, the reliability grid of one loss,
ECE against shift severity, each loss's validation NLL over its tuning grid, and the language
model's answer-level reliability diagrams.
Every ``plot_*`` function returns a Figure and draws nothing but what its inputs hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from trustlab.calibration.metrics import N_BINS, calibration_bins
from trustlab.calibration.tables import LABELS, VARIANT_LABELS, bins_for

__all__ = [
    "plot_ece_vs_severity",
    "plot_lm_reliability",
    "plot_reliability_grid",
    "plot_tuning_sweep",
    "reliability_diagram",
    "reliability_diagram_from_bins",
]


def reliability_diagram_from_bins(bins: dict[str, np.ndarray], ax=None, title: str | None = None, show_counts=True):
    """Plot :func:`calibration_bins` output: accuracy bars per confidence bin, the gap to the
    diagonal shaded, and (optionally) the share of samples per bin underneath. Returns the Figure."""
    if ax is None:
        if show_counts:
            fig, (ax, ax_c) = plt.subplots(
                2, 1, figsize=(4, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
            )
        else:
            fig, ax = plt.subplots(figsize=(4, 4), constrained_layout=True)
            ax_c = None
    else:
        fig, ax_c = ax.figure, None
    lo, hi = np.asarray(bins["lo"]), np.asarray(bins["hi"])
    width = hi - lo
    centers = (lo + hi) / 2
    acc = np.nan_to_num(np.asarray(bins["acc"], float))
    conf = np.asarray(bins["conf"], float)
    count = np.asarray(bins["count"], float)
    filled = count > 0
    ax.bar(centers[filled], acc[filled], width=width[filled], edgecolor="black", color="tab:blue", label="accuracy")
    gap_lo = np.minimum(acc, conf)[filled]
    ax.bar(centers[filled], np.abs(acc - conf)[filled], bottom=gap_lo, width=width[filled], color="tab:red",
           alpha=0.3, edgecolor="tab:red", hatch="//", label="gap")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    n = count.sum()
    e = float(np.nansum(np.abs(acc - np.nan_to_num(conf)) * count) / n) if n else 0.0
    ax.text(0.03, 0.92, f"ECE = {100 * e:.2f}%", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    if ax_c is not None:
        ax_c.bar(centers, count / max(n, 1), width=width, color="grey", edgecolor="black")
        ax_c.set_ylabel("share")
        ax_c.set_xlabel("confidence")
    else:
        ax.set_xlabel("confidence")
    return fig


def reliability_diagram(probs: Any, labels: Any, n_bins: int = N_BINS, ax=None, title: str | None = None,
                        show_counts: bool = True):
    """Reliability diagram (Guo et al. 2017) of top-label confidence; returns the matplotlib Figure."""
    return reliability_diagram_from_bins(calibration_bins(probs, labels, n_bins), ax=ax, title=title,
                                         show_counts=show_counts)


def plot_ece_vs_severity(sev: pd.DataFrame, variants: Sequence[str] = ("raw", "ts", "ca"), metric: str = "ece"):
    """One panel per variant, one line per loss: ``metric`` (mean over seeds and shift kinds)
    against severity (0 = clean), with ±1 std bands."""
    variants = [v for v in variants if v in set(sev["variant"])]
    losses = list(dict.fromkeys(sev["loss"]))
    cmap = plt.get_cmap("tab20" if len(losses) > 10 else "tab10")
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.6), sharey=True, squeeze=False,
                             layout="constrained")  # fmt: skip
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
                          splits: Sequence[str] = ("id", "shift")):  # fmt: skip
    """Reliability diagrams of one loss (first seed): rows = test split (clean / shifted,
    pooled over every shift and severity), columns = raw, +TS, +CA."""
    present = set(zip(bins["variant"], bins["split"])) if not bins.empty else set()
    variants = [v for v in variants if any((v, s) in present for s in splits)]
    splits = [s for s in splits if any((v, s) in present for v in variants)]
    fig, axes = plt.subplots(len(splits), len(variants), figsize=(3.6 * len(variants), 3.5 * len(splits)),
                             squeeze=False, layout="constrained")  # fmt: skip
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


def plot_lm_reliability(res: Any):
    """Reliability diagrams of the answer-level confidence, pooled test items of the first split
    seed: raw and each temperature-scaling objective."""
    methods = list(dict.fromkeys(res.bins["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.8 * len(methods), 3.7), squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], methods):
        b = res.bins[res.bins["method"] == m].sort_values("bin")
        t = float(b["temperature"].iloc[0])
        reliability_diagram_from_bins({k: b[k].to_numpy(float) for k in ("lo", "hi", "count", "acc", "conf")}, ax=ax,
                                      title=f"LM {m} (T = {t:.2f})")  # fmt: skip
        ax.set_xlabel("answer confidence (sequence probability)")
    return fig


def plot_tuning_sweep(sweep: pd.DataFrame, score: str = "val_nll", ncols: int = 4):
    """One panel per loss: ``score`` (validation NLL, mean over the tuning seeds) at each
    candidate of its grid, one line per dataset, the chosen value ringed. The x axis is the
    grid position (every loss has the same number of trials) labelled with the values, since
    the knobs live on different scales. ``sweep``: :func:`.tables.tuning_sweep_table`."""
    losses = list(dict.fromkeys(sweep["loss"]))
    datasets = list(dict.fromkeys(sweep["dataset"]))
    nrows = max(1, -(-len(losses) // ncols))
    cols = min(ncols, max(1, len(losses)))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.1 * cols, 2.5 * nrows), squeeze=False, layout="constrained")
    colors = {ds: plt.get_cmap("tab10")(i) for i, ds in enumerate(datasets)}
    for ax, loss in zip(axes.flat, losses):
        d = sweep[sweep["loss"] == loss]
        labels: list[str] = []
        for ds in datasets:
            g = d[d["dataset"] == ds]
            if g.empty:
                continue
            x = np.arange(len(g))
            labels = labels if len(labels) >= len(g) else [f"{v:g}" for v in g["candidate"]]
            ax.plot(x, g[score], marker="o", ms=3, color=colors[ds], label=ds)
            chosen = g["chosen"].to_numpy(bool)
            ax.plot(x[chosen], g[score].to_numpy(float)[chosen], "o", ms=9, mfc="none", mec=colors[ds], mew=1.5)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize="small")
        ax.set_title(f"{loss}: {d['knob'].iloc[0]}", fontsize="small")
    for ax in list(axes.flat)[len(losses):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(f"validation {LABELS.get(score.removeprefix('val_'), score)}")
    axes.flat[0].legend(fontsize="x-small")
    return fig
