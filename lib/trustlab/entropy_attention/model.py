"""Build a GPT for a named variant (registers this family's kernels and FFNs on import)."""

from __future__ import annotations

from typing import Any

import torch

import trustlab.entropy_attention.ffn  # noqa: F401  (registers scfu, mlp_wn, mlp_sn)
import trustlab.entropy_attention.kernels  # noqa: F401  (registers softmax_t, softmax_pa, softplus)
from trustlab.entropy_attention.regularizer import attach_regularizer, get_regularizer
from trustlab.entropy_attention.variants import Variant, get_variant
from trustlab.lm.gpt import GPT, GPTConfig


def gpt_config(variant: str | Variant, *, vocab_size: int, block_size: int = 128, n_layer: int = 4, n_head: int = 4,
               n_embd: int = 128, mlp_ratio: float = 4.0, dropout: float = 0.0, bias: bool = True,
               attention_kwargs: dict[str, Any] | None = None) -> GPTConfig:
    v = get_variant(variant) if isinstance(variant, str) else variant
    fields = v.gpt_fields()
    fields["attention_kwargs"] = {**(attention_kwargs or {}), **fields["attention_kwargs"]}
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     mlp_ratio=mlp_ratio, dropout=dropout, bias=bias, **fields)


def build_model(variant: str | Variant, *, gamma: float = 0.2, theta_init: float = 0.5, **config_kwargs: Any) -> GPT:
    """A freshly initialised GPT for ``variant``; EReg variants get an ``entropy_reg`` (theta)."""
    v = get_variant(variant) if isinstance(variant, str) else variant
    model = GPT(gpt_config(v, **config_kwargs))
    if v.entropy_reg:
        attach_regularizer(model, gamma=gamma, theta_init=theta_init)
    return model


@torch.no_grad()
def learned_parameters(model: GPT) -> dict[str, Any]:
    """theta (L, H), temperatures (L, H, T), selective beta (L,), ScFuFFN alpha / beta (L,),
    each None when the model has none."""
    from trustlab.entropy_attention.ffn import ScFuFFN
    from trustlab.entropy_attention.kernels import PositionAwareSoftmaxAttention, TemperatureSoftmaxAttention

    reg = get_regularizer(model)
    kernels = [b.attn.kernel for b in model.blocks]
    ffns = [b.ffn for b in model.blocks]
    out: dict[str, Any] = {"theta": reg.theta.detach().clone() if reg is not None else None}
    out["temperature"] = (
        torch.stack([k.temperature.detach() for k in kernels])
        if all(isinstance(k, TemperatureSoftmaxAttention) for k in kernels) else None
    )
    out["selective_beta"] = (
        torch.stack([k.beta.detach() for k in kernels])
        if all(isinstance(k, PositionAwareSoftmaxAttention) for k in kernels) else None
    )
    if all(isinstance(f, ScFuFFN) for f in ffns):
        out["scfu_alpha"] = torch.stack([f.alpha.detach() for f in ffns])
        out["scfu_beta"] = torch.stack([f.beta.detach() for f in ffns])
    else:
        out["scfu_alpha"] = out["scfu_beta"] = None
    return out
