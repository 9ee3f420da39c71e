"""Causal-LM training with Lightning: a module families subclass, datasets, and ``fit``.

* ``CausalLMModule(model, lr=..., ...)``: AdamW (``model.configure_optimizers``), linear warmup
  then cosine decay to ``min_lr_ratio * lr``, masked cross-entropy. Families override
  ``compute_loss(batch) -> (loss, {name: float tensor})`` (NoiseFiT: noisy passes + KL terms;
  R-Drop: two dropout passes; entropy attention: + regularizer). Every training step appends
  ``{step, loss, lr, tokens, **components}`` to ``module.curve``; validation appends
  ``{step, val_loss}`` to ``module.val_curve``.
* Data: every item is a dict with ``input_ids`` and ``loss_mask`` lists (other keys are carried
  along); ``collate`` right-pads them and adds ``attention_mask``. ``PairDataset`` (prompt,
  answer pairs), ``TextDataset`` (one text per item), ``PackedTextDataset`` (texts concatenated
  and cut into full windows, for pretraining). Mix them with ``torch.utils.data.ConcatDataset``.
* ``fit(module, train_data, max_steps=... | epochs=..., ...)``: a ``lightning.Trainer`` (one
  CPU process by default; ``accelerator``/``devices``/``strategy``/``precision``/
  ``accumulate_grad_batches`` from ``model.trainer`` in params) with seeding, thread settings,
  a notebook-friendly progress bar (off in executed reports), no logger, gradient clipping,
  validation, periodic training checkpoints (rank 0) and exact resume.

Data order is a pure function of (seed, step): step s draws global batch s mod E of epoch
s // E, each epoch a fresh seeded permutation; with several processes or gradient accumulation
that global batch is split into the micro-batches of each rank, so the examples of a step do not
depend on how it is parallelised. That is what makes resume exact without relying on
Lightning's loop state; ``max_steps`` and ``epochs`` both become a number of steps (giving both
is an error).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trustlab.lm.gpt import configure_adamw
from trustlab.lm.losses import causal_lm_loss
from trustlab.core.progress import progress_enabled
from trustlab.core.seeding import seed_everything, set_threads

# ---------------------------------------------------------------------------------------------
# data


class ExampleDataset(Dataset):
    """A list of ready items: dicts with ``input_ids`` and ``loss_mask`` (lists of ints)."""

    def __init__(self, items: Sequence[dict[str, Any]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]

    @property
    def n_tokens(self) -> int:
        return sum(len(it["input_ids"]) for it in self.items)


class PairDataset(ExampleDataset):
    """``<bos> prompt <sep> answer <eos>``; loss on answer + eos (or on everything after bos
    with ``loss_on_prompt``). Examples longer than ``block_size`` are cut (counted in
    ``n_truncated``)."""

    def __init__(self, tokenizer, pairs: Sequence[tuple[str, str]], block_size: int, *, loss_on_prompt: bool = False):
        items, self.n_truncated = [], 0
        for prompt, answer in pairs:
            ids, mask = tokenizer.encode_example(prompt, answer)
            if loss_on_prompt:
                mask = [0] + [1] * (len(ids) - 1)
            if len(ids) > block_size:
                self.n_truncated += 1
                ids, mask = ids[:block_size], mask[:block_size]
            items.append({"input_ids": ids, "loss_mask": mask})
        super().__init__(items)


class TextDataset(ExampleDataset):
    """One item per text, ``<bos> text <eos>``; texts longer than ``block_size`` are split into
    consecutive windows (loss on every token after the first of the window)."""

    def __init__(self, tokenizer, texts: Sequence[str], block_size: int):
        items = []
        for text in texts:
            ids, _ = tokenizer.encode_text(text)
            for s in range(0, max(len(ids) - 1, 1), block_size):
                chunk = ids[s : s + block_size]
                if len(chunk) >= 2:
                    items.append({"input_ids": chunk, "loss_mask": [0] + [1] * (len(chunk) - 1)})
        super().__init__(items)


class PackedTextDataset(ExampleDataset):
    """All texts as one stream ``<bos> t1 <eos> <bos> t2 <eos> ...`` cut into non-overlapping
    windows of ``block_size`` tokens (the incomplete tail is dropped unless it is all there
    is). No padding; attention crosses document boundaries, as in nanoGPT."""

    def __init__(self, tokenizer, texts: Sequence[str], block_size: int):
        stream: list[int] = []
        for text in texts:
            stream.extend(tokenizer.encode_text(text)[0])
        n = max(len(stream) // block_size, 1)
        items = []
        for i in range(n):
            chunk = stream[i * block_size : (i + 1) * block_size]
            items.append({"input_ids": chunk, "loss_mask": [0] + [1] * (len(chunk) - 1)})
        super().__init__(items)


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad ``input_ids`` (with ``pad_id``) and ``loss_mask`` (with 0); add
    ``attention_mask``. Other keys: numbers become a tensor, anything else a list."""
    T = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(items), T), dtype=torch.long)
    loss = torch.zeros((len(items), T), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        attn[i, :n] = 1
        loss[i, :n] = torch.as_tensor(it["loss_mask"], dtype=torch.long)
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}
    for key in items[0]:
        if key in batch:
            continue
        values = [it[key] for it in items]
        is_num = all(isinstance(v, (int, float, bool)) for v in values)
        batch[key] = torch.tensor(values) if is_num else values
    return batch


