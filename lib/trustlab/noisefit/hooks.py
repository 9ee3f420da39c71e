"""Forward hooks that noise the outputs of the selected decoder blocks.

The hooks are registered once (``attach``) and do nothing until a *noisy pass* is entered::

    injector = NoiseInjector(model, layers=[2, 3], sigma0=0.1).attach()
    with injector.noisy(attention_mask):      # noise on, for forward passes inside
        noisy_logits = model(ids, attention_mask).logits
    clean_logits = model(ids, attention_mask).logits    # no noise outside

Noise is applied only when **both** hold: inside ``noisy()`` and the block is in training
mode. So evaluation, ``generate`` and ``score_continuations`` (which run in eval mode) never see
noise, even if called inside a noisy pass by mistake; outside a noisy pass the hooked model is
bit-identical to the unhooked one (the hook returns ``None``, draws no random numbers).

Works on every model ``trustlab.lm.hooks.decoder_blocks`` knows (our GPT, HF models through
``trustlab.lm.hf_backend``, PEFT-wrapped ones).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn

from trustlab.lm.hooks import add_block_hook, decoder_blocks
from trustlab.noisefit.noise import NOISE_SCALES, adaptive_noise, relative_rms, scale_multiplier

_ATTR = "_trustlab_noisefit_injector"


class NoiseInjector:
    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        *,
        sigma0: float,
        beta: float = 0.1,
        noise_scale: str = "sigma0",
        generator: torch.Generator | None = None,
    ):
        blocks = decoder_blocks(model)
        layers = [int(i) for i in layers]
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad or len(set(layers)) != len(layers):
            raise ValueError(
                f"layers = {layers} must be distinct indices in [0, {len(blocks)}) "
                f"(the model has {len(blocks)} decoder layers)"
            )
        if noise_scale not in NOISE_SCALES:
            raise ValueError(f"noise_scale = {noise_scale!r} is not allowed: choose one of {', '.join(NOISE_SCALES)}")
        self.model = model
        self.blocks = blocks
        self.layers = layers
        self.sigma0 = float(sigma0)
        self.beta = float(beta)
        self.noise_scale = noise_scale
        self.s = scale_multiplier(self.sigma0, noise_scale, training=True)
        self.generator = generator
        self._handles: list = []
        self._active = False
        self._token_mask: torch.Tensor | None = None
        self.calls = 0  # number of hidden states noised (for tests and logging)
        self.ratio_sum = 0.0  # sum over noised hidden states of RMS(noise) / RMS(h) (the dose actually given)

    # -- registration -----------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "NoiseInjector":
        """Register the hooks (idempotent). Another injector on the same blocks is an error."""
        if self._handles:
            return self
        for i in self.layers:
            other = getattr(self.blocks[i], _ATTR, None)
            if other is not None and other is not self:
                raise RuntimeError(
                    f"decoder block {i} already has a NoiseFiT noise hook; detach() the other injector first"
                )
        for i in self.layers:
            block = self.blocks[i]
            setattr(block, _ATTR, self)
            self._handles.append(add_block_hook(block, self._make_fn(block)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        for i in self.layers:
            if getattr(self.blocks[i], _ATTR, None) is self:
                delattr(self.blocks[i], _ATTR)
        self._handles = []

    # -- the noisy pass -----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._active

    @contextlib.contextmanager
    def noisy(self, token_mask: torch.Tensor | None = None):
        """Forward passes inside add noise to the selected blocks (training mode only).
        ``token_mask`` (B, T): pooled statistics use only its real tokens."""
        if not self._handles:
            raise RuntimeError("NoiseInjector.noisy() before attach(): no hooks are registered")
        prev = (self._active, self._token_mask)
        self._active, self._token_mask = True, token_mask
        try:
            yield self
        finally:
            self._active, self._token_mask = prev

    @property
    def mean_ratio(self) -> float:
        """Mean RMS(noise) / RMS(h) over every hidden state noised so far (NaN before any)."""
        return self.ratio_sum / self.calls if self.calls else float("nan")

    def _make_fn(self, block: nn.Module):
        def fn(h: torch.Tensor):
            if not (self._active and block.training):
                return None
            mask = self._token_mask
            if mask is not None and mask.shape != h.shape[:2]:
                mask = None  # e.g. a cached decoding step: fall back to all tokens
            noise = adaptive_noise(h, self.s, self.beta, mask, self.generator)
            self.calls += 1
            self.ratio_sum += relative_rms(noise, h, mask)
            return h + noise

        return fn
