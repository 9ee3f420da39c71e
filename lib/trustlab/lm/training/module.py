"""``CausalLMModule``: the LightningModule every family trains with (or subclasses).

AdamW (``model.configure_optimizers``), linear warmup then cosine decay to ``min_lr_ratio * lr``,
masked cross-entropy. Families override ``compute_loss(batch) -> (loss, {name: float tensor})``
(NoiseFiT: noisy passes + KL terms; R-Drop: two dropout passes; entropy attention: +
regularizer). Every optimizer step appends ``{step, loss, lr, tokens, **components}`` to
``module.curve``; validation appends ``{step, val_loss}`` to ``module.val_curve``. The module
also saves and loads exact-resume checkpoints and hands its state back from spawned workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch

from trustlab.lm.gpt import configure_adamw
from trustlab.lm.losses import causal_lm_loss


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CausalLMModule(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        *,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        schedule_steps: int | None = None,
        no_decay_names: Sequence[str] = (),
    ):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.schedule_steps_arg = schedule_steps  # None: the run's total steps
        self.schedule_steps = schedule_steps
        self.no_decay_names = tuple(no_decay_names)
        self.curve: list[dict[str, float]] = []
        self.val_curve: list[dict[str, float]] = []
        self.step_offset = 0  # steps done before this fit() (resume)
        self.tokens_seen = 0
        self.on_log: Callable[[dict], None] | None = None
        self._resume_state: dict | None = None
        self._val_sum = self._val_count = 0.0
        self._micro: dict[str, float] = {}  # sums over the current step's micro-batches

    # -- the hook families override --------------------------------------------------------
    def forward(self, batch: dict[str, Any], **kwargs):
        return self.model(batch["input_ids"], batch["attention_mask"], **kwargs)

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (loss to minimise, components to record). Default: masked cross-entropy."""
        loss = causal_lm_loss(self(batch).logits, batch["input_ids"], batch["loss_mask"])
        return loss, {"ce": loss.detach()}

    def eval_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation: (masked mean cross-entropy, number of counted targets)."""
        loss = causal_lm_loss(self(batch).logits, batch["input_ids"], batch["loss_mask"])
        return loss, batch["loss_mask"][:, 1:].sum()

    # -- lightning hooks -----------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Optimizer steps completed, counting those before a resume."""
        return self.step_offset + (self.trainer.global_step if self._trainer is not None else 0)

    def training_step(self, batch, batch_idx):
        loss, components = self.compute_loss(batch)
        self._record(loss, components, batch, batch_idx)
        self.log("loss", float(loss.detach()), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=len(batch["input_ids"]))  # fmt: skip
        return loss

    def _record(self, loss: torch.Tensor, components: dict[str, torch.Tensor], batch, batch_idx: int) -> None:
        """Append one curve row per optimizer step. One process, no accumulation: the batch's
        values. Otherwise the mean over the step's micro-batches and ranks (one all-reduce per
        step) and the tokens of all of them — the numbers one process with the global batch
        reports when every micro-batch has the same number of loss tokens."""
        trainer = self.trainer
        k, world = int(trainer.accumulate_grad_batches), int(trainer.world_size)
        tokens = int(batch["attention_mask"].sum())
        if k == 1 and world == 1:
            self.tokens_seen += tokens
            self._append_row(float(loss.detach()), {n: float(v) for n, v in components.items()})
            return
        acc = self._micro
        acc["loss"] = acc.get("loss", 0.0) + float(loss.detach())
        for name, value in components.items():
            acc[name] = acc.get(name, 0.0) + float(value)
        acc["tokens"] = acc.get("tokens", 0.0) + tokens
        if (batch_idx + 1) % k:
            return
        self._micro = {}
        names = list(acc)
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        values = torch.tensor([acc[n] for n in names], dtype=dtype, device=self.device)
        if world > 1:
            values = trainer.strategy.reduce(values, reduce_op="sum")
        total = dict(zip(names, values.tolist()))
        self.tokens_seen += int(round(total.pop("tokens")))
        loss_value = total.pop("loss") / (k * world)
        self._append_row(loss_value, {n: v / (k * world) for n, v in total.items()})

    def _append_row(self, loss: float, components: dict[str, float]) -> None:
        row = {
            "step": self.step + 1,
            "loss": loss,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "tokens": self.tokens_seen,
        }
        row.update(components)
        self.curve.append(row)
        if self.on_log is not None and self.trainer.is_global_zero:
            self.on_log(dict(row))

    def on_validation_epoch_start(self):
        self._val_sum = self._val_count = 0.0

    def validation_step(self, batch, batch_idx):
        loss, n = self.eval_loss(batch)
        self._val_sum += float(loss) * float(n)
        self._val_count += float(n)

    def on_validation_epoch_end(self):
        row = self.finish_validation()
        if row is not None:
            self.log("val_loss", row["val_loss"], prog_bar=True)

    def finish_validation(self, reduce: bool = False) -> dict[str, float] | None:
        """Close a validation pass: ``val_loss = sum(loss * n) / sum(n)`` over its batches (and
        over ranks when ``reduce``: each rank validated its own shard); appends the row."""
        total, count = self._val_sum, self._val_count
        if reduce and self._trainer is not None and self.trainer.world_size > 1:
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
            sums = torch.tensor([total, count], dtype=dtype, device=self.device)
            total, count = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        if not count:
            return None
        row = {"step": self.step, "val_loss": total / count}
        self.val_curve.append(row)
        if self.on_log is not None and (self._trainer is None or self.trainer.is_global_zero):
            self.on_log(dict(row))
        return row

    def configure_optimizers(self):
        make = getattr(self.model, "configure_optimizers", None) or partial(configure_adamw, self.model)
        opt = make(self.weight_decay, self.lr, self.betas, self.no_decay_names)
        total = self.schedule_steps or int(self.trainer.estimated_stepping_batches)

        def multiplier(step: int) -> float:
            return warmup_cosine(
                step, warmup_steps=self.warmup_steps, total_steps=total, min_lr_ratio=self.min_lr_ratio
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self):
        self.model.train()  # a loaded model comes in eval mode; Lightning keeps a module's mode

    def on_train_start(self):
        state, self._resume_state = self._resume_state, None
        if state is None:
            return
        self.trainer.optimizers[0].load_state_dict(state["optimizer"])
        self.trainer.lr_scheduler_configs[0].scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])

    # -- checkpoints ---------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """Everything needed to resume, as plain tensors/containers."""
        return {
            "step": self.step,
            "tokens": self.tokens_seen,
            "schedule_steps": self.schedule_steps,
            "optimizer": self.trainer.optimizers[0].state_dict(),
            "scheduler": self.trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "curve": list(self.curve),
            "val_curve": list(self.val_curve),
        }

    def save_checkpoint(self, directory, tokenizer=None) -> None:
        from trustlab.lm.checkpoint import save_model, save_training_state

        save_model(self.model, directory, tokenizer, metadata={"step": self.step})
        save_training_state(directory, self.training_state())

    def load_checkpoint(self, directory) -> None:
        """Load weights and queue optimizer/scheduler/RNG state for the next ``fit``."""
        from trustlab.lm.checkpoint import load_training_state, load_weights

        load_weights(self.model, directory)
        state = load_training_state(directory)
        self.step_offset, self.tokens_seen = int(state["step"]), int(state["tokens"])
        self.curve, self.val_curve = list(state["curve"]), list(state["val_curve"])
        self.schedule_steps = state["schedule_steps"]
        self._resume_state = state

    # -- spawn-based strategies (ddp_spawn, ddp_notebook) --------------------------------------
    def worker_state(self) -> dict[str, Any]:
        """What rank 0 of a spawned run sends back to the main process (the weights come back
        through Lightning). Plain containers only. Subclasses that record more during training
        extend this and :meth:`restore_worker_state`."""
        return {
            "steps": int(self.trainer.global_step),
            "tokens": self.tokens_seen,
            "curve": list(self.curve),
            "val_curve": list(self.val_curve),
        }

    def restore_worker_state(self, state: dict[str, Any]) -> None:
        """Adopt a spawned rank 0's state in the main process. The main process's trainer never
        stepped, so the steps done are folded into ``step_offset`` (``self.step`` stays right)."""
        self.step_offset += int(state["steps"])
        self.tokens_seen = int(state["tokens"])
        self.curve, self.val_curve = list(state["curve"]), list(state["val_curve"])

