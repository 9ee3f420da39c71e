"""The 01_base_model report's tables, read from a saved model directory: the evaluation
summary, the error-rate range check, where the model is wrong, sample responses, and a
regeneration check of the saved weights."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from trustlab.data import tasks as T
from trustlab.data.checkers import _words, extract_answer, on_topic_fraction
from trustlab.lm.base_model.config import BaseModelConfig
from trustlab.lm.generation import generate

# the share of wrong answers the error-detection family needs (docs/methods/error_detection.md):
# too low leaves few errors to detect, too high few correct answers
TARGET_ERROR_RANGE = (0.3, 0.6)


def summary_frame(metrics: Mapping[str, Any]):
    """The per task/split evaluation table of a model's ``metrics.json`` as a DataFrame."""
    df = pd.DataFrame(metrics["eval"])
    order = ["task", "split", "trained", "n", "accuracy", "ci_low", "ci_high", "error_rate"]
    extra = [c for c in ("correct", "abstain", "hallucination", "other") if c in df]
    return df[order + extra]


def error_range_table(summary, lo: float = TARGET_ERROR_RANGE[0], hi: float = TARGET_ERROR_RANGE[1]):
    """Per task/split: the error rate and whether it lies in ``[lo, hi]`` (the range the
    error-detection family needs) — too low leaves few errors to detect, too high few correct."""
    df = summary[["task", "split", "trained", "n", "error_rate"]].copy()
    df["in_target_range"] = (df.error_rate >= lo) & (df.error_rate <= hi)
    df["note"] = [
        "in range" if ok else ("too few errors" if e < lo else "too few correct answers")
        for ok, e in zip(df.in_target_range, df.error_rate)
    ]
    return df


def _join_records(items: Sequence[Mapping[str, Any]], gen_dir: str | os.PathLike) -> list[dict[str, Any]]:
    cache: dict[tuple[str, str], dict[str, dict]] = {}
    out = []
    for it in items:
        key = (it["task"], it["split"])
        if key not in cache:
            cache[key] = {r["id"]: r for r in T.load_task(gen_dir, *key)}
        out.append({**cache[key][it["id"]], **it})
    return out


def error_breakdown(items: Sequence[Mapping[str, Any]], gen_dir: str | os.PathLike) -> dict[str, Any]:
    """Where the model is wrong, joined with the data records:

    * ``world_qa``: accuracy and hallucination share per split × attribute;
    * ``arithmetic``: accuracy per split × operation × operand digits;
    * ``context_copy``: accuracy per split × number of variables, and how often a wrong
      answer is another variable's value from the prompt (a copy from the wrong place);
    * ``instructions``: accuracy per split × requested words, and the failure kind
      (wrong word count / off-topic word / both).
    """
    rows = _join_records(items, gen_dir)
    out: dict[str, Any] = {}
    qa = [r for r in rows if r["task"] == "world_qa"]
    if qa:
        df = pd.DataFrame(
            {
                "split": r["split"],
                "attribute": r["attribute"],
                "correct": r["correct"],
                "hallucination": r["label"] == "hallucination",
            }
            for r in qa
        )
        out["world_qa"] = (
            df.groupby(["split", "attribute"], sort=False)
            .agg(n=("correct", "size"), accuracy=("correct", "mean"), hallucination=("hallucination", "mean"))
            .reset_index()
        )
    ar = [r for r in rows if r["task"] == "arithmetic"]
    if ar:
        df = pd.DataFrame(
            {
                "split": r["split"],
                "op": r["op"],
                "digits": f"{r['digits'][0]}x{r['digits'][1]}",
                "correct": r["correct"],
            }
            for r in ar
        )
        out["arithmetic"] = (
            df.groupby(["split", "op", "digits"], sort=True)
            .agg(n=("correct", "size"), accuracy=("correct", "mean"))
            .reset_index()
        )
    cc = [r for r in rows if r["task"] == "context_copy"]
    if cc:

        def wrong_var(r):
            got = extract_answer("context_copy", r["response"])
            return (not r["correct"]) and got in {str(v) for k, v in r["vars"].items() if k != r["query"]}

        df = pd.DataFrame(
            {"split": r["split"], "n_vars": r["n_vars"], "correct": r["correct"], "other_variable": wrong_var(r)}
            for r in cc
        )
        out["context_copy"] = (
            df.groupby(["split", "n_vars"])
            .agg(n=("correct", "size"), accuracy=("correct", "mean"), copied_other_variable=("other_variable", "mean"))
            .reset_index()
        )
    ins = [r for r in rows if r["task"] == "instructions"]
    if ins:

        def kind(r):
            if r["correct"]:
                return "correct"
            count_ok = len(_words(r["response"])) == int(r["n_words"])
            topic_ok = on_topic_fraction(r, r["response"]) >= 1.0 - 1e-12
            return "wrong count" if topic_ok else ("off topic" if count_ok else "wrong count and off topic")

        df = pd.DataFrame(
            {"split": r["split"], "n_words": r["n_words"], "correct": r["correct"], "kind": kind(r)} for r in ins
        )
        out["instructions"] = (
            df.groupby(["split", "n_words"]).agg(n=("correct", "size"), accuracy=("correct", "mean")).reset_index()
        )
        out["instructions_failures"] = df.groupby(["split", "kind"]).size().rename("n").reset_index()
    return out


def sample_table(items: Sequence[Mapping[str, Any]], per_split: int = 2):
    """Up to ``per_split`` correct and ``per_split`` wrong responses of every task/split (in
    evaluation order, so the same rows every time)."""
    rows, seen = [], {}
    for it in items:
        key = (it["task"], it["split"], bool(it["correct"]))
        if seen.get(key, 0) >= per_split:
            continue
        seen[key] = seen.get(key, 0) + 1
        rows.append({k: it[k] for k in ("task", "split", "prompt", "answer", "response", "correct", "label")})
    return pd.DataFrame(rows).sort_values(["task", "split", "correct"], kind="stable").reset_index(drop=True)


def regeneration_check(model, tokenizer, items: Sequence[Mapping[str, Any]], cfg: BaseModelConfig, per_split: int = 4):
    """Generate again, from the *saved* model, the first ``per_split`` prompts of every
    task/split and compare with the responses recorded by the stage (greedy decoding is
    deterministic, so every row should match). ``cfg`` must be the config the model was
    trained and evaluated with (``BaseModelConfig.from_dict(metrics["config"])``)."""
    picked, seen = [], {}
    for it in items:
        key = (it["task"], it["split"])
        if seen.get(key, 0) < per_split:
            seen[key] = seen.get(key, 0) + 1
            picked.append(it)
    res = generate(
        model,
        tokenizer,
        [it["prompt"] for it in picked],
        max_new_tokens=cfg.max_new_tokens,
        do_sample=False,
        batch_size=cfg.eval_batch_size,
    )
    return pd.DataFrame(
        {
            "task": it["task"],
            "split": it["split"],
            "prompt": it["prompt"],
            "recorded": it["response"],
            "now": text,
            "same": it["response"] == text,
        }
        for it, text in zip(picked, res.texts)
    )