class Collate:
    """Picklable ``collate`` with a fixed pad id (for DataLoader workers)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        return collate(items, self.pad_id)


class StepBatchSampler(Sampler):
    """Batches for steps ``start_step .. total_steps - 1``: step s takes global batch s mod E of
    epoch s // E (E = ceil(n / G)), each epoch a permutation seeded by (seed, epoch).

    ``G = batch_size * world_size * accumulate``: with ``world_size`` processes (data parallel) and
    ``accumulate`` micro-batches per optimizer step, step s's global batch is cut into
    ``accumulate * world_size`` consecutive slices (sizes differ by at most one) and micro-batch j
    of rank r is slice ``j * world_size + r``. One process with ``batch_size = G`` therefore sees
    exactly the same examples at every step. A global batch shorter than ``accumulate *
    world_size`` (a tiny epoch tail) is topped up with the epoch's first items, so that no slice is
    empty. ``rank`` None: the ``torch.distributed`` rank when the sampler is iterated (Lightning
    starts the process group after the sampler is built)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        total_steps: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
        world_size: int = 1,
        accumulate: int = 1,
        rank: int | None = None,
    ):
        if n < 1:
            raise ValueError("the training dataset is empty")
        if batch_size < 1 or world_size < 1 or accumulate < 1:
            raise ValueError(
                f"batch_size ({batch_size}), world_size ({world_size}) and accumulate ({accumulate}) must be >= 1"
            )
        self.n, self.batch_size, self.total_steps = n, batch_size, total_steps
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self.world_size, self.accumulate, self.rank = world_size, accumulate, rank
        self.global_batch = batch_size * world_size * accumulate
        self.steps_per_epoch = math.ceil(n / self.global_batch)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.accumulate

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _rank(self) -> int:
        if self.world_size == 1:
            return 0
        if self.rank is not None:
            return self.rank
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"StepBatchSampler(world_size={self.world_size}) is iterated without a process group: "
                "give rank= or iterate it inside a distributed run"
            )
        return dist.get_rank()

    def __iter__(self):
        from trustlab.lm.distributed import shard_bounds

        parts = self.world_size * self.accumulate
        rank = self._rank()
        order, order_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, b = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self._order(epoch), epoch
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            if parts == 1:
                yield batch
                continue
            if len(batch) < parts:  # top up a tiny tail so that every slice has an item
                batch = batch + (order * parts)[: parts - len(batch)]
            for j in range(self.accumulate):
                lo, hi = shard_bounds(len(batch), j * self.world_size + rank, parts)
                yield batch[lo:hi]


class ShardSampler(Sampler):
    """This rank's contiguous block of ``range(n)`` (``distributed.shard_indices``), resolved
    when iterated; all of it when there is no process group or ``world_size`` is 1."""

    def __init__(self, n: int, world_size: int = 1):
        self.n, self.world_size = n, world_size

    def _indices(self) -> range:
        from trustlab.lm.distributed import _group, shard_bounds

        group = _group() if self.world_size > 1 else None
        if group is None:
            return range(self.n)
        return range(*shard_bounds(self.n, group[0], group[1]))

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self):
        return iter(self._indices())


