"""Every metric of one model on the evaluation items (greedy, the paper's sampling protocol,
multiple choice).

* greedy decoding: exact match (``em_<split>``), hallucination rate (``halluc_<split>``: real
  people -> a concrete wrong value; non-existent people -> anything but the abstention),
  abstention rate, the share of well-formed answers (``valid_<split>``), and abstention
  precision / recall over held-out + non-existent people;
* the paper's sampling protocol (5 samples, T = 0.5, top-p 0.9, top-k 40, repetition penalty
  1.2) on ``decoding.sample_splits``: mean exact match / hallucination over samples
  (``s_em_*``, ``s_halluc_*``) and sample agreement (``agree_*``: mean over prompts of the
  share of the modal answer among the samples);
* multiple choice by log-likelihood (the TruthfulQA-MC analogue): the true value against the
  record's same-attribute distractors (``mc_<split>``); for non-existent people, whether the
  abstention outscores every concrete option (``mc_abstain_nonexistent_test``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from trustlab.data.checkers import classify_qa, normalize
from trustlab.lm.generation import generate, score_continuations
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.world import World


def classify(text: str, record: dict[str, Any]) -> str:
    """The shared checker's label: ``correct | abstain | hallucination | other``; for a
    non-existent person ``correct`` means it abstained."""
    return classify_qa(record, text)


def abstained(label: str, record: dict[str, Any]) -> bool:
    return label == "abstain" or (not record.get("exists", True) and label == "correct")


def is_hallucination(label: str, record: dict[str, Any]) -> bool:
    """Real person: asserts a concrete wrong value of the asked attribute. Non-existent
    person: anything but the abstention."""
    if record.get("exists", True):
        return label == "hallucination"
    return label != "correct"


def evaluate(
    model, tokenizer, items: dict[str, list[dict]], world: World, cfg: NoiseFitConfig, seed: int = 0
) -> dict[str, float]:
    """Every metric of one model on the evaluation items -> a flat dict (see the module doc)."""
    dec = cfg.decoding
    out: dict[str, float] = {}
    greedy_outcomes: dict[str, list[tuple[str, dict]]] = {}
    for split, rows in items.items():
        if not rows:
            continue
        prompts = [r["prompt"] for r in rows]
        if dec.greedy:
            g = generate(model, tokenizer, prompts, max_new_tokens=dec.max_new_tokens, batch_size=dec.batch_size)
            outcomes = [classify(t, r) for t, r in zip(g.texts, rows)]
            greedy_outcomes[split] = list(zip(outcomes, rows))
            rates(out, "", split, outcomes, rows)
        if dec.n_samples > 0 and split in dec.sample_splits:
            out.update(sampled_metrics(model, tokenizer, split, rows, cfg, seed))
        out.update(multiple_choice(model, tokenizer, split, rows, world, dec.batch_size))
    if "qa_heldout" in greedy_outcomes and "nonexistent_test" in greedy_outcomes:
        p, r = abstention_pr(greedy_outcomes["qa_heldout"], greedy_outcomes["nonexistent_test"])
        out["abstain_precision"], out["abstain_recall"] = p, r
    return out


def sampled_metrics(model, tokenizer, split: str, rows: Sequence[dict], cfg: NoiseFitConfig, seed: int) -> dict:
    """The paper's sampling protocol on one split: ``s_em``, ``s_halluc``, ``s_abstain``, ``agree``."""
    dec = cfg.decoding
    s = generate(
        model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=dec.max_new_tokens, do_sample=True,
        temperature=dec.temperature, top_p=dec.top_p, top_k=dec.top_k,
        repetition_penalty=dec.repetition_penalty, num_return_sequences=dec.n_samples,
        seed=int(seed), batch_size=dec.batch_size,
    )  # fmt: skip
    n = dec.n_samples
    out: dict[str, float] = {}
    outcomes = [classify(t, rows[pi]) for t, pi in zip(s.texts, s.prompt_index)]
    rates(out, "s_", split, outcomes, [rows[pi] for pi in s.prompt_index])
    agree = []
    for i in range(len(rows)):
        answers = [normalize(t) for t in s.texts[i * n : (i + 1) * n]]
        agree.append(Counter(answers).most_common(1)[0][1] / n)
    out[f"agree_{split}"] = float(np.mean(agree))
    return out


def rates(out: dict, prefix: str, split: str, labels: Sequence[str], rows: Sequence[dict]) -> None:
    """Exact match (real people), hallucination and abstention rates of ``labels`` into ``out``;
    for greedy decoding (no ``prefix``) also the malformed (``other``) and well-formed shares."""
    n = max(len(labels), 1)
    exists = rows[0].get("exists", True) if rows else True
    if exists:
        out[f"{prefix}em_{split}"] = sum(lab == "correct" for lab in labels) / n
    out[f"{prefix}halluc_{split}"] = sum(is_hallucination(lab, r) for lab, r in zip(labels, rows)) / n
    out[f"{prefix}abstain_{split}"] = sum(abstained(lab, r) for lab, r in zip(labels, rows)) / n
    if not prefix:
        other = sum(lab == "other" for lab in labels) / n
        out[f"other_{split}"] = other
        # a well-formed answer is a value of the asked attribute or the abstention; a collapsed
        # model (KL-only / consistency-only training) produces neither
        out[f"valid_{split}"] = 1.0 - other


def abstention_pr(real: Sequence[tuple[str, dict]], nonexistent: Sequence[tuple[str, dict]]) -> tuple[float, float]:
    """Abstention as a detector of "this person does not exist", over (label, record) pairs of
    held-out real people and non-existent people: precision = right abstentions / all
    abstentions (nan if none), recall = right abstentions / non-existent people."""
    tp = sum(abstained(lab, r) for lab, r in nonexistent)
    fp = sum(abstained(lab, r) for lab, r in real)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / len(nonexistent) if nonexistent else float("nan")
    return precision, recall


def multiple_choice(
    model, tokenizer, split: str, rows: Sequence[dict], world: World, batch_size: int = 128
) -> dict[str, float]:
    """Log-likelihood multiple choice over each record's ``choices``. Real people: the true value
    vs the same-attribute distractors (the abstention option left out) -> ``mc_<split>``.
    Non-existent people: the abstention vs every concrete option -> ``mc_abstain_<split>``."""
    prompts, conts, owner = [], [], []
    for i, r in enumerate(rows):
        choices = r.get("choices") or []
        if r.get("exists", True):
            choices = [c for c in choices if c != world.abstain]
        for c in choices:
            prompts.append(r["prompt"])
            conts.append(c)
            owner.append(i)
    if not prompts:
        return {}
    scores = score_continuations(model, tokenizer, prompts, conts, batch_size=batch_size).sum_logprobs
    best: dict[int, tuple[float, str]] = {}
    for i, c, s in zip(owner, conts, scores):
        if i not in best or s > best[i][0]:
            best[i] = (float(s), c)
    target = [(r["value"] if r.get("exists", True) else world.abstain) for r in rows]
    acc = float(np.mean([best[i][1] == target[i] for i in best]))
    key = f"mc_{split}" if rows[0].get("exists", True) else f"mc_abstain_{split}"
    return {key: acc}
