"""NoiseFiT's adaptive noise function.

For a hidden state ``h`` (B, T, C), per token (statistics over the hidden dimension C)::

    var    = h.var(-1)                               (unbiased, as torch's default)
    factor = clamp(exp(var / (mean_tokens(var) + 1e-6)), max=5)
    med    = median(h, -1)                           (torch's median: the lower middle value)
    mad    = median(|h - med|, -1), clamped >= 1e-6 * ||h||_2
    w      = exp(-beta * |h - med| / (mad + 1e-6))   (beta = 0.1)
    scale  = base_std * mad * w * factor
    noise  = randn_like(h) * scale                   (zero mean, per-element std = scale)

``base_std = s * std(h)`` with ``std(h)`` one scalar over the (real) tokens of the batch.

**Noise-scale convention** (``noise_scale``). The public v1 code measures the SNR with
``s = sigma0`` but trains with ``s = sigma0**2`` (the hook multiplies ``sigma0 * std(h)`` by
``sigma0`` once more). We default to ``"sigma0"``: one noise function, ``s = sigma0``, both when
the SNR is measured and when training, so the layers are selected for the noise they will
receive. ``"sigma0_squared"`` reproduces v1: SNR with ``sigma0``, training with ``sigma0**2``.
The config's default ``sigma0 = 0.01`` equals v1's effective training noise (0.1**2).
(Layer *selection* does not depend on the convention: ``s`` scales every layer's noise alike.)

Differences from v1, on purpose:

* statistics that pool over tokens (``std(h)``, ``mean_tokens(var)``) can be restricted to the
  real tokens with ``token_mask`` (v1 pools padding too);
* the scale is computed without gradient (``scale.detach()``): the noise is a perturbation,
  the gradient flows through ``h + noise`` to ``h`` unchanged (v1 also backpropagates through
  the random scale, which only adds a zero-mean random term to the gradient).
"""

from __future__ import annotations

from typing import Literal

import torch

NoiseScale = Literal["sigma0", "sigma0_squared"]
NOISE_SCALES = ("sigma0", "sigma0_squared")
EPS = 1e-6
FACTOR_MAX = 5.0


def scale_multiplier(sigma0: float, noise_scale: str = "sigma0", *, training: bool = True) -> float:
    """``s`` in ``base_std = s * std(h)``: ``sigma0``, or ``sigma0**2`` when training under
    the v1 convention ``"sigma0_squared"`` (the SNR always uses ``sigma0``)."""
    if noise_scale not in NOISE_SCALES:
        raise ValueError(f"noise_scale = {noise_scale!r} is not allowed: choose one of {', '.join(NOISE_SCALES)}")
    if not sigma0 > 0:
        raise ValueError(f"sigma0 = {sigma0!r} is out of range: allowed 0 < sigma0")
    return sigma0 * sigma0 if (training and noise_scale == "sigma0_squared") else sigma0


def _masked(h: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, C) -> (N, C): the rows of real tokens (all rows when no mask)."""
    if token_mask is None:
        return h.reshape(-1, h.size(-1))
    return h[token_mask.bool()]


def hidden_std(h: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One scalar: the standard deviation of every entry of ``h`` over the real tokens."""
    return _masked(h.detach(), token_mask).float().std()


@torch.no_grad()
def noise_scale(
    h: torch.Tensor, base_std: float | torch.Tensor, beta: float = 0.1, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The per-element standard deviation ``base_std * mad * w * factor`` (B, T, C) of the
    adaptive noise (no gradient). ``token_mask`` (B, T) restricts the mean of the per-token
    variances to the real tokens."""
    x = h.detach().float()
    var = x.var(dim=-1, keepdim=True)
    mean_var = _masked(var, token_mask).mean()
    factor = torch.exp(var / (mean_var + EPS)).clamp(max=FACTOR_MAX)
    med = x.median(dim=-1, keepdim=True).values
    dev = (x - med).abs()
    mad = dev.median(dim=-1, keepdim=True).values
    mad = torch.maximum(mad, EPS * x.norm(dim=-1, keepdim=True))
    w = torch.exp(-beta * dev / (mad + EPS))
    return (base_std * mad * w * factor).to(h.dtype)


def adaptive_noise(
    h: torch.Tensor,
    s: float,
    beta: float = 0.1,
    token_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A draw of the noise (same shape as ``h``) with ``base_std = s * std(h)``."""
    base = s * hidden_std(h, token_mask)
    scale = noise_scale(h, base, beta, token_mask)
    eps = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
    return eps * scale


@torch.no_grad()
def relative_rms(noise: torch.Tensor, h: torch.Tensor, token_mask: torch.Tensor | None = None) -> float:
    """RMS(noise) / RMS(h) over the real tokens: the relative noise magnitude at the injection
    point (the dose-response axis, comparable between NoiseFiT and NEFTune)."""
    n, x = _masked(noise.detach().float(), token_mask), _masked(h.detach().float(), token_mask)
    return float(n.pow(2).mean().sqrt() / x.pow(2).mean().sqrt().clamp(min=EPS))


def add_noise(
    h: torch.Tensor,
    s: float,
    beta: float = 0.1,
    token_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``h + adaptive_noise(h, ...)``; gradient flows to ``h`` as through the identity."""
    return h + adaptive_noise(h, s, beta, token_mask, generator)
