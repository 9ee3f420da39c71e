"""Masked causal-LM losses.

Position t of the logits predicts token t+1. A target counts when its own ``loss_mask`` is 1
(answer tokens and <eos> of a prompt/answer example; every real token of raw text), so prompt
and padding targets never contribute. ``token_losses`` / ``shift_for_loss`` give the same
alignment and mask to other per-token terms (NoiseFiT's KL terms, R-Drop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_for_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None):
    """-> (logits (B, T-1, V), targets (B, T-1), mask (B, T-1) float) aligned for next-token
    prediction. ``loss_mask`` None means every target counts."""
    logits = logits[:, :-1]
    targets = input_ids[:, 1:]
    if loss_mask is None:
        mask = torch.ones_like(targets, dtype=logits.dtype)
    else:
        mask = loss_mask[:, 1:].to(logits.dtype)
    return logits, targets, mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over entries with mask 1 (0 if none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def token_losses(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None):
    """Per-token cross-entropy -> (losses (B, T-1), mask (B, T-1)); losses at masked
    positions are computed but must be ignored (multiply by the mask)."""
    logits, targets, mask = shift_for_loss(logits, input_ids, loss_mask)
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
    return losses.view_as(targets), mask


def causal_lm_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over counted targets."""
    losses, mask = token_losses(logits, input_ids, loss_mask)
    return masked_mean(losses, mask)
