"""The stage's figures (matplotlib only here). Every ``plot_*`` returns a figure, or None when
the run has nothing to draw (no regularised or temperature variant)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

from trustlab.entropy_attention.results import Results, RunResult
from trustlab.entropy_attention.tables import (
    BIN_LABELS,
    heatmap_frame,
    history_frame,
    learned_frames,
    order_variants,
    validation_curve_frame,
)


def _heat(ax, data, title, vmin=None, vmax=None, cmap="viridis", xlabel="head", ylabel="layer", norm=None):
    if norm is not None:
        vmin = vmax = None
    im = ax.imshow(np.asarray(data, float), aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest", norm=norm)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(False)
    rows, cols = np.asarray(data).shape
    if cols <= 16:
        ax.set_xticks(range(cols))
    if rows <= 16:
        ax.set_yticks(range(rows))
    return im


def _grid(n: int, ncols: int = 4, size=(2.6, 2.2)):
    ncols = min(ncols, max(n, 1))
    nrows = math.ceil(max(n, 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_run_heatmaps(r: RunResult):
    """One run's layer x head entropy, raw and normalised (for its W&B run)."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    im = _heat(axes[0], r.entropy, f"{r.variant} seed {r.seed}: entropy (nats)", 0, r.max_uniform)
    fig.colorbar(im, ax=axes[0])
    im = _heat(axes[1], r.entropy_norm, "normalised by uniform-causal max", 0, 1)
    fig.colorbar(im, ax=axes[1])
    fig.tight_layout()
    return fig


