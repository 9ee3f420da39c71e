"""Answer-level calibration of a causal language model, before and after temperature scaling.

Beyond the papers' image classifiers: for each question (world QA, arithmetic, ...) the model
answers greedily; the **confidence** of an answer is its sequence probability

    c_i(T) = prod_t softmax(z_it / T)[y_it] = exp(s_i(T)),   s_i(T) = sum_t log softmax(z_it / T)[y_it]

where y_it are the greedy answer's tokens (the final ``<eos>`` included when the model produced
it: the answer is "these tokens, then stop") and z_it the logits that predicted them. T = 1 is
the raw model. Correctness k_i in {0, 1} comes from the task's checker
(:func:`trustlab.data.checkers.is_correct`). Dividing every token's logits by one T > 0 keeps
each step's argmax, so the greedy answer -- and the accuracy -- never change; only the
confidence does.

Fitting T (LBFGS on log T, from T = 1, on the validation items):

* ``"correctness"`` (the default, primary objective): the Bernoulli negative log-likelihood of
  correctness under the answer-level confidence,
  ``L(T) = -(1/N) sum_i [k_i log c_i(T) + (1 - k_i) log(1 - c_i(T))]``. It is a proper scoring
  rule for exactly the event whose calibration we report (the answer is right), so it is
  the answer-level analogue of temperature scaling's validation NLL (Guo et al. 2017).
* ``"gold_nll"``: classic token-level temperature scaling, the mean NLL of the *reference*
  answer's tokens (teacher forced, ``<eos>`` included),
  ``L(T) = -(1/M) sum_{i,t} log softmax(g_it / T)[a_it]``. It calibrates next-token
  probabilities, which is not the same event as "the greedy answer is right".

The tempting third choice, the NLL of the *greedy* tokens, is degenerate: every greedy token
is its step's argmax, so ``log softmax(z / T)[argmax]`` increases to 0 as T -> 0 and the
minimiser is T -> 0 (it would make every answer certain). It is not offered.

Note that c_i is the probability of one exact string; the checkers accept some variants
(case, trailing punctuation), so c_i is a lower bound on the model's probability of a correct
answer. The fitted T absorbs that on average; the reliability diagram shows what remains.

The model is any object with our ``GPT.forward`` keywords (our GPT or
:class:`trustlab.lm.hf_backend.HFCausalLM`) and the tokenizer any with our interface
(``encode_prompt``, ``encode``, ``pad_id``, ``eos_id``); generation goes through
:func:`trustlab.lm.generation.generate`. The per-token logit rows of the answers are kept in
memory (``n_tokens x vocab`` float32: small for our word-level model, about 0.2 MB per answer
token for a 50k vocabulary), so fitting T is pure tensor work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from trustlab.calibration.metrics import (
    N_BINS,
    confidence_adaptive_ece,
    confidence_bins,
    confidence_ece,
)

__all__ = [
    "BASE_MODEL_STAGE",
    "OBJECTIVES",
    "POOL_SEP",
    "T_BOUNDS",
    "LMAnswers",
    "LMCalibration",
    "TokenLogits",
    "answer_metrics",
    "base_model_dir",
    "collect_answers",
    "continuation_logits",
    "fit_temperature",
    "load_lm",
    "method_name",
    "parse_pool",
    "require_base_model",
    "require_lm",
    "run_lm_calibration",
    "sample_items",
    "split_val_test",
]

OBJECTIVES = ("correctness", "gold_nll")
POOL_SEP = "/"
BASE_MODEL_STAGE = "base_model"
T_BOUNDS = (1e-2, 1e2)  # the fitted temperature is clamped into this range


# -- inputs ---------------------------------------------------------------------------------------


def parse_pool(pool: str) -> tuple[str, str]:
    """``"world_qa/qa_heldout"`` -> ``("world_qa", "qa_heldout")``; KeyError names what exists."""
    from trustlab.data.checkers import CHECKERS
    from trustlab.data.tasks import task_splits

    task, sep, split = pool.partition(POOL_SEP)
    if not sep or task not in CHECKERS:
        raise KeyError(f"pool {pool!r} is not 'task{POOL_SEP}split' with a checked task ({', '.join(CHECKERS)})")
    if split not in task_splits(task):
        raise KeyError(f"task {task!r} has no split {split!r}; its splits are {', '.join(task_splits(task))}")
    return task, split


def base_model_dir(data_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None) -> Path:
    """``model_dir`` if given (relative paths are taken from ``data_dir``), else ``<data_dir>/models/base``."""
    if model_dir is None:
        return Path(data_dir) / "models" / "base"
    p = Path(model_dir)
    return p if p.is_absolute() else Path(data_dir) / p


def require_base_model(data_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None) -> Path:
    """The model directory, or a FileNotFoundError that names the stage producing it."""
    path = base_model_dir(data_dir, model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no language model at {path} (config.json missing). The calibration stage's LM section needs "
            f"the '{BASE_MODEL_STAGE}' stage's output: run `dvc repro {BASE_MODEL_STAGE}` "
            f"(python pipelines/pretrain_base.py --data-dir {Path(data_dir)} --out {path}) first, "
            f"or set calibration.lm.enabled: false"
        )
    return path


def require_lm(data_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None, model_cfg=None) -> str:
    """What the LM section will load, checked before any work: the ``model:`` section's
    transformers model when ``model_cfg.backend`` is ``hf``, else our GPT directory
    (:func:`require_base_model`)."""
    if model_cfg is not None and model_cfg.backend == "hf":
        return str(model_cfg.name_or_path)
    return str(require_base_model(data_dir, model_dir))


def load_lm(data_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None, model_cfg=None):
    """``(model, tokenizer)`` of the language model to calibrate: the ``model:`` section's
    transformers model (``backend: hf``, through ``trustlab.lm.loading``), else our GPT from
    ``model_dir`` (default ``<data_dir>/models/base``)."""
    if model_cfg is not None and model_cfg.backend == "hf":
        from trustlab.lm.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(model_cfg, data_dir)
    from trustlab.lm.checkpoint import load_pretrained

    return load_pretrained(require_base_model(data_dir, model_dir))


def sample_items(generated_dir: str | os.PathLike, pools: Sequence[str], n_items: int | None,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n_items`` records of every pool (a seeded sample without replacement, kept in
    file order; all records when the split is smaller or ``n_items`` is None), each a copy with
    a ``pool`` key added."""
    from trustlab.data.tasks import load_task, sub_seed

    out = []
    for pool in pools:
        task, split = parse_pool(pool)
        records = load_task(generated_dir, task, split)
        idx = np.arange(len(records))
        if n_items is not None and n_items < len(records):
            gen = np.random.default_rng(sub_seed(seed, "lm_items", pool))
            idx = np.sort(gen.choice(len(records), size=n_items, replace=False))
        out += [{**records[i], "pool": pool} for i in idx]
    return out


