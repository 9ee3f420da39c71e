"""Fine-tuning objectives: what one training step computes, one registered class each.

An objective is built from the ``noisefit:`` config and the variant's keyword arguments
(``build_objective(variant, cfg)``) and plugged into ``NoiseFitModule``:

* ``setup(module)``    once, when the module is made: check the model, build the machinery
  the objective needs (NEFTune's embedding hook, ...);
* ``enter(module)``    switch that machinery on (idempotent: called at the start of training
  and before every loss);
* ``release(module)``  switch it off: the model is a plain model again;
* ``loss(module, batch)`` -> the loss parts ``{"ce", "soft", "consistency", "total"}`` (those
  the objective computes; ``total`` is minimised);
* ``forward_passes``   forward passes per training step. A clean pass that runs without
  gradient (``kl_only`` with a detached teacher, ``consistency_only``) is counted: it costs a
  forward, though no backward.

A new fine-tuning method is one more registered class here and one row in
``trustlab.noisefit.variants.VARIANTS``.
"""

from __future__ import annotations

from typing import Any

import torch

from trustlab.core.registry import Registry
from trustlab.lm.hooks import decoder_blocks
from trustlab.lm.losses import causal_lm_loss
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.hooks import NoiseInjector
from trustlab.noisefit.losses import NEFTune, hybrid_loss, rdrop_loss
from trustlab.noisefit.snr import layer_snr, select_layers
from trustlab.noisefit.variants import Variant

OBJECTIVES: Registry = Registry("fine-tuning objective")

# (w_ce, w_soft, w_consistency) of each ``terms`` setting of the hybrid loss
TERMS = {
    "hybrid": lambda alpha, lam: (alpha, 1.0 - alpha, lam),
    "no_consistency": lambda alpha, lam: (alpha, 1.0 - alpha, 0.0),
    "no_soft": lambda alpha, lam: (alpha, 0.0, lam),
    "kl_only": lambda alpha, lam: (0.0, 1.0, 0.0),
    "consistency_only": lambda alpha, lam: (0.0, 0.0, 1.0),
    "ce_only": lambda alpha, lam: (1.0, 0.0, 0.0),  # CE on the noisy pass
}


def loss_weights(terms: str, alpha: float, lambda_consistency: float) -> tuple[float, float, float]:
    """(w_ce, w_soft, w_consistency) of a ``terms`` setting (``ce_only``: CE weight 1)."""
    if terms not in TERMS:
        raise ValueError(f"terms = {terms!r} is not allowed: choose one of {', '.join(TERMS)}")
    return TERMS[terms](alpha, lambda_consistency)


def build_objective(variant: Variant, cfg: NoiseFitConfig | None = None) -> "Objective":
    """The variant's objective, with the variant's keyword arguments."""
    return OBJECTIVES.build(variant.objective, cfg=cfg or NoiseFitConfig(), **variant.options)


def forward_passes(variant: Variant) -> int:
    return build_objective(variant).forward_passes


def _ce(module, batch) -> torch.Tensor:
    return causal_lm_loss(module(batch).logits, batch["input_ids"], batch["loss_mask"])


