"""Model-side statistics: prompts -> :class:`~trustlab.error_detection.statistics.GenerationStats`.

This is lm-polygraph's "stat calculator" step, done once per (model, prompt set):

1. **Prompts** (:func:`select_prompts`): per task, ``count`` records drawn without replacement
   from the configured data splits ("sources"), spread evenly over the sources (a short source
   gives its unused share to the others), as a pure function of ``seed`` and the record ids.
2. **Fit / test split** (:func:`split_prompts`): per task, by :func:`statistics.assign_splits`
   applied to a *group key* rather than to the record id, so that records which ask the same
   thing (the same prompt text; for world QA the same person and attribute, whatever the
   paraphrase) always land on the same side. :func:`check_prompt_split` refuses a split in
   which an id, a prompt text or a group occurs on both sides.
3. **Generation** (:func:`collect_stats`): one batched greedy pass with the KV cache
   (``trustlab.lm.generation.generate``) recording per-token log p(y_t), full-vocabulary
   entropy H_t, Var_t = sum_v p log^2 p - H_t^2 and the hidden states of every layer at every
   generated token; then K sampled responses per prompt (temperature / top-p / top-k from the
   config, a local seeded generator) with their per-token log-probabilities.
4. **Answers and labels**: ``trustlab.data.checkers.extract_answer`` gives the answer of every
   greedy and sampled response; the task checker (``is_correct``) labels the greedy response.
   ``is_error = not is_correct``.
5. **Answer span** (:func:`answer_char_span`, :func:`answer_token_mask`): for every checked task
   the checker reads exactly the characters between the first and the last letter/digit of the
   response (it strips surrounding whitespace and punctuation, folds case and, for numbers,
   drops inner spaces), so the answer span is the set of tokens that overlap that character
   range. The final ``<eos>`` and surrounding punctuation are outside it; the ``response`` span
   is every generated token.
6. **Pooling**: hidden states (L+1 layers, layer 0 = embeddings) averaged over the answer-span
   tokens and over the whole response (``GenerationStats.hidden_answer / hidden_response``).

The model is any object that ``generate`` accepts (our GPT, or a Hugging Face model wrapped by
``trustlab.lm.hf_backend.HFCausalLM``) with its tokenizer; nothing here assumes our GPT.
Per-row extras that detectors do not read (the source split, the QA outcome class, the finish
reason) go to ``meta["row_info"]`` keyed by prompt id, so they survive ``subset``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.data.checkers import classify_qa, extract_answer, is_correct
from trustlab.data.tasks import CHECKED_TASKS, load_task, sub_seed, task_splits
from trustlab.error_detection.statistics import GenerationStats, assign_splits, check_disjoint

__all__ = [
    "select_prompts",
    "group_key",
    "split_prompts",
    "check_prompt_split",
    "answer_char_span",
    "token_char_spans",
    "answer_token_mask",
    "pool_hidden",
    "collect_stats",
    "stats_fingerprint",
    "model_files_digest",
    "code_digest",
    "load_or_collect",
    "model_fingerprint",
]


# -- prompts -------------------------------------------------------------------------------------


def _even_shares(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` as evenly as possible over sources of the given sizes (a source never
    gives more than it has; what it cannot give goes to the others, first sources first)."""
    shares = [0] * len(sizes)
    left = min(total, sum(sizes))
    open_ = [i for i, s in enumerate(sizes) if s > 0]
    while left > 0 and open_:
        each, extra = divmod(left, len(open_))
        for rank, i in enumerate(list(open_)):
            want = each + (1 if rank < extra else 0)
            give = min(want, sizes[i] - shares[i])
            shares[i] += give
            left -= give
        open_ = [i for i in open_ if shares[i] < sizes[i]]
    return shares