# -- token logits of answers ------------------------------------------------------------------------


@dataclass
class TokenLogits:
    """The logit rows that predicted every answer token, flattened over items.

    ``logits`` (M, V) float32, ``targets`` (M,) the answer tokens, ``item`` (M,) which answer
    each row belongs to (0..n_items-1, non-decreasing)."""

    logits: Tensor
    targets: Tensor
    item: Tensor
    n_items: int

    @classmethod
    def from_rows(cls, rows: Sequence[Tensor], targets: Sequence[Sequence[int]]) -> TokenLogits:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} logit blocks for {len(targets)} answers")
        vocab = next((r.shape[-1] for r in rows if r.numel()), 1)
        lengths = [len(t) for t in targets]
        for r, n in zip(rows, lengths):
            if r.shape[0] != n:
                raise ValueError(f"a logit block has {r.shape[0]} rows for {n} answer tokens")
        logits = torch.cat([r.float().reshape(-1, vocab) for r in rows]) if rows else torch.zeros(0, vocab)
        return cls(
            logits=logits,
            targets=torch.tensor([int(t) for ts in targets for t in ts], dtype=torch.long),
            item=torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths, dtype=torch.long)),
            n_items=len(rows),
        )

    def subset(self, items: Sequence[int] | np.ndarray) -> TokenLogits:
        """The rows of the given answers, renumbered 0..len(items)-1 in the given order."""
        items = torch.as_tensor(np.asarray(items, dtype=np.int64))
        remap = torch.full((self.n_items,), -1, dtype=torch.long)
        remap[items] = torch.arange(len(items))
        keep = remap[self.item] >= 0
        new_item = remap[self.item[keep]]
        order = torch.argsort(new_item, stable=True)
        return TokenLogits(self.logits[keep][order], self.targets[keep][order], new_item[order], len(items))

    def token_logprobs(self, temperature: float | Tensor = 1.0) -> Tensor:
        """``log softmax(z / T)[y]`` per row (float64)."""
        z = self.logits.double() / temperature
        return torch.log_softmax(z, dim=-1).gather(1, self.targets[:, None]).squeeze(1)

    def sequence_logprob(self, temperature: float | Tensor = 1.0) -> Tensor:
        """``s_i(T) = sum_t log softmax(z_it / T)[y_it]`` per answer (0 for an empty answer)."""
        lp = self.token_logprobs(temperature)
        return torch.zeros(self.n_items, dtype=lp.dtype).index_add(0, self.item, lp)

    def confidence(self, temperature: float = 1.0) -> np.ndarray:
        """``c_i(T) = exp(s_i(T))``."""
        with torch.no_grad():
            return self.sequence_logprob(float(temperature)).exp().numpy()


