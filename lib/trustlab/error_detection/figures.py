"""The stage's figures (matplotlib only here). Each ``plot_*`` takes a table from
:mod:`trustlab.error_detection.tables` and returns a figure, or None when there is nothing to
draw (the notebook says why next to it)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from trustlab.error_detection.run import SHORT


def plot_error_rates(err_table):
    t = err_table[(err_table.source != "all") | (err_table.task == "all")]
    fig, ax = plt.subplots(figsize=(7, 3))
    labels = [f"{r.task}/{r.source}" if r.source != "all" else "all" for _, r in t.iterrows()]
    ax.bar(range(len(t)), t.error_rate, color="tab:red", alpha=0.7)
    ax.set_xticks(range(len(t)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("error rate (greedy)")
    ax.set_title("error rate per task and source", fontsize=9)
    fig.tight_layout()
    return fig


def plot_detector_auroc(table, task: str = "all"):
    """AUROC with 95% CIs per detector, one bar per span."""
    t = table[(table.task == task) & (table.status == "ok")]
    if not len(t):
        return None
    spans = list(dict.fromkeys(t.span))
    names = list(dict.fromkeys(t.detector))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    w = 0.8 / len(spans)
    for j, span in enumerate(spans):
        ts = t[t.span == span].set_index("detector").reindex(names)
        x = np.arange(len(names)) + j * w
        y = ts.auroc.to_numpy(float)
        err = np.abs(np.vstack([y - ts.auroc_lo.to_numpy(float), ts.auroc_hi.to_numpy(float) - y]))
        ax.bar(x, y, w, yerr=np.nan_to_num(err), capsize=2, label=f"span = {span}")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)) + w * (len(spans) - 1) / 2, [SHORT.get(n, n) for n in names], rotation=35,
                  ha="right", fontsize=7)  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("test AUROC")
    ax.legend(fontsize=7)
    ax.set_title(f"detector AUROC ({task}); dashed = chance", fontsize=9)
    fig.tight_layout()
    return fig


def plot_task_auroc(by_task):
    """The headline view: AUROC averaged over tasks (bars), each task's AUROC (dots) and, as a
    secondary marker, the AUROC pooled over all test responses (x), one group per detector."""
    if by_task is None or not len(by_task) or "auroc_macro" not in by_task or by_task.auroc_macro.isna().all():
        return None
    t = by_task.sort_values("auroc_macro", ascending=False)
    tasks = [c.split("/", 1)[1] for c in t.columns if c.startswith("auroc/")]
    x = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(x, t.auroc_macro.to_numpy(float), 0.6, color="0.8", label="mean over tasks")
    for j, task in enumerate(tasks):
        ax.plot(x + (j - (len(tasks) - 1) / 2) * 0.1, t[f"auroc/{task}"].to_numpy(float), "o", ms=4, label=task)
    ax.plot(x, t["auroc_pooled (secondary)"].to_numpy(float), "kx", ms=5, label="pooled (secondary)")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [SHORT.get(n, n) for n in t.detector], rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test AUROC")
    ax.legend(fontsize=6, ncol=3)
    ax.set_title("AUROC per task and averaged over tasks; dashed = chance", fontsize=9)
    fig.tight_layout()
    return fig


def plot_roc_pr(roc, pr, base_rate: float):
    if not len(roc):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for key, g in roc.groupby("detector", sort=False):
        axes[0].plot(g.fpr, g.tpr, label=key, lw=1.2)
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    for key, g in pr.groupby("detector", sort=False):
        axes[1].plot(g.recall, g.precision, label=key, lw=1.2)
    axes[1].axhline(base_rate, color="k", ls="--", lw=0.8, label=f"base rate {base_rate:.2f}")
    axes[1].set(xlabel="recall (errors)", ylabel="precision", title="precision-recall (test)", ylim=(0, 1.02))
    for ax in axes:
        ax.legend(fontsize=6)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def plot_rejection(rej):
    if not len(rej):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, g in rej.groupby("detector", sort=False):
        style = {"oracle": dict(color="k", ls=":"), "random": dict(color="k", ls="--")}.get(key, {})
        ax.plot(g.rejection_rate, g.accuracy_kept, label=key, lw=1.2, **style)
    ax.set(xlabel="fraction rejected (most uncertain first)", ylabel="accuracy of kept responses",
           title="prediction-rejection curves (test)")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_per_layer(layer_table):
    t = layer_table.dropna(subset=["layer"]) if len(layer_table) else layer_table
    if not len(t):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for (method, span), g in t.groupby(["method", "span"], sort=False):
        ax.plot(g.layer, g.auroc, marker="o", label=f"{SHORT.get(method, method)} ({span})")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set(xlabel="layer (0 = embeddings)", ylabel="test AUROC", title="which layer knows best")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_injected(inj_table, span: str):
    if inj_table is None or not len(inj_table):
        return None
    t = inj_table[inj_table.span == span]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(t))
    for off, col, lab in ((-0.2, "natural_auroc", "natural errors"), (0.2, "injected_auroc", "injected errors")):
        y = t[col].to_numpy(float)
        err = np.abs(np.vstack([y - t[col + "_lo"].to_numpy(float), t[col + "_hi"].to_numpy(float) - y]))
        ax.bar(x + off, y, 0.4, yerr=np.nan_to_num(err), capsize=2, label=lab)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f"{r.label}{' (verifier)' if r.mode == 'verifier' else ''}" for _, r in t.iterrows()],
                  rotation=35, ha="right", fontsize=7)  # fmt: skip
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("AUROC")
    ax.legend(fontsize=7)
    ax.set_title(f"natural vs injected errors (span = {span})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_models(model_tab):
    if model_tab is None or not len(model_tab) or model_tab.model.nunique() < 2:
        return None
    t = model_tab[model_tab.status == "ok"]
    models = list(dict.fromkeys(t.model))
    names = list(dict.fromkeys(t.detector))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    w = 0.8 / len(models)
    for ax, metric in zip(axes, ("auroc", "prr")):
        for j, m in enumerate(models):
            tm = t[t.model == m].set_index("detector").reindex(names)
            y = tm[metric].to_numpy(float)
            err = np.abs(np.vstack([y - tm[metric + "_lo"].to_numpy(float), tm[metric + "_hi"].to_numpy(float) - y]))
            ax.bar(
                np.arange(len(names)) + j * w,
                y,
                w,
                yerr=np.nan_to_num(err),
                capsize=2,
                label=f"{m} (error rate {tm.error_rate.dropna().iloc[0]:.2f})" if tm.error_rate.notna().any() else m,
            )
        ax.set_xticks(np.arange(len(names)) + w * (len(models) - 1) / 2, [SHORT.get(n, n) for n in names], rotation=35,
                      ha="right", fontsize=7)  # fmt: skip
        ax.axhline(0.5 if metric == "auroc" else 0.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"test {metric.upper()} per model", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_cost(cost, span: str):
    t = cost[(cost.span == span) & (cost.status == "ok")].sort_values("total_s_per_1k")
    if not len(t):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(t.label, t.model_s_per_1k, label="generation")
    ax.barh(t.label, t.total_s_per_1k - t.model_s_per_1k, left=t.model_s_per_1k, label="fit + score")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per 1000 responses (log)")
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title(f"cost per detector (span = {span})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_cache_growth(growth):
    """Exact-step accuracy on the rest of the natural test stream vs test trajectories already
    diagnosed into the cache: the schema cache (solid) beside the localisers without a cache
    (dashed), each on the same remaining trajectories."""
    if growth is None or not len(growth) or "exact" not in growth:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, t in growth.groupby("localiser", sort=False):
        t = t.sort_values("added")
        online = bool(t.online.iloc[0])
        ax.plot(t.added, t.exact, marker="o", ms=3, ls="-" if online else "--", lw=2 if online else 1,
                label=t.label.iloc[0])  # fmt: skip
    ax.set_xlabel("test trajectories already added to the cache")
    ax.set_ylabel("exact-step accuracy (rest of stream)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("schema cache growth (natural errors)", fontsize=9)
    fig.tight_layout()
    return fig


# -- narrative ------------------------------------------------------------------------------------

