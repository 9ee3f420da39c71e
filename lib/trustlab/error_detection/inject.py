"""Injected errors in the style of AEGIS: corrupt responses the model got *right*, score them
by teacher forcing, and ask whether the detectors flag them as they flag natural errors.

Corruptions (one per task, each checked to make the response wrong):

=============  ==================  ===========================================================
task           kind                what changes in the model's own correct response
=============  ==================  ===========================================================
arithmetic     ``wrong_digit``     one digit of the result (``checkers.corrupt_answer``)
world_qa       ``swapped_value``   the attribute value becomes another value of the same closed
                                   set; for a person who does not exist the abstention becomes a
                                   concrete value (a hallucination)
instructions   ``wrong_word_count`` one word dropped or one topic word added (on the response's
                                   own words)
context_copy   ``wrong_variable``  the value of another variable from the prompt (context
                                   unfaithfulness)
=============  ==================  ===========================================================

Only the answer span (:func:`trustlab.error_detection.collect.answer_char_span`) is replaced; the
rest of the response (spacing, punctuation) is kept. Both the original and the corrupted
response are re-encoded and scored with ``trustlab.lm.generation.score_continuations`` (same
positions as generation, ``<eos>`` appended when the original ended with one), so each pair
differs only in the corrupted tokens; hidden states are pooled exactly as for natural responses.

What applies to injected responses
----------------------------------
- Token-level detectors (MSP, perplexity, entropy, zero-shot z) and hidden-state detectors
  (fitted on the *natural* fit split, never on injected rows) apply unchanged: they read the
  teacher-forced statistics of the response under test.
- Sampling-based detectors (self-consistency, RPC) apply only in a *verifier* reading: the K
  samples are the model's own samples for the prompt (they do not depend on the response under
  test), and u measures how little sample mass supports the response's answer. For a natural
  greedy response this is the model's self-agreement; for an injected one it is agreement
  between the model and an external answer, which is a different question (and an easy one: the
  model rarely samples a specific corruption of an answer it gets right). Those rows are marked
  ``mode = "verifier"`` in the tables.
- ``span="response"`` self-consistency compares whole texts, so any edit makes it maximal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustlab.data.checkers import corrupt_answer, extract_answer, is_correct
from trustlab.error_detection.collect import _PieceCache, answer_char_span, answer_token_mask, pool_hidden
from trustlab.error_detection.statistics import GenerationStats

__all__ = ["INJECTION_KINDS", "Injection", "corrupt_response", "make_injections", "score_injected", "INJECTED_SUFFIX"]

INJECTION_KINDS = {
    "arithmetic": "wrong_digit",
    "world_qa": "swapped_value",
    "instructions": "wrong_word_count",
    "context_copy": "wrong_variable",
}
INJECTED_SUFFIX = "#injected"
SAMPLING_DETECTORS = ("self_consistency", "rpc")


@dataclass(frozen=True)
class Injection:
    id: str  # the prompt id
    task: str
    kind: str
    original: str  # the model's correct greedy response
    corrupted: str  # the same response with the answer span corrupted
    corrupted_answer: str


def corrupt_response(record: Mapping[str, Any], response: str, seed: int = 0) -> tuple[str, str] | None:
    """``(corrupted response, kind)`` for a response the checker judges correct, or None when
    the response has no answer span or the corruption would not make it wrong.

    The replacement comes from ``checkers.corrupt_answer``: on the record itself for arithmetic,
    world QA and context copy (the response is correct, so the record's answer is what it
    says), and on the response's own words for instructions (``kind="count"``).
    """
    task = str(record["task"])
    if task not in INJECTION_KINDS:
        raise ValueError(f"no injection for task {task!r}; tasks: {', '.join(INJECTION_KINDS)}")
    region = answer_char_span(task, response)
    if region is None:
        return None
    s, e = region
    if task == "instructions":
        own = dict(record, answer=extract_answer(task, response))
        new = corrupt_answer(own, seed=seed, kind="count")
    else:
        new = corrupt_answer(dict(record), seed=seed)
    corrupted = response[:s] + new + response[e:]
    if is_correct(dict(record), corrupted):
        return None
    return corrupted, INJECTION_KINDS[task]


def make_injections(
    stats: GenerationStats, records_by_id: Mapping[str, Mapping[str, Any]], *, split: str = "test", seed: int = 0
) -> tuple[list[Injection], dict[str, int]]:
    """One injection per correct greedy response in ``split``. Returns the injections and
    counts (``correct``: candidates, ``skipped``: no span or corruption still correct)."""
    rows = np.flatnonzero((stats.split == split) & ~stats.labels())
    out, skipped = [], 0
    for i in rows:
        pid = str(stats.ids[i])
        res = corrupt_response(records_by_id[pid], str(stats.response[i]), seed=seed)
        if res is None:
            skipped += 1
            continue
        text, kind = res
        out.append(Injection(pid, str(stats.task[i]), kind, str(stats.response[i]), text,
                             extract_answer(str(stats.task[i]), text)))  # fmt: skip
    return out, {"correct": int(len(rows)), "injected": len(out), "skipped": skipped}


def score_injected(
    model: Any,
    tokenizer: Any,
    stats: GenerationStats,
    injections: Sequence[Injection],
    *,
    batch_size: int = 64,
) -> GenerationStats:
    """Paired statistics: for every injection a row with the original (correct, id = prompt id)
    and a row with the corrupted response (wrong, id = prompt id + ``#injected``), both scored
    by teacher forcing with hidden states; samples are the prompt's natural samples. All rows
    have split ``"test"``. ``meta["row_info"][id]`` holds ``kind`` and ``pair`` (the prompt id)."""
    from trustlab.lm.generation import score_continuations

    if not injections:
        raise ValueError("no injections to score (no correct test responses?)")
    index = {str(pid): i for i, pid in enumerate(stats.ids)}
    eos = tokenizer.eos_id
    prompts, conts, row_src, ids, texts, labels, tasks, info = [], [], [], [], [], [], [], {}
    for inj in injections:
        i = index[inj.id]
        ends_eos = bool(stats.token_logprobs[i].size) and _ended_with_eos(stats, i)
        for text, wrong in ((inj.original, False), (inj.corrupted, True)):
            rid = inj.id + (INJECTED_SUFFIX if wrong else "")
            prompts.append(str(stats.prompt[i]) if stats.prompt is not None else None)
            conts.append(tokenizer.encode(text) + ([eos] if ends_eos else []))  # the decoded text keeps its spacing
            row_src.append(i)
            ids.append(rid)
            texts.append(text)
            labels.append(wrong)
            tasks.append(inj.task)
            info[rid] = {"kind": inj.kind, "pair": inj.id, "injected": wrong}
    if any(p is None for p in prompts):
        raise ValueError("these statistics have no prompt texts (GenerationStats.prompt is needed to re-score)")
    sc = score_continuations(model, tokenizer, prompts, conts, add_eos=False, batch_size=batch_size,
                             return_hidden_states="tokens")  # fmt: skip
    pieces = _PieceCache(tokenizer)
    masks, h_ans, h_resp, answers = [], [], [], []
    for j, c in enumerate(conts):
        _, mask = answer_token_mask(tokenizer, c, tasks[j], pieces)
        masks.append(mask)
        a, r = pool_hidden(sc.hidden_states[j], mask)
        h_ans.append(a)
        h_resp.append(r)
        answers.append(extract_answer(tasks[j], texts[j]))
    src = np.asarray(row_src)
    take2 = lambda v: None if v is None else [v[k] for k in src]  # noqa: E731
    meta = {"model": stats.meta.get("model"), "injected_from": stats.meta.get("fingerprint"), "row_info": info}
    return GenerationStats(
        ids=ids, task=tasks, split=["test"] * len(ids), response=texts, answer=answers,
        is_error=np.array(labels, dtype=bool), token_logprobs=sc.token_logprobs, token_entropies=sc.entropies,
        token_entropy_vars=sc.entropy_vars, answer_mask=masks,
        sample_texts=stats.sample_texts[src], sample_answers=stats.sample_answers[src],
        sample_token_logprobs=take2(stats.sample_token_logprobs), sample_answer_masks=take2(stats.sample_answer_masks),
        sample_mean_logprobs=None if stats.sample_token_logprobs is not None else stats.sample_mean_logprobs[src],
        sample_sum_logprobs=None if stats.sample_token_logprobs is not None else stats.sample_sum_logprobs[src],
        hidden_answer=np.stack(h_ans).astype(np.float32), hidden_response=np.stack(h_resp).astype(np.float32),
        prompt=[stats.prompt[k] for k in src], meta=meta,
    )  # fmt: skip


def _ended_with_eos(stats: GenerationStats, i: int) -> bool:
    info = stats.meta.get("row_info", {}).get(str(stats.ids[i]), {})
    return info.get("finish", "eos") == "eos"