def _positions(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def continuation_logits(model, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]],
                        pad_id: int, batch_size: int = 64) -> list[Tensor]:
    """Teacher-forced logits: for each (prompt, continuation) the (len(continuation), V) rows
    whose softmax predicted each continuation token (same positions as ``generate``)."""
    from trustlab.lm.generation import context_length, eval_mode

    if len(prompt_ids) != len(continuation_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
    limit = context_length(model)
    if limit is not None and any(len(p) + len(c) - 1 > limit for p, c in zip(prompt_ids, continuation_ids)):
        raise ValueError(f"a prompt + continuation is longer than the model's context ({limit} tokens)")
    device = next(model.parameters()).device
    out: list[Tensor] = []
    with eval_mode(model):
        for start in range(0, len(prompt_ids), batch_size):
            ps = [list(p) for p in prompt_ids[start:start + batch_size]]
            cs = [list(c) for c in continuation_ids[start:start + batch_size]]
            # the last continuation token is never an input: only its prediction is needed
            seqs = [p + c[:-1] for p, c in zip(ps, cs)]
            S = max(map(len, seqs))
            ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):  # right padding
                ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, :len(s)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(ids, mask, position_ids=_positions(mask)).logits
            for i, (p, c) in enumerate(zip(ps, cs)):
                out.append(logits[i, len(p) - 1:len(p) - 1 + len(c)].float().cpu())
    return out


@dataclass
class LMAnswers:
    """Greedy answers to ``records`` with their correctness and token logits.

    ``greedy``: logits of the generated tokens (confidence); ``gold``: logits of the reference
    answers' tokens (for the ``gold_nll`` objective; None when not collected).
    ``logprob_gap``: max |log p from ``generate`` - log p recomputed from ``greedy``| (a check
    that the teacher-forced logits are the ones that produced the answers)."""

    records: list[dict[str, Any]]
    responses: list[str]
    correct: np.ndarray
    finish_reasons: list[str]
    greedy: TokenLogits
    gold: TokenLogits | None
    logprob_gap: float
    seconds: float = 0.0

    @property
    def pools(self) -> np.ndarray:
        return np.array([r.get("pool", f"{r['task']}{POOL_SEP}{r['split']}") for r in self.records])

    def __len__(self) -> int:
        return len(self.records)

    def frame(self, temperature: float = 1.0) -> pd.DataFrame:
        """One row per item: pool, id, prompt, answer, response, correct, confidence, finish."""
        return pd.DataFrame({
            "pool": self.pools,
            "id": [r.get("id") for r in self.records],
            "prompt": [r["prompt"] for r in self.records],
            "answer": [r["answer"] for r in self.records],
            "response": self.responses,
            "correct": self.correct.astype(bool),
            "confidence": self.greedy.confidence(temperature),
            "n_tokens": np.bincount(self.greedy.item.numpy(), minlength=len(self)),
            "finish": self.finish_reasons,
        })


