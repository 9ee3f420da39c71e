"""Generation and teacher-forced scoring with per-token statistics, for every family.

``generate`` decodes a batch of prompts (left-padded, KV cache) and records, for each
generated token y_t (the ``<eos>`` that ends a sequence included):

* ``token_logprobs``: log p(y_t | y_<t) under the **raw** model distribution (softmax of the
  logits: no temperature, no repetition penalty, no top-k/top-p). Use these for likelihood-
  based scores (MSP, perplexity, RPC).
* ``sampling_logprobs``: log q(y_t) under the distribution actually sampled from (after
  repetition penalty, temperature, top-k, top-p; for greedy decoding: after the penalty).
* ``entropies``: H_t = -sum_v p log p of the raw next-token distribution (full vocabulary).
* ``entropy_vars``: sum_v p (log p)^2 - H_t^2 (the variance of -log p; fast-detect-gpt).
* ``hidden_states`` (on request): for each generated token, the hidden states of every layer
  (``n_layer + 1``: embeddings, then each block) at the position whose output predicted it —
  ``"tokens"`` -> (L+1, n_tokens, C) per sequence, ``"mean"`` -> (L+1, C) averaged over them.
  ``return_prompt_hidden`` adds the same for the (unpadded) prompt tokens.

``score_continuations`` computes the same statistics for given responses by teacher forcing,
at the same positions, so scores of generated and of injected responses are comparable.

Both run under ``torch.no_grad`` in eval mode and restore the model's previous mode. The model
is anything with our ``GPT.forward`` keywords (our GPT, ``hf_backend.HFCausalLM``); string
prompts are encoded with ``tokenizer.encode_prompt`` (``<bos> prompt <sep>``); pass token-id
lists for raw continuation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

HiddenMode = Literal["tokens", "mean"] | None


@dataclass
class GenerationResult:
    prompt_index: list[int]  # which prompt each sequence answers (prompt-major order)
    prompt_ids: list[list[int]]
    token_ids: list[list[int]]  # generated ids (the final <eos> included when produced)
    texts: list[str]  # decoded generated text, special tokens skipped
    finish_reasons: list[str]  # "eos" | "length" (max_new_tokens) | "context" (block_size reached)
    token_logprobs: list[np.ndarray]
    sampling_logprobs: list[np.ndarray]
    entropies: list[np.ndarray]
    entropy_vars: list[np.ndarray]
    hidden_states: list[np.ndarray] | None = None
    prompt_hidden_states: list[np.ndarray] | None = None
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class ScoreResult:
    token_ids: list[list[int]]  # the scored continuation ids (with <eos> when add_eos)
    token_logprobs: list[np.ndarray]
    entropies: list[np.ndarray]
    entropy_vars: list[np.ndarray]
    hidden_states: list[np.ndarray] | None = None
    prompt_hidden_states: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def sum_logprobs(self) -> np.ndarray:
        return np.array([float(lp.sum()) for lp in self.token_logprobs])

    @property
    def mean_logprobs(self) -> np.ndarray:
        return np.array([float(lp.mean()) if len(lp) else 0.0 for lp in self.token_logprobs])


# ---------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode and no grad inside; the previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def context_length(model) -> int | None:
    """Maximum number of positions the model accepts (None: unlimited/unknown)."""
    if getattr(model, "context_length", None):
        return int(model.context_length)
    config = getattr(model, "config", None)
    return getattr(config, "block_size", None)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def token_stats(logits: torch.Tensor, chosen: torch.Tensor):
    """Raw-distribution statistics of the chosen tokens, computed in float64.
    logits (N, V), chosen (N,) -> logprob, entropy, variance term; each (N,)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    entropy = -plogp.sum(-1)
    second = torch.where(p > 0, p * logp * logp, torch.zeros_like(p)).sum(-1)
    return logp.gather(-1, chosen[:, None]).squeeze(-1), entropy, (second - entropy**2).clamp(min=0.0)


def process_logits(logits, seen, *, do_sample, temperature, top_k, top_p, repetition_penalty):
    """The sampling distribution's logits: repetition penalty (CTRL: divide positive logits,
    multiply negative ones, for every token already in prompt or output), then — when
    sampling — temperature, top-k and nucleus (top-p) filtering (filtered logits = -inf)."""
    x = logits.float()
    if repetition_penalty != 1.0:
        x = torch.where(seen, torch.where(x > 0, x / repetition_penalty, x * repetition_penalty), x)
    if not do_sample:
        return x
    if temperature != 1.0:
        x = x / temperature
    if top_k is not None and top_k < x.size(-1):
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # mass before this token already exceeds top_p
        drop[:, 0] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return x