# ---------------------------------------------------------------------------------------------
# module


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


# ---------------------------------------------------------------------------------------------
# fit


STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
_SPAWNING = ("ddp_spawn", "ddp_notebook", "ddp_fork")  # workers are new processes; the caller is not a rank


def _step_done(trainer: L.Trainer, batch_idx: int) -> bool:
    """True on the last micro-batch of an optimizer step (hooks run after that step)."""
    return (batch_idx + 1) % int(trainer.accumulate_grad_batches) == 0


class _Validation(L.Callback):
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
        if self.every and _step_done(trainer, batch_idx) and module.step % self.every == 0:
            self.run(trainer, module)

    def on_train_end(self, trainer, module):
        if not module.val_curve or module.val_curve[-1]["step"] != module.step:
            self.run(trainer, module)


class _Checkpointer(L.Callback):
    """A training checkpoint every ``every`` steps and at the end; written by rank 0 only."""

    def __init__(self, directory, every: int | None, tokenizer=None):
        self.directory, self.every, self.tokenizer = directory, every, tokenizer

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every and _step_done(trainer, batch_idx) and module.step % self.every == 0 and trainer.is_global_zero:
            module.save_checkpoint(self.directory, self.tokenizer)

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            module.save_checkpoint(self.directory, self.tokenizer)


class _SendBack(L.Callback):
    """Spawned workers: rank 0 writes ``module.worker_state()`` for the main process."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            torch.save(module.worker_state(), self.path)


@dataclass
class FitResult:
    module: CausalLMModule
    trainer: L.Trainer
    steps: int  # optimizer steps in this fit() call
    seconds: float
    tokens: int  # tokens processed in this fit() call (padding excluded; all ranks)
    curve: list[dict] = field(default_factory=list)
    val_curve: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


@contextlib.contextmanager
def _quiet_lightning():
    """Hide Lightning's banner lines and the CPU-dataloader worker hint."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*num_workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        try:
            yield
        finally:
            for lg, lvl in zip(loggers, levels):
                lg.setLevel(lvl)


def _set_threads(n: int | None) -> int:
    try:
        return set_threads(n)
    except AttributeError:  # seeding.set_threads calls torch.set_interop_threads, which torch
        return torch.get_num_threads()  # lacks (set_num_interop_threads); intra-op is already set


