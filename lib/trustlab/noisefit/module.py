"""One Lightning module for every fine-tuning variant, on the shared ``CausalLMModule``.

``NoiseFitModule(model, "noisefit_largest", cfg)`` builds the variant's objective
(``trustlab.noisefit.objectives``) and trains with its loss; the objective's training-only
machinery (noise hooks, NEFTune, R-Drop's dropout) is switched on at the start of training
and released at the end, so the trained model is a plain model again.

Every step records the loss components in ``module.curve`` (``ce``, ``soft``, ``consistency``,
``total``; only those the objective computes) and its wall time in ``module.step_times``
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

from trustlab.lm.training import CausalLMModule
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.objectives import build_objective
from trustlab.noisefit.variants import Variant, get_variant

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
        self.snr_generator = snr_generator  # the noise draws of the SNR measurement
        self.step_times: list[float] = []
        self._t0: float | None = None
        self.objective = build_objective(self.variant, cfg)
        self.objective.setup(self)

    @property
    def injector(self):
        """The noise hooks of a noise-injecting objective (None before layer selection and for
        the baselines)."""
        return getattr(self.objective, "injector", None)

    def selection_info(self) -> dict[str, Any]:
        """``{"snr": [...], "signal": [...], "noise": [...], "selected_layers": [...], ...}``
        (empty for the baselines)."""
        return self.objective.selection_info()

    def noise_ratio(self) -> float:
        """Mean relative noise magnitude RMS(noise) / RMS(activation) at the injection point."""
        return self.objective.noise_ratio()

    def release(self) -> None:
        """Remove hooks and restore dropout: the model is then a plain model again."""
        self.objective.release(self)

    # -- lightning hooks -------------------------------------------------------------------------
    def on_fit_start(self):
        # Lightning >= 2.2 keeps the modes modules had before fit; a model from load_model()
        # is in eval mode, which would silently switch off noise, NEFTune and dropout.
        self.model.train()

    def on_train_start(self):
        super().on_train_start()
        self.objective.enter(self)

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

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = self.objective.loss(self, batch)
        return parts["total"], {k: v.detach() for k, v in parts.items()}
