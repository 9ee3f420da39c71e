"""``fit``: the Lightning ``Trainer`` set-up, in small steps.

``fit(module, train_data, max_steps=... | epochs=..., ...)`` builds a ``lightning.Trainer`` (one
CPU process by default; ``accelerator``/``devices``/``strategy``/``precision``/
``accumulate_grad_batches`` from ``model.trainer`` in params) with seeding, thread settings, a
notebook-friendly progress bar (off in executed reports), no logger, gradient clipping,
validation, periodic training checkpoints (rank 0) and exact resume. ``max_steps`` and
``epochs`` both become a number of steps (giving both is an error); the data order is the
step-indexed one of :mod:`trustlab.lm.training.sampling`.
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
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from trustlab.core.progress import progress_enabled
from trustlab.core.seeding import seed_everything, set_threads
from trustlab.lm.training.callbacks import PeriodicCheckpoint, PeriodicValidation, SendBackWorkerState
from trustlab.lm.training.data import Collate
from trustlab.lm.training.module import CausalLMModule
from trustlab.lm.training.sampling import ShardSampler, StepBatchSampler

STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
_SPAWNING = ("ddp_spawn", "ddp_notebook", "ddp_fork")  # workers are new processes; the caller is not a rank

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

def _strategy_for(strategy: str, checkpoint_dir) -> str:
    """The strategy that can run here: a notebook kernel cannot re-launch itself for ``ddp``."""
    if strategy == "ddp" and _interactive():
        warnings.warn("strategy 'ddp' cannot re-launch a notebook kernel: using 'ddp_notebook' (forked workers)",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
        strategy = "ddp_notebook"
    if strategy == "fsdp" and checkpoint_dir is not None:
        raise ValueError("checkpoint_dir is not supported with strategy 'fsdp' (sharded weights): leave it None")
    return strategy


def trainer_settings(*, accelerator, devices, strategy, precision, accumulate_grad_batches, num_nodes, grad_clip,
                     show_progress: bool) -> dict[str, Any]:  # fmt: skip
    """The ``lightning.Trainer`` keyword arguments (callbacks apart)."""
    return dict(
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
        enable_progress_bar=show_progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,  # validation runs in the PeriodicValidation callback
        use_distributed_sampler=False,  # StepBatchSampler / ShardSampler split the data
        gradient_clip_val=grad_clip,
    )


def _with_callbacks(trainer_kw: dict[str, Any], callbacks: list[L.Callback]) -> L.Trainer:
    with _quiet_lightning():
        return L.Trainer(**trainer_kw, callbacks=callbacks)


def _total_steps(n_items: int, global_batch: int, max_steps: int | None, epochs: int | None) -> int:
    steps_per_epoch = math.ceil(n_items / global_batch)
    total_steps = max_steps if max_steps is not None else epochs * steps_per_epoch
    if total_steps < 1:
        raise ValueError(f"the run has {total_steps} steps: max_steps / epochs must be >= 1")
    return total_steps


def _prepare_module(module: CausalLMModule, total_steps: int, resume_from) -> int:
    """Load the checkpoint of a resumed run, or reset the run state of a new one; return the
    step the run starts at."""
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
    start = module.step_offset
    if start >= total_steps:
        raise ValueError(f"the checkpoint is at step {start}, at or past the run's {total_steps} steps")
    return start


def _replay_log(module: CausalLMModule, n_curve: int, n_val: int, on_log: Callable[[dict], None]) -> None:
    """Spawned runs: send the rows made in the workers to ``on_log``, in the order they were made."""
    rows = [(r["step"], 0, r) for r in module.curve[n_curve:]] + [(r["step"], 1, r) for r in module.val_curve[n_val:]]
    for _, _, row in sorted(rows, key=lambda x: (x[0], x[1])):
        on_log(dict(row))


def _fit_callbacks(callbacks: Sequence[L.Callback], *, show: bool, refresh_rate: int, val_data: Dataset | None,
                   val_every: int | None, val_batch_size: int, pad_id: int, world: int, strategy: str,
                   checkpoint_dir, checkpoint_every: int | None, tokenizer, worker_state: str | None) -> list[L.Callback]:  # fmt: skip
    """The caller's callbacks, then the progress bar, validation, checkpoints and (spawned runs)
    the hand-back of rank 0's state."""
    cbs = list(callbacks)
    if show:
        from lightning.pytorch.callbacks import TQDMProgressBar

        cbs.append(TQDMProgressBar(refresh_rate=refresh_rate))
    if val_data is not None:
        fsdp = strategy == "fsdp"
        val_loader = DataLoader(
            val_data,
            batch_size=val_batch_size,
            sampler=ShardSampler(len(val_data), 1 if fsdp else world),
            collate_fn=Collate(pad_id),
        )
        cbs.append(PeriodicValidation(val_loader, val_every, fsdp=fsdp))
    if checkpoint_dir is not None:
        cbs.append(PeriodicCheckpoint(checkpoint_dir, checkpoint_every, tokenizer))
    if worker_state is not None:
        cbs.append(SendBackWorkerState(worker_state))
    return cbs


