"""Per-head attention entropy (definitions in docs/methods/entropy_attention.md).

For query ``i`` of head ``h`` in layer ``l``: ``H_i = -sum_j a_ij log a_ij`` over the keys the
query may attend to (causal and not padding). Masked probabilities are exactly 0 in every
kernel of :mod:`trustlab.lm.gpt` (``masked_softmax``) and here, so they contribute nothing; we
also zero them explicitly when a mask is given.

``0 log 0 = 0`` is computed exactly (``a * log(where(a > 0, a, 1))``), which is also safe for
gradients through masked entries. The paper writes ``log(a + 1e-9)``; that differs from the
exact form by at most ``~ S * 1e-9`` nats per query (pass ``eps=1e-9`` to get it).

``E(l, h)`` is the mean of ``H_i`` over batch rows and (non-padding) query positions. Under
causal masking uniform attention gives query ``i`` (1-based) entropy ``log i``, so the maximum
of ``E`` is ``(1/T) sum_{i=1..T} log i`` (3.878 nats at T = 128), not ``log T``: normalised
entropies divide by that (more generally, by the mean of ``log(row length)`` over the same
queries, which equals it for unpadded windows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

QUARTILE_EDGES = (0.25, 0.5, 0.75)


def uniform_causal_entropy(T: int) -> float:
    """``(1/T) sum_{i=1..T} log i``: mean entropy of uniform causal attention over T queries."""
    if T < 1:
        raise ValueError(f"T = {T} must be >= 1")
    return math.fsum(math.log(i) for i in range(1, T + 1)) / T


def row_entropy(probs: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """Entropy (nats) of each row of ``probs`` (..., S) over its last dimension -> (...).

    ``mask`` (broadcastable to ``probs``, True = may attend): entries outside it are set to 0
    before the sum, so they contribute nothing whatever their value. ``eps > 0`` uses the
    paper's ``log(a + eps)``; the default computes ``0 log 0 = 0`` exactly."""
    if mask is not None:
        probs = probs.masked_fill(~mask.bool(), 0.0)
    if eps > 0:
        logp = torch.log(probs + eps)
    else:
        logp = torch.log(torch.where(probs > 0, probs, torch.ones_like(probs)))
    return -(probs * logp).sum(-1)


def _stack(attentions: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """(L, B, H, T, S) from a tuple of (B, H, T, S) or an already stacked tensor."""
    if isinstance(attentions, torch.Tensor):
        return attentions if attentions.dim() == 5 else attentions.unsqueeze(0)
    return torch.stack(list(attentions), dim=0)


def row_lengths(T: int, S: int, mask: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Number of keys each query may attend to: (B, T) from a (B, 1, T, S) mask, else the
    causal ``S - T + i + 1`` as (1, T)."""
    if mask is not None:
        return mask.reshape(mask.shape[0], -1, T, S)[:, 0].sum(-1)
    return torch.arange(S - T + 1, S + 1, device=device).unsqueeze(0)


@dataclass
class EntropyStats:
    """Entropies of one forward pass.

    per_element: (L, B, H, T) nats; per_query: (L, H, T) mean over batch rows (valid queries);
    mean: (L, H) the head means E(l, h); max_uniform: the uniform-causal maximum of ``mean``.
    """

    per_element: torch.Tensor
    per_query: torch.Tensor
    mean: torch.Tensor
    max_uniform: float

    @property
    def normalised(self) -> torch.Tensor:
        """(L, H) ``E(l, h) / max_uniform`` in [0, 1]."""
        return self.mean / self.max_uniform

    @property
    def layer_mean(self) -> torch.Tensor:
        """(L,) mean over heads."""
        return self.mean.mean(-1)


def attention_entropy(
    attentions: Sequence[torch.Tensor] | torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    eps: float = 0.0,
) -> EntropyStats:
    """Entropy per layer, head and query of ``GPTOutput.attentions`` (a tuple of L tensors
    (B, H, T, S), or a stacked (L, B, H, T, S) tensor).

    mask: optional (B, 1, T, S) "may attend" mask (as given to kernels); query_mask:
    optional (B, T) 0/1, queries with 0 (padding) are left out of every mean."""
    A = _stack(attentions)
    L, B, H, T, S = A.shape
    m = mask.unsqueeze(0) if mask is not None else None
    ent = row_entropy(A, m, eps)  # (L, B, H, T)
    lengths = row_lengths(T, S, mask, device=A.device).to(ent.dtype).expand(B, T)
    q = torch.ones(B, T, dtype=ent.dtype, device=ent.device) if query_mask is None else query_mask.to(ent.dtype)
    if q.shape != (B, T):
        raise ValueError(f"query_mask shape {tuple(q.shape)} != (B, T) = {(B, T)}")
    w = q[None, :, None, :]  # (1, B, 1, T)
    per_query = (ent * w).sum(1) / q.sum(0).clamp(min=1)[None, None, :]  # (L, H, T)
    mean = (ent * w).sum((1, 3)) / q.sum().clamp(min=1)  # (L, H)
    max_uniform = float((torch.log(lengths) * q).sum() / q.sum().clamp(min=1))
    return EntropyStats(per_element=ent, per_query=per_query, mean=mean, max_uniform=max_uniform)


# ---------------------------------------------------------------------------------------------
# summaries of the (L, H) head means


def head_bins(normalised, edges: Sequence[float] = QUARTILE_EDGES) -> list[float]:
    """Fraction of heads in each bin of the normalised entropy: [0, .25), [.25, .5), [.5, .75),
    [.75, 1] for the default quartile edges (values above 1 go to the top bin)."""
    x = torch.as_tensor(normalised, dtype=torch.float64).flatten()
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return [float("nan")] * (len(edges) + 1)
    idx = torch.bucketize(x, torch.tensor(list(edges), dtype=torch.float64), right=True)
    counts = torch.bincount(idx, minlength=len(edges) + 1).to(torch.float64)
    return (counts / x.numel()).tolist()


def overloaded_fraction(normalised, threshold: float = 0.95) -> float:
    """Fraction of heads whose mean entropy is above ``threshold`` x the uniform-causal max."""
    x = torch.as_tensor(normalised, dtype=torch.float64).flatten()
    x = x[torch.isfinite(x)]
    return float((x > threshold).double().mean()) if x.numel() else float("nan")


def collapsed_fraction(raw, threshold: float = 0.1) -> float:
    """Fraction of heads whose mean entropy is below ``threshold`` nats (near one-hot)."""
    x = torch.as_tensor(raw, dtype=torch.float64).flatten()
    x = x[torch.isfinite(x)]
    return float((x < threshold).double().mean()) if x.numel() else float("nan")
