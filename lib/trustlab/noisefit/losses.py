"""Losses of the NoiseFiT family and its baselines.

Every per-token term uses the shared causal-LM alignment: ``shift_for_loss`` (position t
predicts token t+1; a target counts iff its own ``loss_mask`` is 1) and ``masked_mean`` over
the counted targets, so CE, the soft KL, the consistency KL and R-Drop's KL are averaged over
exactly the same tokens (v1 forgot the shift for its KL mask; we do not).

* :func:`hybrid_loss` — NoiseFiT (docs/methods/noisefit.md)::

      teacher = softmax(clean / T)        (detached by default; v1 lets gradient flow into it)
      soft    = mean_k KL(teacher || softmax(noisy_k))
      cons    = KL(softmax(noisy_2) || softmax(noisy_1))
      total   = w_ce * CE(clean) + w_soft * soft + w_cons * cons

  with ``(w_ce, w_soft, w_cons) = (alpha, 1 - alpha, lambda)`` for full NoiseFiT; the ablations
  set other weights (``trustlab.noisefit.objectives.loss_weights``). As in v1, ``T`` softens the
  teacher only (the students are plain softmaxes), and there is no T**2 factor; T = 1 default.
* :func:`rdrop_loss` — mean CE of two dropout passes + ``weight`` * symmetric KL.
* :class:`NEFTune` — uniform noise on the input embeddings (training mode only).
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.lm.hooks import input_embeddings
from trustlab.lm.losses import masked_mean, shift_for_loss


def kl_tokens(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-position KL(p || q) = sum_v p (log p - log q) from log-probabilities (..., V)."""
    p = p_logprobs.exp()
    return (p * (p_logprobs - q_logprobs)).sum(-1)


def masked_kl(p_logits, q_logits, mask, *, temperature_p: float = 1.0) -> torch.Tensor:
    """Masked mean over positions of KL(softmax(p/T_p) || softmax(q)); logits already shifted."""
    lp = F.log_softmax(p_logits.float() / temperature_p, dim=-1)
    lq = F.log_softmax(q_logits.float(), dim=-1)
    return masked_mean(kl_tokens(lp, lq), mask)


