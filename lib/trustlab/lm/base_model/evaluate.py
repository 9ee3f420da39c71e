"""Evaluation: greedy generation (``trustlab.lm.generation.generate``) on every task/split (at
most ``max_eval_items`` seeded items each), scored by the task's checker
(``trustlab.data.checkers``).

Per split: ``accuracy = (1/n) Σ_i 1[checker(record_i, response_i)]``, ``error_rate = 1 -
accuracy`` and a 95% Wilson interval; QA responses are also sorted into ``correct | abstain |
hallucination | other`` (``classify_qa``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustlab.data import tasks as T
from trustlab.data.checkers import classify_qa, is_correct
from trustlab.lm.base_model.config import BaseModelConfig
from trustlab.lm.generation import generate

# every (task, split) the checkers can score
EVAL_SPLITS: tuple[tuple[str, str], ...] = tuple(
    (task, split) for task in T.CHECKED_TASKS for split in T.task_splits(task)
)


def wilson_ci(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n:
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` (NaN for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # at k = 0 (k = n) the bound is exactly 0 (1); rounding would leave ~1e-18
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def eval_records(gen_dir: str | os.PathLike, task: str, split: str, max_items: int, seed: int) -> list[dict[str, Any]]:
    """At most ``max_items`` records of a split: a seeded subset in file order."""
    rows = T.load_task(gen_dir, task, split)
    if len(rows) > max_items:
        keep = np.sort(
            np.random.default_rng(T.sub_seed(seed, "eval", task, split)).choice(len(rows), max_items, replace=False)
        )
        rows = [rows[i] for i in keep]
    return rows


@dataclass
class Evaluation:
    summary: list[dict[str, Any]]  # one row per task/split
    items: list[dict[str, Any]]  # one row per evaluated record

    def headline(self) -> dict[str, float]:
        """Flat readable numbers: ``<split>_accuracy`` for QA, ``<task>_<split>_accuracy`` otherwise,
        plus QA hallucination rates and the overall error-rate range."""
        out: dict[str, float] = {}
        for r in self.summary:
            key = r["split"] if r["task"] == "world_qa" else f"{r['task']}_{r['split']}"
            out[f"{key}_accuracy"] = round(r["accuracy"], 4)
            if r["task"] == "world_qa":
                out[f"{key}_hallucination_rate"] = round(r["hallucination"], 4)
        return out


def evaluate(
    model,
    tokenizer,
    gen_dir: str | os.PathLike,
    cfg: BaseModelConfig,
    splits: Sequence[tuple[str, str]] = EVAL_SPLITS,
    trained_splits: Sequence[tuple[str, str]] = (),
) -> Evaluation:
    """Greedy answers on every task/split, scored by the checkers (see the module docstring)."""
    summary, items = [], []
    trained = {tuple(x) for x in trained_splits}
    for task, split in splits:
        records = eval_records(gen_dir, task, split, cfg.max_eval_items, cfg.seed)
        if not records:
            continue
        res = generate(
            model,
            tokenizer,
            [r["prompt"] for r in records],
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            batch_size=cfg.eval_batch_size,
        )
        labels = {k: 0 for k in ("correct", "abstain", "hallucination", "other")}
        n_correct = 0
        for r, text, reason, lp in zip(records, res.texts, res.finish_reasons, res.token_logprobs):
            ok = bool(is_correct(r, text))
            label = classify_qa(r, text) if task == "world_qa" else ("correct" if ok else "wrong")
            if task == "world_qa":
                labels[label] += 1
            n_correct += ok
            items.append(
                {
                    "task": task,
                    "split": split,
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "answer": r["answer"],
                    "response": text,
                    "correct": ok,
                    "label": label,
                    "finish_reason": reason,
                    "mean_logprob": float(np.mean(lp)) if len(lp) else float("nan"),
                }
            )
        n = len(records)
        lo, hi = wilson_ci(n_correct, n)
        row = {
            "task": task,
            "split": split,
            "trained": (task, split) in trained,
            "n": n,
            "accuracy": n_correct / n,
            "error_rate": 1 - n_correct / n,
            "ci_low": lo,
            "ci_high": hi,
        }
        if task == "world_qa":
            row.update({k: v / n for k, v in labels.items()})
        summary.append(row)
    return Evaluation(summary, items)
