"""Model FLOPs per token and the matmul peak (trustlab.lm.flops)."""

from __future__ import annotations

import torch

from trustlab.lm.flops import matmul_peak, share_of_peak, training_flops_per_token
from trustlab.lm.gpt import GPT, GPTConfig


def test_flops_per_token_is_six_times_the_matmul_weights_plus_attention():
    config = {"n_layer": 4, "n_embd": 128, "block_size": 64, "vocab_size": 500}
    model = GPT(GPTConfig(n_head=4, **config))
    # the weight matmuls: every block's Linear weights and the LM head (tied to the embedding)
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert training_flops_per_token(config) == 6 * n_matmul + 12 * 4 * 128 * 64


def test_matmul_peak_and_share():
    peak = matmul_peak(1, size=128, repeats=3)
    assert peak > 1e6 and torch.get_num_threads() >= 1
    config = {"n_layer": 1, "n_embd": 8, "block_size": 4, "vocab_size": 10}
    assert share_of_peak(config, 1000.0, 1e9) == training_flops_per_token(config) * 1000.0 / 1e9