def ce_from_shifted(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
    return masked_mean(losses.view_as(targets), mask)


def hybrid_loss(
    clean_logits: torch.Tensor | None,
    noisy_logits: Sequence[torch.Tensor],
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    lambda_consistency: float = 0.1,
    temperature: float = 1.0,
    detach_teacher: bool = True,
    weights: tuple[float, float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """NoiseFiT's hybrid loss -> ``{"total", "ce", "soft", "consistency"}`` (scalars; a term
    that cannot be computed is absent). ``weights`` = (w_ce, w_soft, w_cons) overrides
    ``(alpha, 1 - alpha, lambda_consistency)``. Zero-weighted terms are still computed (under
    no grad) for logging when their inputs exist. With ``clean_logits=None`` the CE is taken on
    the first noisy pass ("noise with CE only")."""
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature} must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha = {alpha} must be in [0, 1]")
    w_ce, w_soft, w_cons = weights if weights is not None else (alpha, 1.0 - alpha, lambda_consistency)
    noisy = list(noisy_logits)
    if w_cons and len(noisy) < 2:
        raise ValueError("the consistency term needs two noisy passes")
    if w_soft and (clean_logits is None or not noisy):
        raise ValueError("the soft term needs a clean pass and at least one noisy pass")

    out: dict[str, torch.Tensor] = {}
    total = None

    def add(name: str, weight: float, fn):
        nonlocal total
        if weight:
            value = fn()
            total = weight * value if total is None else total + weight * value
        else:
            with torch.no_grad():
                value = fn()
        out[name] = value

    ref = clean_logits if clean_logits is not None else noisy[0]
    _, targets, mask = shift_for_loss(ref, input_ids, loss_mask)
    add("ce", w_ce, lambda: ce_from_shifted(ref[:, :-1], targets, mask))
    if clean_logits is not None and noisy:
        def soft():
            teacher = clean_logits[:, :-1]
            if detach_teacher:
                teacher = teacher.detach()
            return sum(masked_kl(teacher, n[:, :-1], mask, temperature_p=temperature) for n in noisy) / len(noisy)

        add("soft", w_soft, soft)
    if len(noisy) >= 2:
        add("consistency", w_cons, lambda: masked_kl(noisy[1][:, :-1], noisy[0][:, :-1], mask))
    if total is None:
        raise ValueError("every loss weight is zero: nothing to train")
    out["total"] = total
    return out


def symmetric_kl(logits1: torch.Tensor, logits2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0.5 * (KL(p1 || p2) + KL(p2 || p1)), masked mean over (already shifted) positions."""
    l1 = F.log_softmax(logits1.float(), dim=-1)
    l2 = F.log_softmax(logits2.float(), dim=-1)
    return masked_mean(0.5 * (kl_tokens(l1, l2) + kl_tokens(l2, l1)), mask)


def rdrop_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """R-Drop: ``0.5 * (CE_1 + CE_2) + weight * symmetric KL`` over two dropout passes ->
    ``{"total", "ce", "consistency"}`` (the symmetric KL is logged as the consistency term)."""
    a, targets, mask = shift_for_loss(logits1, input_ids, loss_mask)
    b = logits2[:, :-1]
    ce = 0.5 * (ce_from_shifted(a, targets, mask) + ce_from_shifted(b, targets, mask))
    kl = symmetric_kl(a, b, mask)
    return {"ce": ce, "consistency": kl, "total": ce + weight * kl}


# ---------------------------------------------------------------------------------------------
# NEFTune

_NEFT_ATTR = "_trustlab_neftune"


class NEFTune:
    """Uniform noise on the token embeddings during training (Jain et al. 2023).

    A forward hook on ``input_embeddings(model)`` adds ``U(-m, m)`` with
    ``m = alpha / sqrt(L * d)`` per sequence, ``L`` its true (unpadded) length and ``d`` the
    embedding dim; padding positions get exactly zero noise. Real tokens are given by the
    ``attention_mask`` of the current batch (``with neft.batch(mask): model(...)``) or, when
    none is set, by ``input_ids != pad_id`` (the hook's ``args[0]``); without either, every
    position is real. Active only while the embedding module is in training mode, so eval,
    generation and scoring are noise-free. Registering twice on one model is refused.
    """

    def __init__(self, model: nn.Module, alpha: float = 5.0, pad_id: int | None = None):
        if not alpha > 0:
            raise ValueError(f"neftune alpha = {alpha!r} is out of range: allowed 0 < alpha")
        self.embedding = input_embeddings(model)
        self.alpha = float(alpha)
        self.pad_id = pad_id
        self._handle = None
        self._mask: torch.Tensor | None = None
        self.last_magnitude: torch.Tensor | None = None  # (B,) m of the last noised batch
        self.calls = 0
        self.ratio_sum = 0.0  # sum over noised batches of RMS(noise) / RMS(embeddings), real tokens

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def attach(self) -> "NEFTune":
        if self._handle is not None:
            return self
        other = getattr(self.embedding, _NEFT_ATTR, None)
        if other is not None and other is not self:
            raise RuntimeError("NEFTune is already registered on this model's input embeddings; detach() it first")
        setattr(self.embedding, _NEFT_ATTR, self)
        self._handle = self.embedding.register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if getattr(self.embedding, _NEFT_ATTR, None) is self:
            delattr(self.embedding, _NEFT_ATTR)

    @contextlib.contextmanager
    def batch(self, attention_mask: torch.Tensor | None):
        prev, self._mask = self._mask, attention_mask
        try:
            yield self
        finally:
            self._mask = prev

    def real_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._mask is not None and self._mask.shape == input_ids.shape:
            return self._mask.bool()
        if self.pad_id is not None:
            return input_ids != self.pad_id
        return torch.ones_like(input_ids, dtype=torch.bool)

    def magnitude(self, real: torch.Tensor, dim: int) -> torch.Tensor:
        """(B, T) bool -> (B,) ``alpha / sqrt(L * d)``."""
        L = real.sum(-1).clamp(min=1).to(torch.float32)
        return self.alpha / torch.sqrt(L * dim)

    def _hook(self, module, args, output):
        if not module.training:
            return None
        input_ids = args[0] if args else None
        if input_ids is None or input_ids.dim() != 2:
            return None
        real = self.real_tokens(input_ids)
        m = self.magnitude(real, output.size(-1))
        self.last_magnitude = m.detach()
        u = torch.empty_like(output).uniform_(-1.0, 1.0)
        noise = u * m.to(output.dtype)[:, None, None] * real.to(output.dtype)[..., None]
        with torch.no_grad():
            keep = real.bool()
            self.ratio_sum += float(noise[keep].pow(2).mean().sqrt() / output[keep].pow(2).mean().sqrt().clamp(min=1e-6))
        self.calls += 1
        return output + noise

    @property
    def mean_ratio(self) -> float:
        """Mean RMS(noise) / RMS(embeddings) over the noised batches (NaN before any)."""
        return self.ratio_sum / self.calls if self.calls else float("nan")


def neftune_magnitude(alpha: float, length: int, dim: int) -> float:
    """The scalar ``alpha / sqrt(L * d)``."""
    return alpha / math.sqrt(length * dim)
