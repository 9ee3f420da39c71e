"""Pretraining: fit the tokenizer, build the mix, and train a GPT from scratch with
``trustlab.lm.training.fit`` (AdamW, linear warmup and cosine decay), seeded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from trustlab.core.seeding import seed_everything
from trustlab.lm.base_model.config import BaseModelConfig
from trustlab.lm.base_model.corpus import fit_tokenizer
from trustlab.lm.base_model.mix import Mix, build_mix
from trustlab.lm.gpt import GPT


@dataclass
class PretrainResult:
    model: Any
    tokenizer: Any
    mix: Mix
    curve: list[dict[str, float]]
    seconds: float  # wall time of the training loop (reported in timing.json only)
    steps: int
    tokens: int
    tokens_per_s: float  # throughput (timing.json only)


def pretrain(gen_dir: str | os.PathLike, cfg: BaseModelConfig, *, progress: bool | None = None) -> PretrainResult:
    """Fit the tokenizer, build the mix and pretrain a GPT from scratch (seeded)."""
    from trustlab.lm.training import CausalLMModule, fit  # Lightning: imported only to train

    tok = fit_tokenizer(gen_dir, cfg)
    mix = build_mix(gen_dir, tok, cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model = GPT(cfg.gpt_config(tok.vocab_size))
    module = CausalLMModule(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio
    )
    res = fit(
        module,
        mix.dataset,
        pad_id=tok.pad_id,
        batch_size=cfg.batch_size,
        max_steps=cfg.steps,
        seed=cfg.seed,
        threads=cfg.threads,
        grad_clip=cfg.grad_clip,
        progress=progress,
    )
    model.eval()
    return PretrainResult(model, tok, mix, list(res.curve), res.seconds, res.steps, res.tokens, res.tokens_per_s)