def _encode_prompts(tokenizer, prompts) -> list[list[int]]:
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(tokenizer.encode_prompt(p))
        else:
            out.append([int(i) for i in p])
        if not out[-1]:
            raise ValueError("empty prompt: give at least one token (e.g. <bos>)")
    return out


def _left_pad(seqs: list[list[int]], pad_id: int, device):
    P = max(map(len, seqs))
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :] = torch.tensor(s)
        mask[i, P - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor, T: int) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)[:, -T:]


def _pool(h: np.ndarray, mode: HiddenMode) -> np.ndarray:
    """(L+1, n, C) -> itself for "tokens", its mean over n for "mean"."""
    return h if mode == "tokens" else h.mean(axis=1)


def _prompt_hidden(hidden, mask, mode):
    """Per row, hidden states at the real (unpadded) positions -> list of (L+1, n, C) pooled."""
    H = torch.stack(hidden, dim=1).float().cpu().numpy()  # (N, L+1, P, C)
    m = mask.bool().cpu().numpy()
    return [_pool(H[i][:, m[i]], mode) for i in range(H.shape[0])]


# ---------------------------------------------------------------------------------------------
# generate


def generate(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    return_hidden_states: HiddenMode = None,
    return_prompt_hidden: bool = False,
    stop_at_eos: bool = True,
) -> GenerationResult:
    """Decode ``num_return_sequences`` continuations per prompt; see the module docstring.
    Sampling uses a local ``torch.Generator`` seeded with ``seed`` (same seed and batching
    -> same samples); ``seed=None`` draws from torch's global RNG."""
    if max_new_tokens < 0 or num_return_sequences < 1 or batch_size < 1:
        raise ValueError("max_new_tokens >= 0, num_return_sequences >= 1 and batch_size >= 1 are required")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature = {temperature} must be > 0 when sampling (use do_sample=False for greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k = {top_k} must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p = {top_p} must be in (0, 1]")
    if return_hidden_states not in (None, "tokens", "mean"):
        raise ValueError(f"return_hidden_states = {return_hidden_states!r}: None, 'tokens' or 'mean'")
    pool = return_hidden_states or "tokens"
    encoded = _encode_prompts(tokenizer, prompts)
    rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(num_return_sequences)]
    limit = context_length(model)
    if limit is not None and rows and max(len(r[1]) for r in rows) > limit:
        raise ValueError(f"a prompt is longer than the model's context ({limit} tokens)")

    device = _device(model)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    want_hidden = return_hidden_states is not None or return_prompt_hidden
    sample_kw = dict(
        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty
    )

    result = GenerationResult(
        prompt_index=[], prompt_ids=[], token_ids=[], texts=[], finish_reasons=[], token_logprobs=[],
        sampling_logprobs=[], entropies=[], entropy_vars=[],
        hidden_states=[] if return_hidden_states else None,
        prompt_hidden_states=[] if return_prompt_hidden else None,
        settings=dict(max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences, seed=seed,
                      use_cache=use_cache, **sample_kw),
    )  # fmt: skip
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            out = _generate_batch(
                model, tokenizer, [ids for _, ids in chunk], max_new_tokens, sample_kw, gen, use_cache,
                want_hidden, limit, stop_at_eos, pool,
            )  # fmt: skip
            for j, (pi, ids) in enumerate(chunk):
                n = out["lengths"][j]
                toks = out["tokens"][j, :n].tolist()
                result.prompt_index.append(pi)
                result.prompt_ids.append(list(ids))
                result.token_ids.append(toks)
                result.texts.append(tokenizer.decode(toks, skip_special=True))
                result.finish_reasons.append(out["reasons"][j])
                result.token_logprobs.append(out["logprob"][j, :n].copy())
                result.sampling_logprobs.append(out["sample_logprob"][j, :n].copy())
                result.entropies.append(out["entropy"][j, :n].copy())
                result.entropy_vars.append(out["var"][j, :n].copy())
                if return_hidden_states:
                    result.hidden_states.append(_pool(out["hidden"][j][:, :n], pool))
                if return_prompt_hidden:
                    result.prompt_hidden_states.append(out["prompt_hidden"][j])
    return result