def _interactive() -> bool:
    """A notebook kernel or a REPL (where Lightning refuses script-relaunching strategies)."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def _check_trainer_settings(accelerator, devices, strategy, precision, accumulate_grad_batches, num_nodes) -> None:
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator = {accelerator!r} is not allowed: choose one of {', '.join(ACCELERATORS)}")
    if strategy not in STRATEGIES + ("ddp_fork",):
        raise ValueError(f"strategy = {strategy!r} is not allowed: choose one of {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r} is not allowed: choose one of {', '.join(PRECISIONS)}")
    if not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)):
        raise ValueError(f"devices = {devices!r} is not allowed: an integer >= 1 or 'auto'")
    for name, value in (("accumulate_grad_batches", accumulate_grad_batches), ("num_nodes", num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r} is not allowed: an integer >= 1")


def fit(
    module: CausalLMModule,
    train_data: Dataset,
    *,
    pad_id: int | None = None,
    batch_size: int = 32,
    max_steps: int | None = None,
    epochs: int | None = None,
    val_data: Dataset | None = None,
    val_every: int | None = None,
    val_batch_size: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    grad_clip: float | None = 1.0,
    progress: bool | None = None,
    refresh_rate: int = 25,
    on_log: Callable[[dict], None] | None = None,
    callbacks: Sequence[L.Callback] = (),
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    tokenizer=None,
    resume_from=None,
    accelerator: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    accumulate_grad_batches: int = 1,
    num_nodes: int = 1,
) -> FitResult:
    """Train ``module`` on ``train_data`` for ``max_steps`` optimizer steps or ``epochs`` passes
    (exactly one; both count from step 0 of the run, so a resumed run passes the same value).
    Batches are right-padded with ``pad_id`` (default ``tokenizer.pad_id``).

    ``val_data`` is evaluated every ``val_every`` steps and at the end (default: at the end only).
    ``checkpoint_dir``: a training checkpoint (model + tokenizer + optimizer/scheduler/RNG
    state) is written every ``checkpoint_every`` steps and at the end. ``resume_from``: a
    checkpoint directory; the run continues from its step with identical data order.
    ``progress`` None follows ``trustlab.core.progress.progress_enabled()`` (off in executed reports).

    Trainer settings (``trustlab.lm.model_config.TrainerConfig.fit_kwargs()`` gives them from
    params): ``accelerator`` (cpu | gpu | auto), ``devices`` (int | "auto"), ``strategy`` (auto |
    ddp | ddp_spawn | ddp_notebook | fsdp), ``precision`` (32-true | bf16-mixed | 16-mixed |
    bf16-true), ``accumulate_grad_batches``, ``num_nodes``. The defaults are one CPU process.

    ``batch_size`` is per process and micro-batch: an optimizer step sees
    ``G = batch_size * world_size * accumulate_grad_batches`` examples, the same ones one process
    with ``batch_size = G`` sees (``StepBatchSampler``); the loss is the mean of the micro-batch
    means, so the runs agree exactly when every micro-batch has the same number of loss tokens.
    ``epochs`` counts global batches. Curves hold one row per optimizer step (averaged over
    micro-batches and ranks) and on every rank; ``on_log`` and checkpoints run on rank 0 only.

    Distributed modes: ``ddp`` (and ``fsdp``) re-launch the running script for ranks 1.. (the
    caller is rank 0; every rank runs the code after ``fit`` too, see
    ``trustlab.lm.distributed``). In a notebook kernel Lightning cannot re-launch, so ``ddp``
    becomes ``ddp_notebook`` (forked workers; on a GPU, CUDA must not be initialised before
    ``fit``). With ``ddp_spawn``/``ddp_notebook`` the workers are new processes: the trained
    weights come back through Lightning and ``module.worker_state()`` (curves, token count)
    through a temporary file; ``on_log`` rows are replayed after the fit and ``callbacks`` must
    be picklable. ``fsdp`` (GPU only) cannot write trustlab checkpoints (``checkpoint_dir``).
    The model is returned on the device it came on (Lightning moves it to the CPU at the end).
    """
    if pad_id is None:
        if tokenizer is None:
            raise ValueError("give pad_id or tokenizer (whose pad_id pads the batches)")
        pad_id = tokenizer.pad_id
    if (max_steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of max_steps ({max_steps}) and epochs ({epochs})")
    _check_trainer_settings(accelerator, devices, strategy, precision, accumulate_grad_batches, num_nodes)
    if strategy == "ddp" and _interactive():
        warnings.warn("strategy 'ddp' cannot re-launch a notebook kernel: using 'ddp_notebook' (forked workers)",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        strategy = "ddp_notebook"
    if strategy == "fsdp" and checkpoint_dir is not None:
        raise ValueError("checkpoint_dir is not supported with strategy 'fsdp' (sharded weights): leave it None")

    show = progress_enabled() if progress is None else progress
    cbs = list(callbacks)
    if show:
        from lightning.pytorch.callbacks import TQDMProgressBar

        cbs.append(TQDMProgressBar(refresh_rate=refresh_rate))
    spawning = strategy in _SPAWNING
    trainer_kw: dict[str, Any] = dict(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        accumulate_grad_batches=accumulate_grad_batches,
        num_nodes=num_nodes,
        max_steps=-1,  # the step-indexed sampler ends the (single) epoch after the run's steps
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=show,
        num_sanity_val_steps=0,
        limit_val_batches=0,  # validation runs in the _Validation callback
        use_distributed_sampler=False,  # StepBatchSampler / ShardSampler split the data
        gradient_clip_val=grad_clip,
    )
    with _quiet_lightning():
        trainer = L.Trainer(**trainer_kw, callbacks=[])
    world = int(trainer.world_size)

    global_batch = batch_size * world * accumulate_grad_batches
    steps_per_epoch = math.ceil(len(train_data) / global_batch)
    total_steps = max_steps if max_steps is not None else epochs * steps_per_epoch
    if total_steps < 1:
        raise ValueError(f"the run has {total_steps} steps: max_steps / epochs must be >= 1")
    if resume_from is not None:  # continue a run
        module.load_checkpoint(resume_from)
        if module.schedule_steps != (module.schedule_steps_arg or total_steps):
            raise ValueError(
                f"the checkpoint's LR schedule covers {module.schedule_steps} steps but this run's covers "
                f"{module.schedule_steps_arg or total_steps}; resume with the original max_steps/epochs"
            )
    else:  # a new run (the weights are kept; optimizer, schedule, data order and curves start afresh)
        module.step_offset, module.tokens_seen = 0, 0
        module.curve, module.val_curve = [], []
        module.schedule_steps = module.schedule_steps_arg or total_steps
    module._micro = {}
    module.on_log = None if spawning else on_log  # a closure (e.g. a W&B run) cannot go to a worker
    start = module.step_offset
    if start >= total_steps:
        raise ValueError(f"the checkpoint is at step {start}, at or past the run's {total_steps} steps")

    _set_threads(threads)
    seed_everything(seed)
    sampler = StepBatchSampler(len(train_data), batch_size, total_steps, seed=seed, start_step=start,
                               world_size=world, accumulate=accumulate_grad_batches)  # fmt: skip
    train_loader = DataLoader(train_data, batch_sampler=sampler, collate_fn=Collate(pad_id))
    if val_data is not None:
        fsdp = strategy == "fsdp"
        val_loader = DataLoader(
            val_data,
            batch_size=val_batch_size or batch_size,
            sampler=ShardSampler(len(val_data), 1 if fsdp else world),
            collate_fn=Collate(pad_id),
        )
        cbs.append(_Validation(val_loader, val_every, fsdp=fsdp))
    if checkpoint_dir is not None:
        cbs.append(_Checkpointer(checkpoint_dir, checkpoint_every, tokenizer))
    tmp = tempfile.TemporaryDirectory(prefix="trustlab-fit-") if spawning else None
    if tmp is not None:
        cbs.append(_SendBack(os.path.join(tmp.name, "worker_state.pt")))
    trainer = _with_callbacks(trainer_kw, cbs)

    params = list(module.model.parameters())
    device_before = params[0].device if params else None
    tokens_before, n_curve, n_val = module.tokens_seen, len(module.curve), len(module.val_curve)
    try:
        with _quiet_lightning():
            t0 = time.perf_counter()
            # Lightning does not switch a module loaded in eval mode (e.g. by load_model) to train mode.
            module.train()
            trainer.fit(module, train_dataloaders=train_loader)
            seconds = time.perf_counter() - t0
        if tmp is not None:
            state = torch.load(os.path.join(tmp.name, "worker_state.pt"), map_location="cpu", weights_only=True)
            steps = int(state["steps"])
            module.restore_worker_state(state)
            if on_log is not None:  # replay in the order the rows were made
                rows = [(r["step"], 0, r) for r in module.curve[n_curve:]] + [
                    (r["step"], 1, r) for r in module.val_curve[n_val:]
                ]
                for _, _, row in sorted(rows, key=lambda x: (x[0], x[1])):
                    on_log(dict(row))
        else:
            steps = int(trainer.global_step)
    finally:
        if tmp is not None:
            tmp.cleanup()
        module.on_log = None
    if device_before is not None and device_before.type != "cpu":
        module.to(device_before)  # Lightning's teardown left it on the CPU
    return FitResult(
        module=module,
        trainer=trainer,
        steps=steps,
        seconds=seconds,
        tokens=module.tokens_seen - tokens_before,
        curve=module.curve[n_curve:],
        val_curve=list(module.val_curve),
    )


def _with_callbacks(trainer_kw: dict[str, Any], callbacks: list[L.Callback]) -> L.Trainer:
    with _quiet_lightning():
        return L.Trainer(**trainer_kw, callbacks=callbacks)
