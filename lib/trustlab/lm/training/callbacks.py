"""Lightning callbacks ``fit`` adds: periodic validation, periodic checkpoints, and the hand-back
of a spawned worker's state."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from trustlab.lm.training.module import CausalLMModule


def step_done(trainer: L.Trainer, batch_idx: int) -> bool:
    """True on the last micro-batch of an optimizer step (hooks run after that step)."""
    return (batch_idx + 1) % int(trainer.accumulate_grad_batches) == 0


class PeriodicValidation(L.Callback):
    """Validation every ``every`` optimizer steps and once more at the end of training (also
    after an early stop), inside ``trainer.fit`` so that spawned workers do it too. Each rank
    evaluates its shard of ``loader`` (``ShardSampler``) and the sums are all-reduced; under FSDP
    every rank evaluates everything through the sharded wrapper."""

    def __init__(self, loader: DataLoader, every: int | None, fsdp: bool = False):
        self.loader, self.every, self.fsdp = loader, every, fsdp

    def run(self, trainer: L.Trainer, module: CausalLMModule) -> None:
        module.on_validation_epoch_start()
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.val_step_context():
                for i, batch in enumerate(self.loader):
                    batch = trainer.strategy.batch_to_device(batch)
                    if self.fsdp:  # parameters are sharded: go through the wrapper
                        trainer.strategy.validation_step(batch, i)
                    else:  # replicas are identical: no collective in the forward
                        module.validation_step(batch, i)
        finally:
            module.train(was_training)
        module.finish_validation(reduce=not self.fsdp)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every and step_done(trainer, batch_idx) and module.step % self.every == 0:
            self.run(trainer, module)

    def on_train_end(self, trainer, module):
        if not module.val_curve or module.val_curve[-1]["step"] != module.step:
            self.run(trainer, module)


class PeriodicCheckpoint(L.Callback):
    """A training checkpoint every ``every`` steps and at the end; written by rank 0 only."""

    def __init__(self, directory, every: int | None, tokenizer=None):
        self.directory, self.every, self.tokenizer = directory, every, tokenizer

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every and step_done(trainer, batch_idx) and module.step % self.every == 0 and trainer.is_global_zero:
            module.save_checkpoint(self.directory, self.tokenizer)

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            module.save_checkpoint(self.directory, self.tokenizer)


class SendBackWorkerState(L.Callback):
    """Spawned workers: rank 0 writes ``module.worker_state()`` for the main process."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            torch.save(module.worker_state(), self.path)