def select_prompts(
    generated_dir: str | os.PathLike,
    tasks: Mapping[str, int],
    sources: Mapping[str, Sequence[str]],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``tasks[task]`` records per task from the ``sources[task]`` splits of the generated data.

    Each source contributes an even share (see :func:`_even_shares`); within a source the
    records are a seeded sample without replacement, returned in file order. A task with count
    0 is skipped. Raises ``ValueError`` on an unknown task or split, a split listed twice, or a
    record id that occurs twice (ids must be unique across the chosen splits).
    """
    out: list[dict[str, Any]] = []
    for task, count in tasks.items():
        if task not in CHECKED_TASKS:
            raise ValueError(f"unknown task {task!r}; checked tasks are {', '.join(CHECKED_TASKS)}")
        if count <= 0:
            continue
        splits = list(sources.get(task) or [])
        if not splits:
            raise ValueError(f"no source splits for task {task!r}; choose from {', '.join(task_splits(task))}")
        dup = sorted(s for s, c in Counter(splits).items() if c > 1)
        if dup:
            raise ValueError(f"sources of {task!r} list {', '.join(map(repr, dup))} more than once")
        pools = [load_task(generated_dir, task, s) for s in splits]
        shares = _even_shares(int(count), [len(p) for p in pools])
        for split, pool, share in zip(splits, pools, shares):
            gen = np.random.default_rng(sub_seed(seed, "error_detection", "prompts", task, split))
            pick = np.sort(gen.choice(len(pool), size=share, replace=False)) if share else []
            out.extend(dict(pool[int(i)]) for i in pick)
    ids = [r["id"] for r in out]
    dup = sorted(k for k, c in Counter(ids).items() if c > 1)
    if dup:
        raise ValueError(
            f"record ids must be unique across the chosen splits; repeated: {', '.join(map(repr, dup[:10]))}"
        )
    return out


def group_key(record: Mapping[str, Any]) -> str:
    """What must not be split across fit and test: the person and attribute for world QA (the
    same fact asked in another paraphrase), otherwise the prompt text."""
    if record.get("task") == "world_qa" and record.get("person_id") is not None:
        return f"world_qa|{record['person_id']}|{record.get('attribute')}"
    return f"{record.get('task')}|{record['prompt']}"


def split_prompts(records: Sequence[Mapping[str, Any]], fit_fraction: float, seed: int) -> np.ndarray:
    """``"fit"`` / ``"test"`` per record: :func:`assign_splits` over the distinct group keys of
    each task (so about ``fit_fraction`` of each task's *groups* go to fit), mapped back to the
    records. A pure function of the records' ids/keys and ``seed``, not of their order."""
    keys = [group_key(r) for r in records]
    tasks = [str(r["task"]) for r in records]
    uniq: dict[str, str] = {}
    for k, t in zip(keys, tasks):
        uniq.setdefault(k, t)
    gk = sorted(uniq)
    side = dict(zip(gk, assign_splits(gk, [uniq[k] for k in gk], fit_fraction, seed)))
    split = np.array([side[k] for k in keys], dtype="<U4")
    check_prompt_split(records, split)
    return split


def check_prompt_split(records: Sequence[Mapping[str, Any]], split: Sequence[str]) -> None:
    """Raise ``ValueError`` if fit and test share a prompt id, a prompt text or a group key."""
    split = np.asarray(split)
    if len(split) != len(records):
        raise ValueError(f"split has {len(split)} entries for {len(records)} records")
    bad = sorted(set(split.tolist()) - {"fit", "test"})
    if bad:
        raise ValueError(f"split values must be 'fit' or 'test', got {', '.join(map(repr, bad))}")
    fit = [r for r, s in zip(records, split) if s == "fit"]
    test = [r for r, s in zip(records, split) if s == "test"]
    check_disjoint([r["id"] for r in fit], [r["id"] for r in test], what="prompt ids")
    check_disjoint([r["prompt"] for r in fit], [r["prompt"] for r in test], what="prompt texts")
    check_disjoint([group_key(r) for r in fit], [group_key(r) for r in test], what="prompt groups (same fact)")


# -- answer span ---------------------------------------------------------------------------------


def answer_char_span(task: str, text: str) -> tuple[int, int] | None:
    """Characters ``[start, end)`` of ``text`` that the task's checker reads: from the first to
    the last letter or digit (None if there is none). Valid for every checked task: the checkers
    strip surrounding whitespace and punctuation and compare what lies in between."""
    if task not in CHECKED_TASKS:
        raise ValueError(f"unknown task {task!r}; checked tasks are {', '.join(CHECKED_TASKS)}")
    idx = [i for i, ch in enumerate(text) if ch.isalnum()]
    return (idx[0], idx[-1] + 1) if idx else None


class _PieceCache:
    """Decoded text of single token ids (special tokens decode to "")."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.pieces: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        p = self.pieces.get(token_id)
        if p is None:
            p = self.pieces[token_id] = self.tokenizer.decode([int(token_id)], skip_special=True)
        return p


def token_char_spans(
    tokenizer: Any, ids: Sequence[int], pieces: _PieceCache | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` and each token's ``[start, end)`` in it.

    When decoding is concatenation (our tokenizers) the pieces give the offsets directly;
    otherwise (e.g. byte-level BPE) the offsets come from decoding growing prefixes.
    """
    pieces = pieces or _PieceCache(tokenizer)
    text = tokenizer.decode(list(ids), skip_special=True)
    parts = [pieces(i) for i in ids]
    if "".join(parts) == text:
        spans, pos = [], 0
        for p in parts:
            spans.append((pos, pos + len(p)))
            pos += len(p)
        return text, spans
    spans, prev = [], 0
    for t in range(len(ids)):
        cur = len(tokenizer.decode(list(ids[: t + 1]), skip_special=True))
        spans.append((min(prev, cur), cur))
        prev = max(prev, cur)
    return text, spans


def answer_token_mask(
    tokenizer: Any, ids: Sequence[int], task: str, pieces: _PieceCache | None = None
) -> tuple[str, np.ndarray]:
    """``(text, mask)``: mask[t] is True iff token t overlaps :func:`answer_char_span`."""
    text, spans = token_char_spans(tokenizer, ids, pieces)
    region = answer_char_span(task, text)
    mask = np.zeros(len(ids), dtype=bool)
    if region is not None:
        s, e = region
        for t, (a, b) in enumerate(spans):
            mask[t] = a < e and b > s
    return text, mask


def pool_hidden(hidden_tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L+1, T, C) hidden states -> (mean over the masked tokens, mean over all tokens), each
    (L+1, C). An empty mask pools the whole response (as ``GenerationStats.span_masks``)."""
    h = np.asarray(hidden_tokens)
    whole = h.mean(axis=1)
    m = np.asarray(mask, dtype=bool)
    return (h[:, m].mean(axis=1) if m.any() else whole), whole


# -- collection ----------------------------------------------------------------------------------

# collect_stats' decoding defaults; batch_size is part of it because sampled responses depend on
# how prompts are batched (one generator stream per call)
DECODING_DEFAULTS: dict[str, Any] = {
    "k_samples": 16,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": None,
    "max_new_tokens": 32,
    "batch_size": 64,
    "seed": 0,
}


def model_fingerprint(model: Any) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # no numpy dtype; bfloat16 -> float32 is exact
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_files_digest(model_dir: str | os.PathLike | None) -> str | None:
    """sha256 over every file of a model directory (relative path and content), or None when
    there is no directory (a hub model: its weights are covered by :func:`model_fingerprint`)."""
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    from trustlab.core.io import sha256_file

    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


# The code that turns a model's outputs into stored statistics: the model code that produces the
# logits and hidden states (trustlab.lm: tokenizer, GPT, hooks, generation, loading), the labels
# (checkers), answer spans, pooling and storage. A change to any of them invalidates stored statistics.
# prompts per generation shard: part of the statistics (each shard samples with its own seed),
# so it is a constant of this file, whose source is in the statistics' key
SHARD_PROMPTS = 100

STATS_CODE = (
    "trustlab.lm.generation", "trustlab.lm.gpt", "trustlab.lm.tokenizer", "trustlab.lm.hooks",
    "trustlab.lm.checkpoint", "trustlab.lm.loading", "trustlab.lm.model_config", "trustlab.lm.hf_backend",
    "trustlab.data.checkers", "trustlab.error_detection.collect", "trustlab.error_detection.statistics",
)  # fmt: skip


def code_digest(modules: Sequence[str] = STATS_CODE) -> str:
    """sha256 over the source files of ``modules`` (found without importing them, so a module
    with a heavy optional dependency is hashed all the same)."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ModuleNotFoundError(f"code_digest: no source for {name}")
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()


def stats_fingerprint(
    model_sha: str,
    records: Sequence[Mapping[str, Any]],
    split: Sequence[str],
    settings: Mapping[str, Any],
    model_files: str | None = None,
) -> str:
    """Identifies one statistics computation: model weights (and the model directory's files,
    when there is one), prompts, split, decoding settings and the code that computes the
    statistics (:func:`code_digest`)."""
    blob = json.dumps(
        {
            "code": code_digest(),
            "model": model_sha,
            "model_files": model_files,
            "ids": [r["id"] for r in records],
            "prompts": [r["prompt"] for r in records],
            "split": list(map(str, split)),
            "settings": dict(settings),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def collect_stats(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    split: Sequence[str],
    *,
    k_samples: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    model_name: str = "model",
    progress: Callable[[str], None] | None = None,
    workers: int | None = 1,
) -> GenerationStats:
    """Greedy response + ``k_samples`` samples per record, labelled, with pooled hidden states.

    ``meta`` records the model name and fingerprint, the decoding settings, per-row extras
    (``row_info``) and the wall-clock seconds of each phase (``timing``: ``greedy_s`` includes
    recording the hidden states, ``sampling_s`` the K samples, ``postprocess_s`` answer
    extraction, labelling and pooling).

    Generation runs over fixed shards of ``SHARD_PROMPTS`` prompts, spread over ``workers``
    processes: the statistics are the same for any ``workers``.
    """
    if k_samples < 2:
        raise ValueError(f"k_samples = {k_samples} is not allowed: K >= 2 (self-consistency and RPC compare samples)")
    if not records:
        raise ValueError("no prompts: give at least one record")
    split = np.asarray(split)
    check_prompt_split(records, split)
    from trustlab.lm.generation import generate_sharded

    say = progress or (lambda msg: None)
    prompts = [str(r["prompt"]) for r in records]
    tasks = [str(r["task"]) for r in records]
    pieces = _PieceCache(tokenizer)
    settings = dict(k_samples=int(k_samples), temperature=float(temperature), top_p=float(top_p), top_k=top_k,
                    max_new_tokens=int(max_new_tokens), batch_size=int(batch_size), seed=int(seed))  # fmt: skip

    t0 = time.perf_counter()
    shards = dict(shard_prompts=SHARD_PROMPTS, workers=workers)
    greedy = generate_sharded(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False,
                              batch_size=batch_size, return_hidden_states="tokens", **shards)  # fmt: skip
    greedy_s = time.perf_counter() - t0
    say(f"greedy: {len(prompts)} responses in {greedy_s:.1f} s")

    t0 = time.perf_counter()
    samples = generate_sharded(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
        top_p=top_p if top_p < 1.0 else None, top_k=top_k, num_return_sequences=k_samples, seed=seed,
        batch_size=batch_size, **shards,
    )  # fmt: skip
    sampling_s = time.perf_counter() - t0
    say(f"sampling: {len(samples)} responses (K = {k_samples}) in {sampling_s:.1f} s")

    t0 = time.perf_counter()
    n = len(records)
    responses, answers, masks, errors, h_ans, h_resp = [], [], [], [], [], []
    row_info: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        ids = greedy.token_ids[i]
        text, mask = answer_token_mask(tokenizer, ids, tasks[i], pieces)
        responses.append(text)
        answers.append(extract_answer(tasks[i], text))
        masks.append(mask)
        ok = bool(is_correct(dict(rec), text))
        errors.append(not ok)
        a, r = pool_hidden(greedy.hidden_states[i], mask)
        h_ans.append(a)
        h_resp.append(r)
        info = {"source": rec.get("split"), "finish": greedy.finish_reasons[i]}
        if tasks[i] == "world_qa":
            info["qa_class"] = classify_qa(dict(rec), text)
            info["exists"] = bool(rec.get("exists", True))
        row_info[str(rec["id"])] = info
    s_texts = np.empty((n, k_samples), dtype=object)
    s_answers = np.empty((n, k_samples), dtype=object)
    s_lp: list[list[np.ndarray]] = [[None] * k_samples for _ in range(n)]  # type: ignore[list-item]
    s_masks: list[list[np.ndarray]] = [[None] * k_samples for _ in range(n)]  # type: ignore[list-item]
    seen = Counter()
    for j, pi in enumerate(samples.prompt_index):
        k = seen[pi]
        seen[pi] += 1
        text, mask = answer_token_mask(tokenizer, samples.token_ids[j], tasks[pi], pieces)
        s_texts[pi, k] = text
        s_answers[pi, k] = extract_answer(tasks[pi], text)
        s_lp[pi][k] = samples.token_logprobs[j]
        s_masks[pi][k] = mask
    postprocess_s = time.perf_counter() - t0

    meta = {
        "model": model_name,
        "model_sha256": model_fingerprint(model),
        "settings": settings,
        "row_info": row_info,
        "timing": {
            "greedy_s": greedy_s,
            "sampling_s": sampling_s,
            "postprocess_s": postprocess_s,
            "n": n,
            "n_samples": len(samples),
        },
        "tokens": {"greedy": int(sum(map(len, greedy.token_ids))), "samples": int(sum(map(len, samples.token_ids)))},
    }
    return GenerationStats(
        ids=[str(r["id"]) for r in records], task=tasks, split=split, response=responses, answer=answers,
        is_error=np.array(errors, dtype=bool),
        token_logprobs=greedy.token_logprobs, token_entropies=greedy.entropies,
        token_entropy_vars=greedy.entropy_vars, answer_mask=masks,
        sample_texts=s_texts, sample_answers=s_answers, sample_token_logprobs=s_lp, sample_answer_masks=s_masks,
        hidden_answer=np.stack(h_ans).astype(np.float32), hidden_response=np.stack(h_resp).astype(np.float32),
        prompt=prompts, meta=meta,
    )  # fmt: skip


def load_or_collect(
    path: str | os.PathLike,
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    split: Sequence[str],
    *,
    reuse: bool = True,
    model_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> tuple[GenerationStats, bool]:
    """Statistics stored at ``path`` (``.npz`` + ``.json``) when they were computed from the same
    model weights and model files (``model_dir``), prompts, split, settings and statistics code
    (``meta["fingerprint"]``, :func:`stats_fingerprint`), else computed by :func:`collect_stats`
    and saved there. Returns ``(stats, reused)``."""
    settings = {k: kwargs.get(k, v) for k, v in DECODING_DEFAULTS.items()}
    key = stats_fingerprint(model_fingerprint(model), records, split, settings, model_files_digest(model_dir))
    if reuse:
        try:
            old = GenerationStats.load(path)
        except (FileNotFoundError, ValueError, KeyError):
            old = None
        if old is not None and old.meta.get("fingerprint") == key:
            return old, True
    stats = collect_stats(model, tokenizer, records, split, **kwargs)
    stats.meta["fingerprint"] = key
    stats.save(path)
    return stats, False
