"""The 01_base_model report's figures (matplotlib lives here only): the training curve,
accuracy per task/split, and the world-QA outcomes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from trustlab.lm.base_model.tables import TARGET_ERROR_RANGE


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_curve(curve: Sequence[Mapping[str, float]], window: int | None = None):
    steps = [r["step"] for r in curve]
    loss = [r["loss"] for r in curve]
    window = window or max(1, len(curve) // 50)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="per step")
    ax.plot(steps, smooth(loss, window), color="tab:blue", lw=1.8, label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / trained token)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Pretraining loss")
    ax2.plot(steps, [r["lr"] for r in curve], color="tab:gray")
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate")
    ax2.set_title("Schedule: linear warmup, cosine decay")
    fig.tight_layout()
    return fig


def plot_accuracy(summary, target: tuple[float, float] = TARGET_ERROR_RANGE):
    """Accuracy per task/split with the 95% Wilson interval; trained splits hatched; the band
    is the accuracy range that gives the target error rates."""
    labels = [f"{t}/{s}" for t, s in zip(summary.task, summary.split)]
    acc = summary.accuracy.to_numpy()
    err = np.clip(np.vstack([acc - summary.ci_low.to_numpy(), summary.ci_high.to_numpy() - acc]), 0.0, None)
    colors = {
        "world_qa": "tab:blue",
        "arithmetic": "tab:orange",
        "instructions": "tab:green",
        "context_copy": "tab:purple",
    }
    fig, ax = plt.subplots(figsize=(9, 4.2))
    bars = ax.barh(labels, acc, xerr=err, color=[colors.get(t, "tab:gray") for t in summary.task], capsize=3)
    for b, trained in zip(bars, summary.trained):
        if trained:
            b.set_hatch("//")
    ax.axvspan(1 - target[1], 1 - target[0], color="k", alpha=0.07, label=f"error rate {target[0]:.0%}-{target[1]:.0%}")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (greedy, checker), 95% Wilson CI; hatched = split trained on")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_qa_outcomes(summary):
    """World-QA responses per split: correct / abstain / hallucination / other."""
    qa = summary[summary.task == "world_qa"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    left = np.zeros(len(qa))
    for label, color in (
        ("correct", "tab:green"),
        ("abstain", "tab:blue"),
        ("hallucination", "tab:red"),
        ("other", "tab:gray"),
    ):
        vals = qa[label].to_numpy()
        ax.barh(qa.split, vals, left=left, color=color, label=label)
        left += vals
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of responses (non-existent people: correct = abstains)")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    return fig
