"""One Lightning module for every fine-tuning variant, on the shared ``CausalLMModule``.

``NoiseFitModule(model, "noisefit_largest", cfg)`` overrides ``compute_loss(batch)``:

* ``sft``       masked CE (one pass);
* ``neftune``   CE with NEFTune noise on the input embeddings (one pass);
* ``rdrop``     two dropout passes, mean CE + ``rdrop_weight`` * symmetric KL; dropout is set to
  ``rdrop_dropout`` for the run (and restored after), an error if the model has no dropout;
* ``noisefit_*`` clean + two noisy passes and the hybrid loss (or the ablation's terms). The
  layers are selected from the per-layer SNR of the first training batch (before any update),
  or of the batch given to :meth:`NoiseFitModule.select_layers`.

Every step records the loss components in ``module.curve`` (``ce``, ``soft``, ``consistency``,
``total``; only those the variant computes) and its wall time in ``module.step_times``
(forward + backward + optimizer step). :func:`wandb_row` maps a curve row to the W&B keys
``noisefit/ce``, ``noisefit/soft``, ``noisefit/consistency``, ``noisefit/total``;
:meth:`NoiseFitModule.selection_info` gives the per-layer SNR and the selected layers.

Works with our GPT and with ``trustlab.lm.hf_backend`` models (anything ``decoder_blocks`` and
``input_embeddings`` understand and that has ``configure_optimizers``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from trustlab.lm.hooks import decoder_blocks
from trustlab.lm.losses import causal_lm_loss
from trustlab.lm.training import CausalLMModule
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.hooks import NoiseInjector
from trustlab.noisefit.losses import NEFTune, hybrid_loss, rdrop_loss
from trustlab.noisefit.snr import layer_snr, select_layers
from trustlab.noisefit.variants import Variant, get_variant, loss_weights

COMPONENTS = ("ce", "soft", "consistency", "total")


def wandb_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``module.curve`` row -> W&B keys: ``noisefit/<component>`` plus ``lr`` and ``tokens``."""
    out = {f"noisefit/{k}": row[k] for k in COMPONENTS if k in row}
    for k in ("lr", "tokens", "step_time"):
        if k in row:
            out[f"noisefit/{k}"] = row[k]
    return out


