"""The entropy regularizer (paper Algorithm 1), as a mean.

For every layer ``l``, head ``h``, batch row ``b`` and query ``i``::

    Emax  = log S                      (S = number of key positions, the context length)
    Tol   = gamma * Emax
    delta = H[l, b, h, i] - theta[l, h] * Emax
    pen   = delta**2  if |delta| > Tol  else 0          (two-sided)

``L_ent`` averages ``pen`` over heads, then over layers, then over batch rows and (non-padding)
queries; the training loss is ``CE + lam * L_ent``. ``theta`` is a learnable (L, H) threshold
(initialised to ``theta_init``, 0.5 by default: the paper does not publish it) and is never
weight-decayed. The regularizer returns 0 in eval mode.

Conversion from the paper's coefficient: the public code *sums* the penalty over the batch x
query elements (and averages over heads and layers), so its ``lambda_sum`` relates to our
mean coefficient by ``lam = lambda_sum * B * T``: ``1e-5`` at B = 128, T = 128 is ``lam ~ 0.164``.
Unlike the public usage example, every layer has its own thresholds (it reused layer 0's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from trustlab.entropy_attention.entropy import _stack, row_entropy
from trustlab.lm.gpt import no_weight_decay


def lam_from_summed(lambda_sum: float, batch_size: int, seq_len: int) -> float:
    """Our per-element mean coefficient equivalent to the paper's summed ``lambda``."""
    return lambda_sum * batch_size * seq_len


class EntropyRegularizer(nn.Module):
    def __init__(self, n_layer: int, n_head: int, gamma: float = 0.2, theta_init: float = 0.5):
        super().__init__()
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma = {gamma} is not allowed: the tolerance must be in [0, 1)")
        self.n_layer, self.n_head = n_layer, n_head
        self.gamma = float(gamma)
        self.theta_init = float(theta_init)
        self.theta = no_weight_decay(nn.Parameter(torch.full((n_layer, n_head), self.theta_init)))

    def init_weights(self) -> None:
        with torch.no_grad():
            self.theta.fill_(self.theta_init)

    def extra_repr(self) -> str:
        return f"n_layer={self.n_layer}, n_head={self.n_head}, gamma={self.gamma}"

    def penalty_terms(
        self, attentions: Sequence[torch.Tensor] | torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-element penalties (L, B, H, T) (differentiable w.r.t. theta and the attentions)."""
        A = _stack(attentions)
        L, B, H, T, S = A.shape
        if (L, H) != (self.n_layer, self.n_head):
            raise ValueError(f"attentions have {L} layers x {H} heads; the regularizer has {self.n_layer} x {self.n_head}")
        ent = row_entropy(A, None if mask is None else mask.unsqueeze(0))  # (L, B, H, T)
        emax = math.log(S) if S > 1 else 1.0
        delta = ent - self.theta[:, None, :, None] * emax
        outside = delta.abs() > self.gamma * emax
        return torch.where(outside, delta.square(), torch.zeros_like(delta))

    def forward(
        self,
        attentions: Sequence[torch.Tensor] | torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``L_ent`` (a scalar); 0 in eval mode. ``query_mask`` (B, T): 0 = padding query."""
        if not self.training:
            return self.theta.new_zeros(())
        pen = self.penalty_terms(attentions, mask)  # (L, B, H, T)
        per_bt = pen.mean(2).mean(0)  # heads, then layers -> (B, T)
        if query_mask is None:
            return per_bt.mean()
        q = query_mask.to(per_bt.dtype)
        return (per_bt * q).sum() / q.sum().clamp(min=1)


def attach_regularizer(model: nn.Module, gamma: float = 0.2, theta_init: float = 0.5) -> EntropyRegularizer:
    """Give ``model`` (a GPT) an ``entropy_reg`` submodule, so that theta is trained by the
    model's own optimizer (``GPT.configure_optimizers``; flagged: never decayed)."""
    cfg = model.config
    reg = EntropyRegularizer(cfg.n_layer, cfg.n_head, gamma, theta_init)
    model.add_module("entropy_reg", reg)
    return reg


def get_regularizer(model: nn.Module) -> EntropyRegularizer | None:
    reg = getattr(model, "entropy_reg", None)
    return reg if isinstance(reg, EntropyRegularizer) else None
