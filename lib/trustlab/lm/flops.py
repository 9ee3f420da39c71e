"""How much of the machine a training step uses: model FLOPs per token and the matmul peak.

``training share of peak = training_flops_per_token(config) x tokens/s / matmul_peak(threads)``:
the fraction of the machine's practical dense-matmul throughput that a training loop turns into
model FLOPs. ``pipelines/bench.py`` reports it for the default GPT, the ``base_model`` stage for
its own training run (in ``timing.json``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch


def matmul_peak(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """Dense fp32 matmul throughput (FLOP/s) at ``threads`` torch threads: the machine's
    practical peak that a training step's share is measured against (median of ``repeats``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, generator=torch.Generator().manual_seed(3))
        b = torch.randn(size, size, generator=torch.Generator().manual_seed(4))
        for _ in range(3):
            a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return 2 * size**3 / statistics.median(times)
    finally:
        torch.set_num_threads(previous)


def training_flops_per_token(config: Mapping[str, Any]) -> float:
    """Model FLOPs per trained token (forward + backward): ``6 N`` for the weight matmuls (N =
    parameters outside the embeddings: attention 4d² + MLP 8d² per block, and the LM head)
    plus ``12 L d T`` for the attention scores and mixing. ``config``: a GPT config as a dict
    (``n_layer``, ``n_embd``, ``block_size``, ``vocab_size``)."""
    n_layer, d, T = config["n_layer"], config["n_embd"], config["block_size"]
    n_matmul = 12 * n_layer * d * d + d * config["vocab_size"]
    return 6 * n_matmul + 12 * n_layer * d * T


def share_of_peak(config: Mapping[str, Any], tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOP/s of a training loop as a fraction of ``peak_flops``."""
    return training_flops_per_token(config) * tokens_per_s / peak_flops