def _train(trainer: L.Trainer, module: CausalLMModule, train_loader: DataLoader, tmp, on_log, n_curve: int,
           n_val: int) -> tuple[int, float]:  # fmt: skip
    """Run ``trainer.fit``; -> (optimizer steps done, seconds). A spawned run's state comes back
    from the file rank 0 wrote."""
    with _quiet_lightning():
        t0 = time.perf_counter()
        # Lightning does not switch a module loaded in eval mode (e.g. by load_model) to train mode.
        module.train()
        trainer.fit(module, train_dataloaders=train_loader)
        seconds = time.perf_counter() - t0
    if tmp is None:
        return int(trainer.global_step), seconds
    state = torch.load(os.path.join(tmp.name, "worker_state.pt"), map_location="cpu", weights_only=True)
    module.restore_worker_state(state)
    if on_log is not None:
        _replay_log(module, n_curve, n_val, on_log)
    return int(state["steps"]), seconds


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
    strategy = _strategy_for(strategy, checkpoint_dir)
    show = progress_enabled() if progress is None else progress
    spawning = strategy in _SPAWNING
    trainer_kw = trainer_settings(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                                  accumulate_grad_batches=accumulate_grad_batches, num_nodes=num_nodes,
                                  grad_clip=grad_clip, show_progress=show)  # fmt: skip
    with _quiet_lightning():  # a first Trainer tells the world size the data must be split for
        world = int(L.Trainer(**trainer_kw, callbacks=[]).world_size)

    total_steps = _total_steps(len(train_data), batch_size * world * accumulate_grad_batches, max_steps, epochs)
    start = _prepare_module(module, total_steps, resume_from)
    module.on_log = None if spawning else on_log  # a closure (e.g. a W&B run) cannot go to a worker

    _set_threads(threads)
    seed_everything(seed)
    sampler = StepBatchSampler(len(train_data), batch_size, total_steps, seed=seed, start_step=start,
                               world_size=world, accumulate=accumulate_grad_batches)  # fmt: skip
    train_loader = DataLoader(train_data, batch_sampler=sampler, collate_fn=Collate(pad_id))

    tmp = tempfile.TemporaryDirectory(prefix="trustlab-fit-") if spawning else None
    cbs = _fit_callbacks(callbacks, show=show, refresh_rate=refresh_rate, val_data=val_data, val_every=val_every,
                         val_batch_size=val_batch_size or batch_size, pad_id=pad_id, world=world, strategy=strategy,
                         checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, tokenizer=tokenizer,
                         worker_state=os.path.join(tmp.name, "worker_state.pt") if tmp is not None else None)  # fmt: skip
    trainer = _with_callbacks(trainer_kw, cbs)

    params = list(module.model.parameters())
    device_before = params[0].device if params else None
    tokens_before, n_curve, n_val = module.tokens_seen, len(module.curve), len(module.val_curve)
    try:
        steps, seconds = _train(trainer, module, train_loader, tmp, on_log, n_curve, n_val)
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
