"""The shared language model: tokenizers, a tiny GPT with pluggable attention/norm/FFN,
masked losses, generation with per-token statistics, Lightning training, checkpoints and an
optional ``transformers`` backend (``trustlab.lm.hf_backend``, never imported here).

``generation``, ``training`` and ``checkpoint`` are imported on demand (training pulls in
Lightning)."""

from trustlab.lm.gpt import (
    GPT,
    FFN,
    AttentionKernel,
    GPTConfig,
    GPTOutput,
    KVCache,
    no_weight_decay,
    register_attention,
    register_ffn,
    register_norm,
)
from trustlab.lm.losses import causal_lm_loss, token_losses

__all__ = [
    "GPT",
    "FFN",
    "AttentionKernel",
    "GPTConfig",
    "GPTOutput",
    "KVCache",
    "no_weight_decay",
    "register_attention",
    "register_ffn",
    "register_norm",
    "causal_lm_loss",
    "token_losses",
]