class NoiseFitModule(CausalLMModule):
    def __init__(
        self,
        model: torch.nn.Module,
        variant: str | Variant,
        cfg: NoiseFitConfig | None = None,
        *,
        pad_id: int | None = None,
        snr_generator: torch.Generator | None = None,
        **module_kw: Any,
    ):
        cfg = cfg or NoiseFitConfig()
        kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
        kw.update(module_kw)
        super().__init__(model, **kw)
        self.variant = variant if isinstance(variant, Variant) else get_variant(variant)
        self.cfg = cfg
        self.pad_id = pad_id
        self.snr_generator = snr_generator
        self.step_times: list[float] = []
        self._t0: float | None = None
        self.snr: dict[str, list[float]] | None = None
        self.layers: list[int] | None = None
        self.injector: NoiseInjector | None = None
        self.neftune: NEFTune | None = None
        self._saved_dropout: list[tuple[Any, str, float]] | None = None
        kind = self.variant.kind
        if kind == "noisefit":
            cfg.check_model(len(decoder_blocks(model)))
            self.weights = loss_weights(self.variant.terms, cfg.alpha, cfg.lambda_consistency)
        elif kind == "neftune":
            self.neftune = NEFTune(model, cfg.neftune_alpha, pad_id)
        elif kind == "rdrop":
            if not cfg.rdrop_dropout > 0:
                raise ValueError(f"R-Drop needs dropout > 0: noisefit.rdrop_dropout = {cfg.rdrop_dropout}")
            if not _dropout_sites(model):
                raise ValueError(f"R-Drop needs dropout > 0, but {type(model).__name__} has no dropout to switch on")

    # -- SNR and layer selection ---------------------------------------------------------------
    def select_layers(self, batch: dict[str, Any]) -> list[int]:
        """Per-layer SNR on ``batch`` (eval mode, no grad) and the top-k layers of the
        variant's selection; attaches the noise hooks."""
        snr = layer_snr(
            self.model,
            batch["input_ids"],
            batch.get("attention_mask"),
            sigma0=self.cfg.sigma0,
            beta=self.cfg.beta,
            n_draws=self.cfg.snr_draws,
            generator=self.snr_generator,
        )
        self.snr = {k: v.tolist() for k, v in snr.items()}
        self.layers = select_layers(snr["snr"], self.cfg.k, self.variant.selection or "largest")
        if self.injector is not None:
            self.injector.detach()
        self.injector = NoiseInjector(
            self.model, self.layers, sigma0=self.cfg.sigma0, beta=self.cfg.beta, noise_scale=self.cfg.noise_scale
        ).attach()
        return self.layers

    def selection_info(self) -> dict[str, Any]:
        """``{"snr": [...], "signal": [...], "noise": [...], "selected_layers": [...], ...}``
        (empty for the baselines)."""
        if self.snr is None:
            return {}
        return {
            **self.snr,
            "selected_layers": list(self.layers or []),
            "k": self.cfg.k,
            "sigma0": self.cfg.sigma0,
            "selection": self.variant.selection,
            "noise_scale": self.cfg.noise_scale,
        }

    # -- set up / tear down the training-only machinery ----------------------------------------
    def _enter(self) -> None:
        if self.neftune is not None:
            self.neftune.attach()
        if self.injector is not None:
            self.injector.attach()
        if self.variant.kind == "rdrop" and self._saved_dropout is None:
            self._saved_dropout = _dropout_sites(self.model)
            for obj, attr, _ in self._saved_dropout:
                setattr(obj, attr, self.cfg.rdrop_dropout)

    def release(self) -> None:
        """Remove hooks and restore dropout: the model is then a plain model again."""
        if self.neftune is not None:
            self.neftune.detach()
        if self.injector is not None:
            self.injector.detach()
        if self._saved_dropout is not None:
            for obj, attr, value in self._saved_dropout:
                setattr(obj, attr, value)
            self._saved_dropout = None

    def on_fit_start(self):
        # Lightning >= 2.2 keeps the modes modules had before fit; a model from load_model()
        # is in eval mode, which would silently switch off noise, NEFTune and dropout.
        self.model.train()

    def on_train_start(self):
        super().on_train_start()
        self._enter()

    def on_train_end(self):
        self.release()

    def on_train_batch_start(self, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._t0 is not None:
            dt = time.perf_counter() - self._t0
            self.step_times.append(dt)
            if self.curve:
                self.curve[-1]["step_time"] = dt
            self._t0 = None

    # -- the loss --------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        kind = self.variant.kind
        ids, mask, loss_mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        if kind == "sft":
            loss = causal_lm_loss(self(batch).logits, ids, loss_mask)
            parts = {"ce": loss, "total": loss}
        elif kind == "neftune":
            self._enter()
            with self.neftune.batch(mask):
                loss = causal_lm_loss(self(batch).logits, ids, loss_mask)
            parts = {"ce": loss, "total": loss}
        elif kind == "rdrop":
            self._enter()
            parts = rdrop_loss(self(batch).logits, self(batch).logits, ids, loss_mask, weight=self.cfg.rdrop_weight)
        else:
            parts = self._noisefit_loss(batch)
        return parts["total"], {k: v.detach() for k, v in parts.items()}

    def _noisefit_loss(self, batch) -> dict[str, torch.Tensor]:
        if self.injector is None:
            self.select_layers(batch)
        self._enter()
        ids, mask, loss_mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        cfg = self.cfg
        if self.variant.terms == "ce_only":
            with self.injector.noisy(mask):
                noisy = [self(batch).logits]
            return hybrid_loss(None, noisy, ids, loss_mask, weights=self.weights)
        w_ce, w_soft, _ = self.weights
        needs_grad = bool(w_ce) or (bool(w_soft) and not cfg.detach_teacher)
        with torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):
            clean = self(batch).logits
        with self.injector.noisy(mask):
            noisy = [self(batch).logits, self(batch).logits]
        return hybrid_loss(
            clean,
            noisy,
            ids,
            loss_mask,
            temperature=cfg.temperature,
            detach_teacher=cfg.detach_teacher,
            weights=self.weights,
        )


def _dropout_sites(model: torch.nn.Module) -> list[tuple[Any, str, float]]:
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
