"""Attention kernels of the entropy-attention family.

Adding a kernel is one class here: subclass ``AttentionKernel`` (or ``SoftmaxAttention``),
register it with ``@register_attention("<name>")`` (the registry of ``trustlab.lm.gpt``), put
its formula in the class docstring, and name it in a variant (``variants.py``). Every kernel
returns probabilities whose masked entries are exactly 0, so the entropy code needs no special
case. The softmax ones scale q (per query) instead of the logits, which keeps the fused
``scaled_dot_product_attention`` fast path.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.lm.gpt import AttentionKernel, SoftmaxAttention, no_weight_decay, register_attention


def _positions(positions: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    B, _, T, _ = q.shape
    if positions is not None:
        return positions
    S = k.size(2)
    return torch.arange(S - T, S, device=q.device).expand(B, T)


@register_attention("softmax_t")
class TemperatureSoftmaxAttention(SoftmaxAttention):
    """``softmax_t``: softmax with a learnable temperature per head and query position,

        a_ij = softmax_j(q_i . k_j / (t[h, pos_i] sqrt(d))),   t = exp(tau), shape (n_head, block_size).

    The paper initialises t to 1e-2 or 1e-1 with an unpublished parametrisation; we keep t > 0
    through ``exp`` and start at the identity, ``tau = log(temperature_init)`` with
    ``temperature_init = 1``: dividing q by exactly 1.0 reproduces the softmax kernel bit for bit
    (fused and explicit paths)."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.temperature_init = float(config.attention_kwargs.get("temperature_init", 1.0))
        if not self.temperature_init > 0:
            raise ValueError(f"temperature_init = {self.temperature_init} must be > 0")
        self.log_temperature = no_weight_decay(
            nn.Parameter(torch.full((config.n_head, config.block_size), math.log(self.temperature_init)))
        )

    def init_weights(self) -> None:
        with torch.no_grad():
            self.log_temperature.fill_(math.log(self.temperature_init))

    @property
    def temperature(self) -> torch.Tensor:
        """(n_head, block_size) temperatures t = exp(tau)."""
        return self.log_temperature.exp()

    def forward(self, q, k, v, mask, need_weights=False, *, positions=None, is_causal=False):
        pos = _positions(positions, q, k).clamp(max=self.log_temperature.size(1) - 1)
        t = self.temperature[:, pos].permute(1, 0, 2).unsqueeze(-1)  # (B, H, T, 1)
        return super().forward(q / t, k, v, mask, need_weights, positions=positions, is_causal=is_causal)


@register_attention("softmax_pa")
class PositionAwareSoftmaxAttention(SoftmaxAttention):
    """``softmax_pa``: our implementation of Selective Attention's position-aware temperature,

        a_ij = softmax_j((1 + exp(-exp(beta)) * log(n_i)) * q_i . k_j / sqrt(d)),

    ``n_i`` the number of keys query i may attend to, one scalar beta per module initialised to
    ``selective_beta_init`` (1.5)."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.beta_init = float(config.attention_kwargs.get("selective_beta_init", 1.5))
        self.beta = no_weight_decay(nn.Parameter(torch.tensor(self.beta_init)))

    def init_weights(self) -> None:
        with torch.no_grad():
            self.beta.fill_(self.beta_init)

    def forward(self, q, k, v, mask, need_weights=False, *, positions=None, is_causal=False):
        n = mask.sum(-1, keepdim=True).to(q.dtype).clamp(min=1)  # (B, 1, T, 1) keys per query
        scale = 1.0 + torch.exp(-torch.exp(self.beta)) * torch.log(n)
        return super().forward(q * scale, k, v, mask, need_weights, positions=positions, is_causal=is_causal)


@register_attention("softplus")
class SoftplusAttention(AttentionKernel):
    """``softplus``: our implementation of LSSA (arXiv 2501.13428), optionally re-weighted (LSSAR),

        A_ij = softplus(log(d) * log(n_i) * q^_i . k^_j) * causal_ij,   a_ij = A_ij / sum_j A_ij,

    with q^, k^ the L2-normalised q and k and ``n_i`` the keys query i may attend to. The
    re-weighting (attention_kwargs ``softplus_reweight``) maps each row to
    ``relu(a_ij * n_i - O) ** p`` and L1-normalises again (``softplus_p`` p = 15,
    ``softplus_offset`` O = 1: only weights above the row's uniform level survive). A row the
    re-weighting empties (e.g. the first query, whose single weight is exactly uniform) keeps its
    LSSA weights."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        kw = config.attention_kwargs
        self.reweight = bool(kw.get("softplus_reweight", False))
        self.p = float(kw.get("softplus_p", 15.0))
        self.offset = float(kw.get("softplus_offset", 1.0))

    def forward(self, q, k, v, mask, need_weights=False, *, positions=None, is_causal=False):
        d = q.size(-1)
        n = mask.sum(-1, keepdim=True).to(q.dtype).clamp(min=1)  # (B, 1, T, 1)
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        a = F.softplus(math.log(d) * torch.log(n) * scores).masked_fill(~mask, 0.0)
        probs = a / a.sum(-1, keepdim=True)  # softplus > 0, every row has an allowed key
        if self.reweight:
            # relu(A n - O)^p / sum(...): dividing by the row maximum first leaves the result
            # unchanged and keeps the sum >= 1 (no underflow of x^p, finite gradients)
            y = F.relu(probs * n - self.offset)
            m = y.amax(-1, keepdim=True)
            ok = m > 0
            r = (y / torch.where(ok, m, torch.ones_like(m))).pow(self.p)
            probs = torch.where(ok, r / r.sum(-1, keepdim=True).clamp(min=1.0), probs)
        p_drop = self.dropout if self.training else 0.0
        attn = F.dropout(probs, p_drop, training=True) if p_drop > 0 else probs
        return attn @ v, (probs if need_weights else None)