def plot_run_learned(r: RunResult):
    panels = [k for k in ("theta", "temperature") if r.learned.get(k) is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 2.8), squeeze=False)
    for ax, k in zip(axes[0], panels):
        data = np.asarray(r.learned[k], float)
        if k == "temperature":
            data = data.reshape(-1, data.shape[-1])  # (L*H, T)
            im = _heat(ax, data, "temperature t (rows: layer x head)", xlabel="position", ylabel="layer*H + head")
        else:
            im = _heat(ax, data, "learned theta")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_perplexity(ppl_table):
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(ppl_table)), 3.4))
    x = np.arange(len(ppl_table))
    ax.bar(x, ppl_table.ppl_mean, yerr=ppl_table.ppl_std, capsize=3, color="tab:blue", alpha=0.8)
    for i, (m, d) in enumerate(zip(ppl_table.ppl_mean, ppl_table.seeds_diverged)):
        if d:
            ax.annotate(f"{d} diverged", (i, 0 if not np.isfinite(m) else m), ha="center", va="bottom", fontsize=7, color="red")
    ax.set_xticks(x, ppl_table.variant, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("validation perplexity (bytes)")
    finite = ppl_table.ppl_mean[np.isfinite(ppl_table.ppl_mean)]
    if len(finite):
        ax.set_ylim(0.95 * finite.min() - 0.05, None)
    ax.set_title("Validation perplexity per variant (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def plot_heatmaps(results: Results, *, normalised: bool):
    """Layer x head entropy per variant (mean over seeds)."""
    df = heatmap_frame(results)
    variants = order_variants(df, results.config["variants"])
    fig, axes = _grid(len(variants))
    key = "entropy_norm" if normalised else "entropy"
    vmax = 1.0 if normalised else float(np.nanmax([r.max_uniform for r in results.runs]))
    im = None
    for ax, v in zip(axes, variants):
        m = df[df.variant == v].groupby(["layer", "head"])[key].mean().unstack("head")
        im = _heat(ax, m.values, v, 0, vmax)
    if im is not None:
        fig.colorbar(im, ax=axes[: len(variants)], shrink=0.8,
                     label="entropy / uniform-causal max" if normalised else "entropy (nats)")
    fig.suptitle(("Normalised" if normalised else "Raw") + " attention entropy per head (validation windows, mean over seeds)", fontsize=10)
    return fig


def plot_entropy_curves(results: Results, *, normalised: bool = True):
    """Per-layer mean entropy of the probe batch over training (mean over seeds)."""
    df = history_frame(results)
    variants = order_variants(df, results.config["variants"])
    fig, axes = _grid(len(variants), size=(2.8, 2.2))
    key = "entropy_norm" if normalised else "entropy"
    for ax, v in zip(axes, variants):
        d = df[df.variant == v].groupby(["layer", "step"])[key].mean()
        for l in sorted(set(d.index.get_level_values(0))):
            s = d.loc[l]
            ax.plot(s.index, s.values, label=f"layer {l}")
        ax.set_title(v, fontsize=8)
        ax.set_ylim(0, 1.05 if normalised else None)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("step", fontsize=7)
    axes[0].legend(fontsize=6)
    fig.suptitle("Per-layer attention entropy over training" + (" (normalised)" if normalised else " (nats)"), fontsize=10)
    return fig


def plot_head_bins(bin_table):
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(bin_table))
    bottom = np.zeros(len(bin_table))
    colors = ["#2c7bb6", "#abd9e9", "#fdae61", "#d7191c"]
    for lab, c in zip(BIN_LABELS, colors):
        vals = bin_table[f"bin_{lab}"].to_numpy(float)
        axes[0].bar(x, vals, bottom=bottom, color=c, label=lab)
        bottom += vals
    axes[0].set_xticks(x, bin_table.variant, rotation=40, ha="right", fontsize=8)
    axes[0].set_ylabel("fraction of heads")
    axes[0].set_title("Heads per quartile of normalised entropy")
    axes[0].legend(fontsize=7, title="bin", title_fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    w = 0.4
    axes[1].bar(x - w / 2, bin_table.overloaded, w, label="overloaded (> 0.95 max)", color="#d7191c")
    axes[1].bar(x + w / 2, bin_table.collapsed, w, label="collapsed (< 0.1 nats)", color="#2c7bb6")
    axes[1].set_xticks(x, bin_table.variant, rotation=40, ha="right", fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Overloaded and collapsed heads")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_gamma_sweep(sweep_df):
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    g = sweep_df.groupby("gamma")
    for ax, key, label in zip(axes, ("val_ppl", "top_bin", "early_norm_entropy"),
                              ("validation perplexity", "top-bin fraction", "early-layer normalised entropy")):
        m, s = g[key].mean(), g[key].std(ddof=1).fillna(0)
        ax.errorbar(m.index, m.values, yerr=s.values, marker="o", capsize=3)
        ax.scatter(sweep_df.gamma, sweep_df[key], s=10, color="gray", alpha=0.6)
        ax.set_xlabel("gamma (tolerance / Emax)")
        ax.set_title(label, fontsize=9)
    fig.suptitle("Gamma sweep", fontsize=10)
    fig.tight_layout()
    return fig


def plot_validation_curves(results: Results, fraction: float = 0.2):
    """Validation perplexity of the probe batch (tuning windows) over training, one line per
    variant (mean over seeds, the seeds faint); the shaded band is the last ``fraction`` of the
    steps, where the flatness is measured."""
    df = validation_curve_frame(results)
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    last = float(df.step.max())
    ax.axvspan((1 - fraction) * last, last, color="0.9", label=f"last {fraction:.0%} of steps")
    for i, v in enumerate(order_variants(df, results.config["variants"])):
        d = df[df.variant == v]
        color = f"C{i % 10}"
        for _, g in d.groupby("seed"):
            ax.plot(g.step, g.val_ppl, color=color, alpha=0.2, lw=0.8)
        m = d.groupby("step").val_ppl.mean()
        ax.plot(m.index, m.values, color=color, label=v)
    finite = df.val_ppl[np.isfinite(df.val_ppl)]
    if len(finite):
        ax.set_ylim(0.95 * finite.min(), min(finite.max(), 2.5 * finite.min()))
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity (bytes)")
    ax.set_title("Validation perplexity over training (tuning windows)", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_lam_sweep(sweep_df):
    """Dose-response of the regularizer: lambda against the tuning perplexity and the share of
    overloaded heads (mean ± std over tuning seeds, each seed grey); the chosen lambda is ringed.
    Lambda is on a symmetric-log axis so that 0 (regularizer off) is drawn."""
    if sweep_df is None or sweep_df.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    g = sweep_df.groupby("lam")
    positive = sweep_df.lam[sweep_df.lam > 0]
    chosen = sweep_df[sweep_df.chosen].lam.unique()
    panels = (("tune_ppl", "validation perplexity (tuning windows)"),
              ("tune_overloaded", "share of overloaded heads (all layers)"))  # fmt: skip
    for ax, (key, label) in zip(axes, panels):
        m, sd = g[key].mean(), g[key].std(ddof=1).fillna(0)
        ax.errorbar(m.index, m.values, yerr=sd.values, marker="o", capsize=3)
        ax.scatter(sweep_df.lam, sweep_df[key], s=10, color="gray", alpha=0.6)
        for lam in chosen:
            ax.scatter([lam], [m.loc[lam]], s=120, facecolors="none", edgecolors="red", label="chosen")
        if len(positive):
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_xlabel("lambda")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("Entropy regularizer: lambda sweep (chosen on the tuning windows)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_theta(results: Results):
    """Learned theta (layer x head, mean over seeds) of every regularised variant at the
    configured gamma."""
    theta, _ = learned_frames(results)
    if theta.empty:
        return None
    theta = theta[theta.gamma == results.config["gamma"]]
    variants = [v for v in results.config["variants"] if v in set(theta.variant)]
    fig, axes = _grid(len(variants), ncols=3, size=(3.0, 2.4))
    for ax, v in zip(axes, variants):
        m = theta[theta.variant == v].groupby(["layer", "head"]).theta.mean().unstack("head")
        im = _heat(ax, m.values, f"theta: {v}", cmap="magma")
        ax.figure.colorbar(im, ax=ax)
    fig.suptitle(f"Learned entropy thresholds theta (init {results.config['theta_init']})", fontsize=10)
    return fig


def plot_temperature(results: Results):
    """Learned temperatures (head x position per layer, mean over seeds) of every SM(t) variant."""
    _, temp = learned_frames(results)
    if temp.empty:
        return None
    variants = [v for v in results.config["variants"] if v in set(temp.variant)]
    L = int(temp.layer.max()) + 1
    fig, axes = plt.subplots(len(variants), L, figsize=(2.8 * L, 1.6 + 1.6 * len(variants)), squeeze=False, layout="constrained")
    lo, hi = float(temp.temperature.min()), float(temp.temperature.max())
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 1.0 - 1e-3), vmax=max(hi, 1.0 + 1e-3))  # white = identity
    im = None
    for i, v in enumerate(variants):
        d = temp[temp.variant == v]
        for l in range(L):
            m = d[d.layer == l].pivot(index="head", columns="position", values="temperature")
            im = _heat(axes[i, l], m.values, f"{v} L{l}", cmap="coolwarm", xlabel="position", ylabel="head", norm=norm)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="temperature t")
    fig.suptitle("Learned attention temperatures (init 1)", fontsize=10)
    return fig
