"""The 01_base_model report: headline numbers, findings written from this model's numbers,
the :class:`~trustlab.reporting.outputs.StageOutputs` for ``write_outputs``, and the W&B run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trustlab.core.io import read_json
from trustlab.lm.base_model.config import BaseModelConfig
from trustlab.lm.base_model.stage import TIMING_FILE
from trustlab.lm.base_model.tables import TARGET_ERROR_RANGE, error_range_table
from trustlab.reporting.outputs import StageOutputs
from trustlab.tracking import start_run

REPORT_STAGE = "01_base_model"
PRETRAIN_STAGE = "base_model"  # the stage that trains the model; its timing.json sits in reports/base_model
# wall-time numbers a model directory written by an older version still carries in its headline
TIMING_KEYS = ("train_seconds", "stage_seconds", "tokens_per_s")


def pretraining_timing(reports_dir: str | os.PathLike) -> dict[str, Any]:
    """The pretraining stage's ``timing.json``, looked up next to this report's folder
    (``reports/base_model`` beside ``reports/01_base_model``); empty when there is none."""
    path = Path(reports_dir).parent / PRETRAIN_STAGE / TIMING_FILE
    return read_json(path) if path.exists() else {}


def report_headline(metrics: Mapping[str, Any], summary) -> dict[str, Any]:
    """The notebook's headline: the model's headline (wall times left out) plus the
    error-range verdicts."""
    h = {k: v for k, v in metrics["headline"].items() if k not in TIMING_KEYS}
    rng = error_range_table(summary)
    h["splits_in_target_error_range"] = int(rng.in_target_range.sum())
    h["target_error_range_splits"] = ", ".join(
        f"{t}/{s}" for t, s in zip(rng.task[rng.in_target_range], rng.split[rng.in_target_range])
    )
    return h


def findings(summary, metrics: Mapping[str, Any]) -> str:
    """A few sentences generated from the numbers (no hand-written results)."""
    get = {(r.task, r.split): r for r in summary.itertuples()}
    lines = []

    def acc(task, split):
        r = get.get((task, split))
        return None if r is None else r

    tr, ho, nf = acc("world_qa", "qa_train"), acc("world_qa", "qa_heldout"), acc("world_qa", "new_facts")
    if tr is not None and ho is not None:
        lines.append(
            f"- QA exact match: **{tr.accuracy:.1%}** on `qa_train` (trained) and "
            f"**{ho.accuracy:.1%}** on `qa_heldout` "
            f"(95% CI {ho.ci_low:.1%}-{ho.ci_high:.1%}), whose questions were never trained: knowledge read from the "
            "biographies alone"
            + (
                " is extracted."
                if ho.accuracy > (nf.accuracy if nf is not None else 0) + 0.1
                else " is barely extracted at this budget."
            )
        )
    if nf is not None:
        lines.append(
            f"- `new_facts` people (never seen): {nf.accuracy:.1%} correct, "
            f"{nf.hallucination:.1%} hallucinated values — "
            "what guessing from the closed sets gives."
        )
    for split in ("nonexistent_test", "nonexistent_train"):
        r = acc("world_qa", split)
        if r is not None:
            lines.append(
                f"- `{split}`: abstains on {r.accuracy:.1%}, names a concrete value on {r.hallucination:.1%} "
                "(the base model was not taught to abstain: this is the hallucination baseline)."
                if metrics.get("config", {}).get("mix", {}).get("nonexistent_train", 0) == 0
                else f"- `{split}`: abstains on {r.accuracy:.1%}, hallucinates on {r.hallucination:.1%}."
            )
            break
    rng = error_range_table(summary)
    inside = [
        f"{t}/{s} ({e:.0%})" for t, s, e, ok in zip(rng.task, rng.split, rng.error_rate, rng.in_target_range) if ok
    ]
    lines.append(
        f"- Error rate within {TARGET_ERROR_RANGE[0]:.0%}-{TARGET_ERROR_RANGE[1]:.0%} on: "
        + (", ".join(inside) if inside else "**no split** (the error-detection family will flag this)")
        + "."
    )
    for task in ("arithmetic", "instructions", "context_copy"):
        rows = summary[summary.task == task]
        if len(rows):
            lines.append(f"- {task}: " + ", ".join(f"{s} {a:.1%}" for s, a in zip(rows.split, rows.accuracy)) + ".")
    return "\n".join(lines)


def stage_outputs(
    metrics: Mapping[str, Any],
    summary: pd.DataFrame,
    error_range: pd.DataFrame,
    curve: Sequence[Mapping[str, float]],
    model_config: Mapping[str, Any],
    pretraining: Mapping[str, Any],
) -> StageOutputs:
    """What the report writes: the headline, the evaluation, error-range and mix tables, the
    model's identity, plot data, and the pretraining's wall times (``timing.json`` only)."""
    old_headline = metrics["headline"]  # a model directory from an older version kept its times here
    timing = {
        "pretraining_seconds": pretraining.get("stage_seconds", old_headline.get("stage_seconds")),
        "train_seconds": pretraining.get("train_seconds", old_headline.get("train_seconds")),
        "tokens_per_s": pretraining.get("tokens_per_s", old_headline.get("tokens_per_s")),
    }
    # utilisation and the training share of the matmul peak (newer timing.json files only)
    for key in ("cpu_seconds", "cores", "train_threads", "train_flops_per_token", "matmul_peak_flops",
                "train_share_of_peak", "matmul_peak_flops_1thread", "train_share_of_1thread_peak"):  # fmt: skip
        if key in pretraining:
            timing[f"pretraining_{key}"] = pretraining[key]
    if "machine" in pretraining:
        timing["pretraining_machine"] = pretraining["machine"]
    return StageOutputs(
        stage=REPORT_STAGE,
        headline=report_headline(metrics, summary),
        tables={"eval": metrics["eval"], "error_range": error_range, "mix": metrics["mix"]},
        extra={
            "model": {
                "config": dict(model_config),
                "data_fingerprint": metrics.get("data_fingerprint"),
                "config_digest": metrics.get("config_digest"),
            }
        },
        plots={
            "loss_curve": [{k: r[k] for k in ("step", "loss", "lr")} for r in curve],
            "accuracy": summary,
        },
        timing=timing,
    )


def log_run(
    cfg: BaseModelConfig,
    profile: str,
    curve: Sequence[Mapping[str, float]],
    headline: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    figures: Mapping[str, Any],
) -> None:
    """The W&B run of the report: the training curve (at most ~500 points), the headline as
    summary, every table and figure."""
    with start_run(family="base_model", job_type="report", name=f"base-seed{cfg.seed}",
                   config={**cfg.to_dict(), "profile": profile}) as run:  # fmt: skip
        for r in curve[:: max(1, len(curve) // 500)]:
            run.log({"train/loss": r["loss"], "train/lr": r["lr"]}, step=int(r["step"]))
        run.summary(dict(headline))
        for name, df in tables.items():
            run.log_table(name, df)
        for name, fig in figures.items():
            run.log_image(name, fig)
