"""Training the entropy-attention variants: a ``CausalLMModule`` with the regularizer and
divergence detection, and a callback that measures attention entropy on logging steps.

* :class:`EntropyAttentionModule` overrides ``compute_loss``: when the model carries an
  ``entropy_reg`` (see :func:`trustlab.entropy_attention.regularizer.attach_regularizer`) and ``lam > 0``,
  the training forward asks for the attention probabilities and adds ``lam * L_ent``. Otherwise
  it is the plain masked CE on the fast (fused-kernel) path. Unpadded batches are passed without
  an attention mask so that the fused causal kernel is used.
* Divergence: a non-finite loss, or one above ``divergence_loss``, is recorded in
  ``module.diverged`` (step, loss, reason); that step's update is skipped and the trainer is
  asked to stop. It never raises.
* :class:`EntropyMonitor` measures the per-head entropy and the loss of a fixed probe batch
  (eval mode, no gradient) at step 0 and every ``every`` steps (the validation curve), and keeps
  the time it spent, so the cost of measurement is known (it runs only on logging steps).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from trustlab.entropy_attention.entropy import attention_entropy
from trustlab.entropy_attention.regularizer import get_regularizer
from trustlab.lm.losses import causal_lm_loss
from trustlab.lm.training import CausalLMModule


class EntropyAttentionModule(CausalLMModule):
    def __init__(self, model: torch.nn.Module, *, lam: float = 0.0, divergence_loss: float | None = None, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.lam = float(lam)
        self.divergence_loss = divergence_loss
        self.diverged: dict[str, Any] | None = None

    @property
    def regularizer(self):
        return get_regularizer(self.model)

    @property
    def regularized(self) -> bool:
        return self.regularizer is not None and self.lam > 0

    def forward(self, batch: dict[str, Any], **kwargs):
        mask = batch["attention_mask"]
        if bool(mask.all()):  # no padding: let the kernels use the fused causal path
            mask = None
        return self.model(batch["input_ids"], mask, **kwargs)

    def compute_loss(self, batch: dict[str, Any]):
        if not (self.regularized and self.training):
            return super().compute_loss(batch)
        out = self(batch, output_attentions=True)
        ce = causal_lm_loss(out.logits, batch["input_ids"], batch["loss_mask"])
        penalty = self.regularizer(out.attentions, query_mask=batch["attention_mask"])
        return ce + self.lam * penalty, {"ce": ce.detach(), "ent_reg": penalty.detach()}

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        value = float(loss.detach())
        reason = None
        if not math.isfinite(value):
            reason = "non-finite loss"
        elif self.divergence_loss is not None and value > self.divergence_loss:
            reason = f"loss {value:.3g} > {self.divergence_loss:.3g}"
        if reason is None:
            return loss
        if self.diverged is None:
            self.diverged = {"step": self.step + 1, "loss": value, "reason": reason}
        self.trainer.should_stop = True
        # Lightning warns when training_step returns None; here it is on purpose
        warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")
        return None  # skip this update


class EntropyMonitor(L.Callback):
    """Entropy and loss of a fixed probe batch at step 0 and every ``every`` optimizer steps.

    ``rows``: one dict per measurement with ``step``, ``probe_loss`` (nats per token),
    ``layer_mean`` (L,), ``mean`` (L, H) and ``max_uniform``; ``seconds``: total time spent measuring; ``on_record(row)`` is called after
    each measurement (e.g. to log to W&B)."""

    def __init__(self, probe_ids: torch.Tensor, every: int, on_record: Callable[[dict], None] | None = None):
        self.probe_ids = probe_ids
        self.every = max(int(every), 1)
        self.on_record = on_record
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.calls = 0

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            out = model(self.probe_ids, output_attentions=True)
            stats = attention_entropy(out.attentions)
            loss = float(causal_lm_loss(out.logits, self.probe_ids))
        finally:
            model.train(was_training)
        row = {
            "step": int(step),
            "probe_loss": loss,
            "layer_mean": stats.layer_mean.tolist(),
            "mean": stats.mean.tolist(),
            "max_uniform": stats.max_uniform,
        }
        self.rows.append(row)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        if self.on_record is not None:
            self.on_record(row)
        return row

    def on_train_start(self, trainer, pl_module):
        if pl_module.step == 0:
            self.measure(pl_module.model, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = pl_module.step
        diverged = getattr(pl_module, "diverged", None) is not None
        if step % self.every == 0 and not diverged:
            self.measure(pl_module.model, step)