def collect_answers(model, tokenizer, records: Sequence[dict[str, Any]], *, max_new_tokens: int = 12,
                    batch_size: int = 64, with_gold: bool = True) -> LMAnswers:
    """Greedy-decode every record's prompt, check the answers, and keep the logit rows of the
    generated tokens (and, with ``with_gold``, of the reference answers + ``<eos>``)."""
    from trustlab.data.checkers import is_correct
    from trustlab.lm.generation import generate

    t0 = time.perf_counter()
    prompts = [r["prompt"] for r in records]
    gen = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False,
                   batch_size=batch_size)
    correct = np.array([bool(is_correct(r, text)) for r, text in zip(records, gen.texts)])
    rows = continuation_logits(model, gen.prompt_ids, gen.token_ids, tokenizer.pad_id, batch_size)
    greedy = TokenLogits.from_rows(rows, gen.token_ids)
    recomputed = greedy.token_logprobs(1.0).numpy()
    reference = np.concatenate([np.asarray(lp, float) for lp in gen.token_logprobs]) if len(gen) else np.zeros(0)
    gap = float(np.abs(recomputed - reference).max()) if len(reference) else 0.0
    gold = None
    if with_gold:
        gold_ids = [list(tokenizer.encode_answer(r["answer"])) + [tokenizer.eos_id] for r in records]
        gold = TokenLogits.from_rows(continuation_logits(model, gen.prompt_ids, gold_ids, tokenizer.pad_id,
                                                         batch_size), gold_ids)
    return LMAnswers(list(records), list(gen.texts), correct, list(gen.finish_reasons), greedy, gold, gap,
                     time.perf_counter() - t0)


# -- temperature ----------------------------------------------------------------------------------


def _objective(objective: str, greedy: TokenLogits, correct: Tensor, gold: TokenLogits | None):
    if objective == "correctness":
        def loss(t: Tensor) -> Tensor:
            s = greedy.sequence_logprob(t)
            # log(1 - c) = log(-expm1(s)); s is capped just below 0 so a wrong answer with c = 1
            # in float64 costs log(1e-12) instead of infinity
            log_not = torch.log(-torch.expm1(s.clamp(max=-1e-12)))
            return -(correct * s + (1 - correct) * log_not).mean()
        return loss
    if objective == "gold_nll":
        if gold is None:
            raise ValueError("objective 'gold_nll' needs the reference answers' logits "
                             "(collect_answers(with_gold=True))")
        return lambda t: -gold.token_logprobs(t).mean()
    raise ValueError(f"objective = {objective!r} is not allowed: choose one of {', '.join(map(repr, OBJECTIVES))}")


def fit_temperature(answers: LMAnswers, items: Sequence[int] | np.ndarray | None = None,
                    objective: str = "correctness", max_iter: int = 100) -> float:
    """One temperature for the token logits, fitted on ``items`` (default: all) by LBFGS
    (strong-Wolfe line search) on log T from T = 1 and clamped into ``T_BOUNDS``; see the
    module docstring for the objectives."""
    items = np.arange(len(answers)) if items is None else np.asarray(items, dtype=np.int64)
    if len(items) == 0:
        raise ValueError("fit_temperature needs at least one validation item")
    greedy = answers.greedy.subset(items)
    gold = answers.gold.subset(items) if (answers.gold is not None and objective == "gold_nll") else None
    correct = torch.as_tensor(answers.correct[items], dtype=torch.float64)
    loss_fn = _objective(objective, greedy, correct, gold)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])

    def closure():
        opt.zero_grad()
        loss = loss_fn(log_t.clamp(lo, hi).exp())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().clamp(lo, hi).exp())
    return min(max(t, T_BOUNDS[0]), T_BOUNDS[1]) if np.isfinite(t) else 1.0


# -- metrics --------------------------------------------------------------------------------------


