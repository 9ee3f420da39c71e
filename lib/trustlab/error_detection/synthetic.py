"""Synthetic :class:`GenerationStats` with a controllable error signal, for tests and dry runs
of the notebook before the shared model's statistics exist. Nothing here is a result.

Each row draws ``is_error ~ Bernoulli(error_rate)``; then, with strength ``signal`` (0 = no
signal at all):

- greedy tokens come from real categorical distributions over a small vocabulary (so
  log p, H and Var are mutually consistent, computed by ``token_statistics``); wrong rows get
  flatter distributions and more non-argmax tokens;
- samples agree with the greedy answer with probability 0.8 (right) vs 0.8 - 0.5*signal (wrong);
  sample texts are ``"<answer> v<j>"`` with j in 0..2, so identical paths occur;
- hidden states are N(0, 1) plus ``signal * is_error * (l / L)`` along a fixed direction, so
  deeper layers "know" more.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from trustlab.error_detection.statistics import GenerationStats, assign_splits, token_statistics

__all__ = ["synthetic_stats"]


def synthetic_stats(
    n: int = 120,
    K: int = 6,  # noqa: N803
    *,
    n_layers: int = 3,
    d: int = 8,
    vocab: int = 16,
    error_rate: float = 0.4,
    signal: float = 1.0,
    tasks: Sequence[str] = ("arithmetic", "world_qa"),
    fit_fraction: float = 0.5,
    seed: int = 0,
    sample_tokens: bool = True,
) -> GenerationStats:
    """N prompts, K samples, hidden states of shape (N, n_layers + 1, d)."""
    gen = np.random.default_rng(seed)
    ids = [f"p{i:04d}" for i in range(n)]
    task = [tasks[i % len(tasks)] for i in range(n)]
    split = assign_splits(ids, task, fit_fraction, seed)
    err = gen.random(n) < error_rate
    answers_pool = [f"a{j}" for j in range(5)]

    lps, hs, vs, masks, responses, answers = [], [], [], [], [], []
    for i in range(n):
        t = int(gen.integers(3, 9))
        scale = 3.0 - 1.5 * signal * err[i]
        logits = gen.normal(0.0, 1.0, (t, vocab)) * scale
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        greedy = p.argmax(1)
        sampled = np.array([gen.choice(vocab, p=row) for row in p])
        use_sample = gen.random(t) < (0.1 + 0.6 * signal * err[i])
        tok = np.where(use_sample, sampled, greedy)
        lp, h, v = token_statistics(logits, tok)
        span = int(gen.integers(1, min(3, t - 1) + 1))
        start = int(gen.integers(0, t - span))
        m = np.zeros(t, dtype=bool)
        m[start : start + span] = True
        ans = answers_pool[int(gen.integers(len(answers_pool)))]
        lps.append(lp), hs.append(h), vs.append(v), masks.append(m)
        answers.append(ans)
        responses.append(f"{ans} v0")

    agree = np.where(err, 0.8 - 0.5 * signal, 0.8)
    s_ans = np.empty((n, K), dtype=object)
    s_txt = np.empty((n, K), dtype=object)
    s_lp: list[list[np.ndarray]] = []
    s_mask: list[list[np.ndarray]] = []
    for i in range(n):
        row_lp, row_m = [], []
        for k in range(K):
            same = gen.random() < agree[i]
            a = answers[i] if same else answers_pool[int(gen.integers(len(answers_pool)))]
            variant = int(gen.integers(3))
            s_ans[i, k] = a
            s_txt[i, k] = f"{a} v{variant}"
            # identical texts must have identical statistics: derive them from the text
            local = np.random.default_rng(zlib.crc32(f"{seed}:{i}:{a}:{variant}".encode()))
            length = 2 + variant
            base = 0.3 + (0.0 if same else 0.8 * signal)
            row_lp.append(-local.gamma(2.0, base / 2.0, length))
            mm = np.zeros(length, dtype=bool)
            mm[0] = True
            row_m.append(mm)
        s_lp.append(row_lp)
        s_mask.append(row_m)

    direction = gen.normal(0.0, 1.0, d)
    direction /= np.linalg.norm(direction)
    depth = np.arange(n_layers + 1) / max(n_layers, 1)
    base = gen.normal(0.0, 1.0, (n, n_layers + 1, d))
    shift = signal * err[:, None, None] * depth[None, :, None] * direction[None, None, :] * 2.0
    hid_resp = (base + shift).astype(np.float32)
    hid_ans = (base + 1.5 * shift + 0.3 * gen.normal(0.0, 1.0, base.shape)).astype(np.float32)

    means = np.array([[a.mean() for a in row] for row in s_lp])
    sums = np.array([[a.sum() for a in row] for row in s_lp])
    return GenerationStats(
        ids=ids, task=task, split=split, response=responses, answer=answers, is_error=err,
        token_logprobs=lps, token_entropies=hs, token_entropy_vars=vs, answer_mask=masks,
        sample_texts=s_txt, sample_answers=s_ans,
        sample_token_logprobs=s_lp if sample_tokens else None,
        sample_answer_masks=s_mask if sample_tokens else None,
        sample_mean_logprobs=None if sample_tokens else means,
        sample_sum_logprobs=None if sample_tokens else sums,
        hidden_answer=hid_ans, hidden_response=hid_resp,
        prompt=[f"prompt {i}" for i in range(n)],
        meta={"synthetic": True, "seed": seed, "signal": signal},
    )