class Objective:
    """Masked cross-entropy of one clean pass; the base every objective refines."""

    forward_passes = 1

    def __init__(self, cfg: NoiseFitConfig | None = None):
        self.cfg = cfg or NoiseFitConfig()

    def setup(self, module) -> None:
        pass

    def enter(self, module) -> None:
        pass

    def release(self, module) -> None:
        pass

    def loss(self, module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        loss = _ce(module, batch)
        return {"ce": loss, "total": loss}

    def selection_info(self) -> dict[str, Any]:
        """The per-layer SNR and selected layers (empty for objectives that select none)."""
        return {}

    def noise_ratio(self) -> float:
        """Mean RMS(noise) / RMS(the activation it is added to) at the injection point in training
        (NaN for objectives that inject no noise)."""
        return float("nan")


@OBJECTIVES.register("sft")
class SFT(Objective):
    """Plain fine-tuning: masked cross-entropy, one pass."""


@OBJECTIVES.register("neftune")
class NEFTuneObjective(Objective):
    """NEFTune: cross-entropy with uniform noise alpha/sqrt(L*d) on the input embeddings."""

    def setup(self, module) -> None:
        self.neftune = NEFTune(module.model, self.cfg.neftune_alpha, module.pad_id)

    def enter(self, module) -> None:
        self.neftune.attach()

    def release(self, module) -> None:
        self.neftune.detach()

    def noise_ratio(self) -> float:
        return self.neftune.mean_ratio

    def loss(self, module, batch):
        self.enter(module)
        with self.neftune.batch(batch["attention_mask"]):
            loss = _ce(module, batch)
        return {"ce": loss, "total": loss}


@OBJECTIVES.register("rdrop")
class RDrop(Objective):
    """R-Drop: mean CE of two dropout passes + rdrop_weight * symmetric KL between them.

    Dropout is set to ``rdrop_dropout`` for the run (restored by ``release``); a model without
    dropout is an error."""

    forward_passes = 2

    def __init__(self, cfg: NoiseFitConfig | None = None):
        super().__init__(cfg)
        self._saved_dropout: list[tuple[Any, str, float]] | None = None

    def setup(self, module) -> None:
        if not self.cfg.rdrop_dropout > 0:
            raise ValueError(f"R-Drop needs dropout > 0: noisefit.rdrop_dropout = {self.cfg.rdrop_dropout}")
        if not dropout_sites(module.model):
            raise ValueError(
                f"R-Drop needs dropout > 0, but {type(module.model).__name__} has no dropout to switch on"
            )

    def enter(self, module) -> None:
        if self._saved_dropout is None:
            self._saved_dropout = dropout_sites(module.model)
            for obj, attr, _ in self._saved_dropout:
                setattr(obj, attr, self.cfg.rdrop_dropout)

    def release(self, module) -> None:
        if self._saved_dropout is not None:
            for obj, attr, value in self._saved_dropout:
                setattr(obj, attr, value)
            self._saved_dropout = None

    def loss(self, module, batch):
        self.enter(module)
        first, second = module(batch).logits, module(batch).logits
        return rdrop_loss(first, second, batch["input_ids"], batch["loss_mask"], weight=self.cfg.rdrop_weight)


@OBJECTIVES.register("noisefit")
class NoiseFiT(Objective):
    """NoiseFiT: alpha*CE(clean) + (1-alpha)*KL(clean || noisy) + lambda*KL(noisy2 || noisy1).

    The noise hooks sit on the k decoder blocks of the largest (or lowest) SNR, measured on the
    first training batch before any update (or on the batch given to ``select_layers``).
    ``terms`` switches parts of the loss off (the ablations, see ``TERMS``)."""

    forward_passes = 3  # clean + two noisy

    def __init__(self, cfg: NoiseFitConfig | None = None, selection: str = "largest", terms: str = "hybrid"):
        super().__init__(cfg)
        self.selection = selection
        self.terms = terms
        self.weights = loss_weights(terms, self.cfg.alpha, self.cfg.lambda_consistency)
        self.snr: dict[str, list[float]] | None = None
        self.layers: list[int] | None = None
        self.injector: NoiseInjector | None = None

    def setup(self, module) -> None:
        self.cfg.check_model(len(decoder_blocks(module.model)))

    def select_layers(self, module, batch: dict[str, Any]) -> list[int]:
        """Per-layer SNR on ``batch`` (eval mode, no grad), the top-k layers of the selection,
        and the noise hooks on them."""
        cfg = self.cfg
        snr = layer_snr(
            module.model,
            batch["input_ids"],
            batch.get("attention_mask"),
            sigma0=cfg.sigma0,
            beta=cfg.beta,
            n_draws=cfg.snr_draws,
            generator=module.snr_generator,
        )
        self.snr = {k: v.tolist() for k, v in snr.items()}
        self.layers = select_layers(snr["snr"], cfg.k, self.selection)
        if self.injector is not None:
            self.injector.detach()
        self.injector = NoiseInjector(
            module.model, self.layers, sigma0=cfg.sigma0, beta=cfg.beta, noise_scale=cfg.noise_scale
        ).attach()
        return self.layers

    def selection_info(self) -> dict[str, Any]:
        if self.snr is None:
            return {}
        return {
            **self.snr,
            "selected_layers": list(self.layers or []),
            "k": self.cfg.k,
            "sigma0": self.cfg.sigma0,
            "selection": self.selection,
            "noise_scale": self.cfg.noise_scale,
        }

    def noise_ratio(self) -> float:
        return self.injector.mean_ratio if self.injector is not None else float("nan")

    def enter(self, module) -> None:
        if self.injector is not None:
            self.injector.attach()

    def release(self, module) -> None:
        if self.injector is not None:
            self.injector.detach()

    def _ready(self, module, batch) -> None:
        if self.injector is None:
            self.select_layers(module, batch)
        self.enter(module)

    def loss(self, module, batch):
        self._ready(module, batch)
        cfg = self.cfg
        w_ce, w_soft, _ = self.weights
        # the clean pass needs a gradient only when a term that backpropagates through it is on
        needs_grad = bool(w_ce) or (bool(w_soft) and not cfg.detach_teacher)
        with torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):
            clean = module(batch).logits
        with self.injector.noisy(batch["attention_mask"]):
            noisy = [module(batch).logits, module(batch).logits]
        return hybrid_loss(clean, noisy, batch["input_ids"], batch["loss_mask"], temperature=cfg.temperature,
                           detach_teacher=cfg.detach_teacher, weights=self.weights)  # fmt: skip


@OBJECTIVES.register("noisy_ce")
class NoisyCE(NoiseFiT):
    """Noise with CE only: the cross-entropy of one noisy pass on the SNR-selected layers."""

    forward_passes = 1

    def __init__(self, cfg: NoiseFitConfig | None = None, selection: str = "largest"):
        super().__init__(cfg, selection=selection, terms="ce_only")

    def loss(self, module, batch):
        self._ready(module, batch)
        with self.injector.noisy(batch["attention_mask"]):
            noisy = [module(batch).logits]
        return hybrid_loss(None, noisy, batch["input_ids"], batch["loss_mask"], weights=self.weights)


def dropout_sites(model: torch.nn.Module) -> list[tuple[Any, str, float]]:
    """Every place a dropout probability lives: ``nn.Dropout.p`` and float ``dropout`` /
    ``attention_dropout`` attributes (our attention kernels, HF attention modules)."""
    sites = []
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            sites.append((m, "p", float(m.p)))
            continue
        for attr in ("dropout", "attention_dropout"):
            v = getattr(m, attr, None)
            if isinstance(v, float):
                sites.append((m, attr, v))
    return sites