def answer_metrics(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> dict[str, float]:
    """Answer-level metrics: ``acc`` (fraction correct), ``conf`` (mean confidence), ``ece`` /
    ``ada_ece`` (equal-width / equal-mass bins), ``brier`` = mean (c - k)^2, ``nll`` = mean
    Bernoulli NLL of correctness (c clipped to [1e-12, 1 - 1e-12]), ``auroc`` of confidence for
    correctness (NaN when all items are right or all wrong)."""
    from sklearn.metrics import roc_auc_score

    c = np.asarray(conf, float)
    k = np.asarray(correct, float)
    cc = np.clip(c, 1e-12, 1 - 1e-12)
    return {
        "n": len(c),
        "acc": float(k.mean()) if len(k) else float("nan"),
        "conf": float(c.mean()) if len(c) else float("nan"),
        "ece": confidence_ece(c, k, n_bins),
        "ada_ece": confidence_adaptive_ece(c, k, n_bins),
        "brier": float(((c - k) ** 2).mean()) if len(c) else float("nan"),
        "nll": float(-(k * np.log(cc) + (1 - k) * np.log1p(-cc)).mean()) if len(c) else float("nan"),
        "auroc": float(roc_auc_score(k, c)) if 0 < k.sum() < len(k) else float("nan"),
    }


def split_val_test(pools: np.ndarray, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pool, a seeded random ``val_frac`` of the items (at least one, and at least one left
    for the test set when the pool has two or more) -> (val indices, test indices), sorted."""
    from trustlab.data.tasks import sub_seed

    val, test = [], []
    for pool in dict.fromkeys(pools.tolist()):
        idx = np.flatnonzero(pools == pool)
        perm = np.random.default_rng(sub_seed(seed, "lm_val", pool)).permutation(idx)
        n_val = round(val_frac * len(idx))
        n_val = min(max(n_val, 1), max(len(idx) - 1, 1))
        val.append(perm[:n_val])
        test.append(perm[n_val:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


# -- the experiment -------------------------------------------------------------------------------


@dataclass
class LMCalibration:
    """``table``: one row per seed x method (raw, ts_<objective>) x pool (and ``all``) with
    the temperature and :func:`answer_metrics` on the test items; ``bins``: reliability bins
    of the first seed's pooled test items per method; ``items``: per-item frame at T = 1;
    ``temperatures``: seed x objective; ``info``: model / timing facts."""

    table: pd.DataFrame
    bins: pd.DataFrame
    items: pd.DataFrame
    temperatures: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def method_name(objective: str | None) -> str:
    return "raw" if objective is None else f"ts_{objective}"


def run_lm_calibration(answers: LMAnswers, *, seeds: Sequence[int], val_frac: float,
                       objectives: Sequence[str] = ("correctness",), n_bins: int = N_BINS,
                       max_iter: int = 100) -> LMCalibration:
    """For every seed: split each pool's items into validation / test, fit one temperature per
    objective on the validation items, evaluate raw and scaled confidences on the test items
    (per pool and pooled as ``all``)."""
    pools = answers.pools
    correct = answers.correct
    rows, temps, bins = [], [], []
    for seed in seeds:
        val, test = split_val_test(pools, val_frac, seed)
        methods: dict[str, float] = {"raw": 1.0}
        for obj in objectives:
            t = fit_temperature(answers, val, obj, max_iter)
            methods[method_name(obj)] = t
            temps.append({"seed": seed, "objective": obj, "temperature": t, "n_val": len(val)})
        for method, t in methods.items():
            conf = answers.greedy.confidence(t)
            groups = {"all": test, **{p: test[pools[test] == p] for p in dict.fromkeys(pools[test].tolist())}}
            for pool, idx in groups.items():
                rows.append({"seed": seed, "method": method, "pool": pool, "temperature": t,
                             **answer_metrics(conf[idx], correct[idx], n_bins)})
            if seed == seeds[0]:
                b = confidence_bins(conf[test], correct[test], n_bins)
                bins += [{"method": method, "temperature": t, "bin": i, **{k: float(v[i]) for k, v in b.items()}}
                         for i in range(n_bins)]
    info = {"n_items": len(answers), "logprob_gap": answers.logprob_gap, "collect_seconds": answers.seconds,
            "mean_tokens": float(len(answers.greedy.targets) / max(len(answers), 1))}
    return LMCalibration(pd.DataFrame(rows), pd.DataFrame(bins), answers.frame(), pd.DataFrame(temps), info)
