"""Per-layer signal-to-noise ratio and layer selection.

Computed once before fine-tuning, in eval mode with no gradient, on one training batch:

* ``hidden_states[1:]`` — the output of every decoder block (the embeddings are excluded);
* ``signal_l = mean |h_l|`` over all (real) tokens and dims;
* ``noise_l  = mean |noise(h_l)|`` averaged over ``n_draws`` (10) draws of the adaptive noise
  with ``base_std = sigma0 * std(h_l)`` (the SNR always uses ``sigma0``, whatever the training
  convention, as in v1);
* ``snr_l = signal_l / (noise_l + 1e-6)``.

A caveat applies: this SNR measures each layer's noise on its own clean hidden state,
not noise propagated through the network.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from trustlab.noisefit.noise import adaptive_noise

Selection = Literal["largest", "lowest"]
SELECTIONS = ("largest", "lowest")


def _mean_abs(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    if token_mask is None:
        return x.abs().float().mean()
    return x[token_mask.bool()].abs().float().mean()


@torch.no_grad()
def snr_from_hidden(
    hidden_states: Sequence[torch.Tensor],
    *,
    sigma0: float,
    beta: float = 0.1,
    n_draws: int = 10,
    token_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """SNR of each given hidden state (pass ``hidden_states[1:]``) -> dict of (L,) tensors
    ``snr``, ``signal``, ``noise``."""
    if n_draws < 1:
        raise ValueError(f"n_draws = {n_draws} must be >= 1")
    if not sigma0 > 0:
        raise ValueError(f"sigma0 = {sigma0!r} is out of range: allowed 0 < sigma0")
    signal, noise = [], []
    for h in hidden_states:
        signal.append(_mean_abs(h, token_mask))
        draws = [_mean_abs(adaptive_noise(h, sigma0, beta, token_mask, generator), token_mask) for _ in range(n_draws)]
        noise.append(torch.stack(draws).mean())
    signal_t, noise_t = torch.stack(signal), torch.stack(noise)
    return {"snr": signal_t / (noise_t + 1e-6), "signal": signal_t, "noise": noise_t}


@torch.no_grad()
def layer_snr(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    sigma0: float,
    beta: float = 0.1,
    n_draws: int = 10,
    generator: torch.Generator | None = None,
    mask_padding: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-block SNR of ``model`` (our GPT or an ``HFCausalLM``) on one batch, in eval mode
    with no gradient (the previous train/eval mode is restored). With ``mask_padding`` the
    statistics use only the tokens where ``attention_mask`` is 1."""
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids, attention_mask, output_hidden_states=True)
    finally:
        model.train(was_training)
    if out.hidden_states is None:
        raise ValueError(f"{type(model).__name__} returned no hidden_states for output_hidden_states=True")
    hidden = out.hidden_states[1:]
    token_mask = attention_mask if (mask_padding and attention_mask is not None) else None
    return snr_from_hidden(
        hidden, sigma0=sigma0, beta=beta, n_draws=n_draws, token_mask=token_mask, generator=generator
    )


def select_layers(snr: torch.Tensor | Sequence[float], k: int, selection: str = "largest") -> list[int]:
    """``topk(snr, k)``: the k highest-SNR layers (``"largest"``) or the k lowest
    (``"lowest"``), in topk order."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection = {selection!r} is not allowed: choose one of {', '.join(SELECTIONS)}")
    snr = torch.as_tensor(snr, dtype=torch.float64)
    n = snr.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} is out of range: the model has {n} decoder layers, so 1 <= k <= {n}")
    return torch.topk(snr, k, largest=(selection == "largest")).indices.tolist()
