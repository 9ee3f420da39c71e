"""What the ``entropy_attention`` stage produces: one :class:`RunResult` per trained
(variant, seed, gamma, lambda) and the stage's :class:`Results`. Plain data (no torch), so the tables,
claims and figures can be built and tested from stored numbers alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunResult:
    variant: str
    seed: int
    gamma: float
    lam: float
    status: str  # "ok" | "diverged" | "error"
    reason: str | None
    diverged_step: int | None
    steps: int
    tokens: int
    train_seconds: float  # fit() wall time, entropy monitoring included
    monitor_seconds: float
    monitor_calls: int
    eval_seconds: float
    val_loss: float  # test windows (the claims' half of the validation files)
    val_ppl: float
    val_bpt: float
    max_uniform: float
    entropy: list  # (L, H) nats, test windows, eval mode
    entropy_norm: list  # (L, H)
    per_query: list  # (L, H, T)
    tune: dict  # the same on the tuning windows: val_loss, val_ppl, entropy, entropy_norm (L, H)
    history: list  # monitor rows: step, probe_loss, layer_mean (L,), mean (L, H), max_uniform
    curve: list  # training curve rows (loss, ce, ent_reg, lr, ...)
    learned: dict  # theta (L, H), temperature (L, H, T), selective_beta, scfu_alpha / beta

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def ms_per_step(self) -> float:
        """Training time per step without the entropy monitoring."""
        return 1000 * (self.train_seconds - self.monitor_seconds) / self.steps if self.steps else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Results:
    config: dict[str, Any]
    runs: list[RunResult]  # every (variant, seed); regularised variants at ``chosen_lam``
    sweep: list[RunResult]  # gamma-sweep runs not already among ``runs``
    seconds: float = 0.0
    corpus: dict[str, Any] = field(default_factory=dict)
    tuning: list[RunResult] = field(default_factory=list)  # the lambda sweep, on the tuning seeds
    chosen_lam: float | None = None  # the lambda of the regularised variants in ``runs``
    cpu_seconds: float = 0.0  # CPU time of this process and its workers during the stage
    workers: int = 1

    @property
    def all_runs(self) -> list[RunResult]:
        return self.runs + self.sweep + self.tuning
