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
* ``fit(module, train_data, max_steps=... | epochs=..., ...)``: a CPU ``lightning.Trainer``
  with seeding, thread settings, a notebook-friendly progress bar (off in executed reports),
  no logger, gradient clipping, periodic training checkpoints and exact resume.

Data order is a pure function of (seed, step): step s draws batch s mod E of epoch s // E,
each epoch a fresh seeded permutation. That is what makes resume exact without relying on
Lightning's loop state; ``max_steps`` and ``epochs`` both become a number of steps (giving both
is an error).
"""

from __future__ import annotations

import contextlib
import logging
import math
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
from trustlab.progress import progress_enabled
from trustlab.seeding import seed_everything, set_threads

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
    """Batches for steps ``start_step .. total_steps - 1``: step s takes batch s mod E of epoch
    s // E (E = ceil(n / batch_size)), each epoch a permutation seeded by (seed, epoch)."""

    def __init__(
        self, n: int, batch_size: int, total_steps: int, *, seed: int = 0, start_step: int = 0, shuffle: bool = True
    ):
        if n < 1:
            raise ValueError("the training dataset is empty")
        self.n, self.batch_size, self.total_steps = n, batch_size, total_steps
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self.steps_per_epoch = math.ceil(n / batch_size)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        order, order_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, b = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self._order(epoch), epoch
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


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
        self.tokens_seen += int(batch["attention_mask"].sum())
        row = {
            "step": self.step + 1,
            "loss": float(loss.detach()),
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "tokens": self.tokens_seen,
        }
        row.update({k: float(v) for k, v in components.items()})
        self.curve.append(row)
        if self.on_log is not None:
            self.on_log(dict(row))
        self.log("loss", row["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["input_ids"]))
        return loss

    def on_validation_epoch_start(self):
        self._val_sum = self._val_count = 0.0

    def validation_step(self, batch, batch_idx):
        loss, n = self.eval_loss(batch)
        self._val_sum += float(loss) * float(n)
        self._val_count += float(n)

    def on_validation_epoch_end(self):
        if self._val_count:
            row = {"step": self.step, "val_loss": self._val_sum / self._val_count}
            self.val_curve.append(row)
            if self.on_log is not None:
                self.on_log(dict(row))
            self.log("val_loss", row["val_loss"], prog_bar=True)

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


# ---------------------------------------------------------------------------------------------
# fit


class _Checkpointer(L.Callback):
    def __init__(self, directory, every: int, tokenizer=None):
        self.directory, self.every, self.tokenizer = directory, every, tokenizer

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.every and module.step % self.every == 0:
            module.save_checkpoint(self.directory, self.tokenizer)


@dataclass
class FitResult:
    module: CausalLMModule
    trainer: L.Trainer
    steps: int  # optimizer steps in this fit() call
    seconds: float
    tokens: int  # tokens processed in this fit() call (padding excluded)
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
) -> FitResult:
    """Train ``module`` on ``train_data`` for ``max_steps`` optimizer steps or ``epochs`` passes
    (exactly one; both count from step 0 of the run, so a resumed run passes the same value).
    Batches are right-padded with ``pad_id`` (default ``tokenizer.pad_id``).

    ``val_data`` is evaluated every ``val_every`` steps and at the end (default: at the end only).
    ``checkpoint_dir``: a training checkpoint (model + tokenizer + optimizer/scheduler/RNG
    state) is written every ``checkpoint_every`` steps and at the end. ``resume_from``: a
    checkpoint directory; the run continues from its step with identical data order.
    ``progress`` None follows ``trustlab.progress.progress_enabled()`` (off in executed reports).
    """
    if pad_id is None:
        if tokenizer is None:
            raise ValueError("give pad_id or tokenizer (whose pad_id pads the batches)")
        pad_id = tokenizer.pad_id
    if (max_steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of max_steps ({max_steps}) and epochs ({epochs})")
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
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
    module.on_log = on_log
    start = module.step_offset
    if start >= total_steps:
        raise ValueError(f"the checkpoint is at step {start}, at or past the run's {total_steps} steps")

    _set_threads(threads)
    seed_everything(seed)
    sampler = StepBatchSampler(len(train_data), batch_size, total_steps, seed=seed, start_step=start)
    train_loader = DataLoader(train_data, batch_sampler=sampler, collate_fn=Collate(pad_id))
    val_loader = None
    if val_data is not None:
        val_loader = DataLoader(
            val_data, batch_size=val_batch_size or batch_size, shuffle=False, collate_fn=Collate(pad_id)
        )

    show = progress_enabled() if progress is None else progress
    cbs = list(callbacks)
    if show:
        from lightning.pytorch.callbacks import TQDMProgressBar

        cbs.append(TQDMProgressBar(refresh_rate=refresh_rate))
    if checkpoint_dir is not None and checkpoint_every:
        cbs.append(_Checkpointer(checkpoint_dir, checkpoint_every, tokenizer))
    remaining = total_steps - start
    trainer_kw: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=remaining,
        max_epochs=1,  # one Lightning epoch = the whole step-indexed stream
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=show,
        num_sanity_val_steps=0,
        gradient_clip_val=grad_clip,
        callbacks=cbs,
    )
    if val_loader is not None:
        trainer_kw["val_check_interval"] = min(val_every or remaining, remaining)
        trainer_kw["check_val_every_n_epoch"] = None
    else:
        trainer_kw["limit_val_batches"] = 0
    tokens_before, n_curve = module.tokens_seen, len(module.curve)
    with _quiet_lightning():
        trainer = L.Trainer(**trainer_kw)
        t0 = time.perf_counter()
        # Lightning does not switch a module loaded in eval mode (e.g. by load_model) to train mode.
        module.train()
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        seconds = time.perf_counter() - t0
        if val_loader is not None and (not module.val_curve or module.val_curve[-1]["step"] != module.step):
            was_training = module.training
            trainer.validate(module, dataloaders=val_loader, verbose=False)  # always end with a validation
            module.train(was_training)
    if checkpoint_dir is not None:
        module.save_checkpoint(checkpoint_dir, tokenizer)
    module.on_log = None
    return FitResult(
        module=module,
        trainer=trainer,
        steps=trainer.global_step,
        seconds=seconds,
        tokens=module.tokens_seen - tokens_before,
        curve=module.curve[n_curve:],
        val_curve=list(module.val_curve),
    )