def shard_seed(seed: int | None, shard: int) -> int | None:
    """The sampling seed of prompt shard ``shard``: independent streams per shard, fixed by
    ``seed`` alone (not by how many processes share the shards)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(shard)]).generate_state(1)[0])


def _generate_shard(task: tuple) -> GenerationResult:
    model, tokenizer, prompts, kwargs = task
    return generate(model, tokenizer, prompts, **kwargs)


def generate_sharded(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    shard_prompts: int,
    workers: int | None = 1,
    seed: int | None = None,
    desc: str | None = None,
    **kwargs,
) -> GenerationResult:
    """:func:`generate` over fixed shards of ``shard_prompts`` prompts, spread over ``workers``
    processes (``trustlab.core.parallel.run_tasks``), concatenated in prompt order.

    Shard ``i`` samples with :func:`shard_seed` ``(seed, i)``, so the result depends on
    ``shard_prompts`` and ``seed`` but not on ``workers``: one process and two give identical
    outputs. Each worker receives a pickled copy of the model."""
    from trustlab.core.parallel import run_tasks

    if shard_prompts < 1:
        raise ValueError(f"shard_prompts = {shard_prompts} is not allowed: a positive integer")
    prompts = list(prompts)
    starts = list(range(0, len(prompts), shard_prompts))
    tasks = [(model, tokenizer, prompts[s : s + shard_prompts], dict(kwargs, seed=shard_seed(seed, i)))
             for i, s in enumerate(starts)]  # fmt: skip
    parts = run_tasks(_generate_shard, tasks, workers=workers, desc=desc)
    if not parts:
        return generate(model, tokenizer, [], seed=seed, **kwargs)
    merged = GenerationResult(
        prompt_index=[], prompt_ids=[], token_ids=[], texts=[], finish_reasons=[], token_logprobs=[],
        sampling_logprobs=[], entropies=[], entropy_vars=[],
        hidden_states=[] if parts[0].hidden_states is not None else None,
        prompt_hidden_states=[] if parts[0].prompt_hidden_states is not None else None,
        settings=dict(parts[0].settings, seed=seed, shard_prompts=shard_prompts),
    )  # fmt: skip
    for start, part in zip(starts, parts):
        merged.prompt_index += [start + i for i in part.prompt_index]
        for name in ("prompt_ids", "token_ids", "texts", "finish_reasons", "token_logprobs", "sampling_logprobs",
                     "entropies", "entropy_vars", "hidden_states", "prompt_hidden_states"):  # fmt: skip
            if getattr(merged, name) is not None:
                getattr(merged, name).extend(getattr(part, name))
    return merged


def _generate_batch(
    model, tokenizer, seqs, max_new_tokens, sample_kw, gen, use_cache, want_hidden, limit, stop_at_eos, pool
):
    device = _device(model)
    N = len(seqs)
    ids, mask = _left_pad(seqs, tokenizer.pad_id, device)
    eos = tokenizer.eos_id
    seen = None  # (N, V) tokens already in prompt or output, for the repetition penalty
    positions = _positions(mask, ids.size(1))
    out = model(ids, mask, position_ids=positions, use_cache=use_cache, output_hidden_states=want_hidden)
    cache = out.past_key_values if use_cache else None
    prompt_hidden = _prompt_hidden(out.hidden_states, mask, pool) if want_hidden else None

    done = torch.zeros(N, dtype=torch.bool, device=device)
    reasons = ["length"] * N
    tokens, logprob, sample_logprob, entropy, var, hidden = [], [], [], [], [], []
    step_out = out
    for t in range(max_new_tokens):
        logits = step_out.logits[:, -1, :]
        if sample_kw["repetition_penalty"] != 1.0 and seen is None:
            seen = torch.zeros(N, logits.size(-1), dtype=torch.bool, device=device)
            for i in range(N):
                seen[i, ids[i][mask[i].bool()]] = True
        x = process_logits(logits, seen, **sample_kw)
        if sample_kw["do_sample"]:
            nxt = torch.multinomial(torch.softmax(x, dim=-1), 1, generator=gen).squeeze(-1)
        else:
            nxt = x.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, tokenizer.pad_id), nxt)
        lp, h, v = token_stats(logits, nxt)
        slp = torch.log_softmax(x.double(), dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
        tokens.append(nxt)
        logprob.append(lp)
        sample_logprob.append(slp)
        entropy.append(h)
        var.append(v)
        if want_hidden:
            hidden.append(torch.stack([hs[:, -1] for hs in step_out.hidden_states], dim=1).float())  # (N, L+1, C)
        if seen is not None:
            seen[torch.arange(N, device=device), nxt] |= ~done
        live = ~done
        mask = torch.cat([mask, live.long()[:, None]], dim=1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if stop_at_eos:
            hit = live & (nxt == eos)
            for i in hit.nonzero().flatten().tolist():
                reasons[i] = "eos"
            done |= hit
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if limit is not None:  # the token just appended would be fed at position mask.sum() - 1
            full = ~done & (mask.sum(-1) > limit)
            for i in full.nonzero().flatten().tolist():
                reasons[i] = "context"
            done |= full
            if bool(done.all()):
                break
        if use_cache:
            step_out = model(nxt[:, None], mask, position_ids=_positions(mask, 1), past_key_values=cache,
                             use_cache=True, output_hidden_states=want_hidden)  # fmt: skip
            cache = step_out.past_key_values
        else:
            step_out = model(ids, mask, position_ids=_positions(mask, ids.size(1)), output_hidden_states=want_hidden)

    steps = len(tokens)
    if steps:
        tok = torch.stack(tokens, 1)
        gen_mask = mask[:, mask.size(1) - steps :].bool()  # 1 where the row was live at that step
        lengths = gen_mask.sum(-1).tolist()
    else:
        tok = torch.zeros(N, 0, dtype=torch.long)
        lengths = [0] * N
    stack = lambda xs: torch.stack(xs, 1).cpu().numpy() if xs else np.zeros((N, 0))  # noqa: E731
    return dict(
        tokens=tok.cpu(),
        lengths=lengths,
        reasons=reasons,
        logprob=stack(logprob),
        sample_logprob=stack(sample_logprob),
        entropy=stack(entropy),
        var=stack(var),
        hidden=torch.stack(hidden, 2).cpu().numpy() if hidden else None,  # (N, L+1, steps, C)
        prompt_hidden=prompt_hidden,
    )


# ---------------------------------------------------------------------------------------------
# teacher-forced scoring


def score_continuations(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    continuations: Sequence[str] | Sequence[Sequence[int]],
    *,
    add_eos: bool = True,
    batch_size: int = 64,
    return_hidden_states: HiddenMode = None,
    return_prompt_hidden: bool = False,
) -> ScoreResult:
    """Per-token statistics of given continuations (teacher forcing). String continuations
    are encoded like answers (``tokenizer.encode_answer``, + ``<eos>`` when ``add_eos``); id lists are used
    as given. Prompts are encoded like ``generate`` does."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if return_hidden_states not in (None, "tokens", "mean"):
        raise ValueError(f"return_hidden_states = {return_hidden_states!r}: None, 'tokens' or 'mean'")
    P = _encode_prompts(tokenizer, prompts)
    C = []
    for c in continuations:
        if isinstance(c, str):
            C.append(tokenizer.encode_answer(c) + ([tokenizer.eos_id] if add_eos else []))
        else:
            C.append([int(i) for i in c])
    limit = context_length(model)
    if limit is not None and any(len(p) + len(c) > limit for p, c in zip(P, C)):
        raise ValueError(f"a prompt + continuation is longer than the model's context ({limit} tokens)")
    want_hidden = return_hidden_states is not None or return_prompt_hidden
    res = ScoreResult(
        token_ids=[], token_logprobs=[], entropies=[], entropy_vars=[],
        hidden_states=[] if return_hidden_states else None,
        prompt_hidden_states=[] if return_prompt_hidden else None,
    )  # fmt: skip
    device = _device(model)
    with eval_mode(model):
        for start in range(0, len(P), batch_size):
            ps, cs = P[start : start + batch_size], C[start : start + batch_size]
            seqs = [p + c for p, c in zip(ps, cs)]
            S = max(map(len, seqs))
            ids = torch.full((len(seqs), S), tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):  # right padding
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            ids, mask = ids.to(device), mask.to(device)
            out = model(ids, mask, position_ids=_positions(mask, S), output_hidden_states=want_hidden)
            H = torch.stack(out.hidden_states, dim=1).float().cpu().numpy() if want_hidden else None
            for i, (p, c) in enumerate(zip(ps, cs)):
                pos = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)  # predicting positions
                target = torch.tensor(c, dtype=torch.long, device=device)
                lp, h, v = token_stats(out.logits[i, pos], target)
                res.token_ids.append(list(c))
                res.token_logprobs.append(lp.cpu().numpy())
                res.entropies.append(h.cpu().numpy())
                res.entropy_vars.append(v.cpu().numpy())
                if return_hidden_states:
                    res.hidden_states.append(_pool(H[i][:, len(p) - 1 : len(p) + len(c) - 1], return_hidden_states))
                if return_prompt_hidden:
                    res.prompt_hidden_states.append(_pool(H[i][:, : len(p)], return_hidden_states or "tokens"))
    return res
