"""Equal-budget tuning of the calibration losses on validation data.

Every loss of the main comparison gets the same budget: ``calibration.tuning.trials`` values of
one knob (``calibration.tuning.grids``, one grid per loss), each trained on the training split
of every tuning seed (``calibration.tuning.seeds``, disjoint from the test seeds) and scored on
that seed's **validation** split. One rule (:data:`RULE`) picks a value per loss and dataset;
the test seeds then train each loss at its chosen value, so the claims compare tuned against
tuned. The test split of a tuning seed is never read.

* A loss with a hyperparameter of its own is tuned on it (:data:`KNOBS`, e.g. focal's
  ``gamma``; the Bias loss ties ``alpha = beta``).
* Cross-entropy (the baseline) and every loss without a knob of its own (Brier, MAE) are
  tuned on the knob every loss has, the optimiser's weight decay (:data:`SHARED_KNOB`), with
  the same number of values. The losses tuned on their own knob keep ``calibration.weight_decay``.
* **Why validation NLL, not validation ECE.** NLL is a proper scoring rule: it is minimised
  in expectation only by the true conditional probabilities, so it rewards accuracy and
  calibration together and cannot be gamed by a constant-confidence model. ECE is binned
  (its value jumps with the bin edges, and on a few hundred validation samples it is noisy)
  and it is the very metric the test-set claims use: selecting on it would reward the noise
  of one validation split and tune towards the claim.
* **Datasets.** The digits and the waveform digits each get their own selection. The
  label-noise table reuses the clean digits choices: tuning under noise would need noisy
  validation labels to be honest (a practitioner with noisy training labels has no clean
  validation set), which is a different design, and the same choice on both sides keeps the
  budget equal. The soft-label and AnyLoss tables and the calibrators are not tuned: both sides
  of those claims run at their ``params.yaml`` values (an equal budget of no trials).

Nothing here imports torch: the config validates grids with :data:`KNOBS` cheaply; the
training runs are in :func:`trustlab.calibration.run.run_tuning`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trustlab.calibration.losses import validate_loss
from trustlab.core.config import ConfigError
from trustlab.core.registry import Registry
from trustlab.core.tuning import select_lowest

__all__ = [
    "DEFAULT_GRIDS",
    "KNOBS",
    "RULE",
    "SCORE",
    "SHARED_KNOB",
    "Knob",
    "LossParamKnob",
    "TuningResult",
    "WeightDecayKnob",
    "check_grids",
    "choose",
    "datasets",
    "knob_for",
    "plan",
    "summarize_sweep",
    "tuned_losses",
]

SCORE = "val_nll"  # the selection score (lower is better), averaged over the tuning seeds
RULE = ("the value with the lowest validation NLL (mean over the tuning seeds; a diverged run counts as +inf); "
        "ties go to the first value of the grid")  # fmt: skip


class Knob:
    """What one tuning trial changes: :meth:`apply` returns the config with ``loss`` at ``value``;
    :meth:`check` rejects a value the knob does not allow; ``name`` labels it in tables."""

    name: str = ""

    def apply(self, cfg: Any, loss: str, value: float) -> Any:
        raise NotImplementedError

    def check(self, loss: str, value: float, where: str) -> None:
        raise NotImplementedError

    def default(self, cfg: Any, loss: str) -> float:
        """The value ``cfg`` uses without tuning."""
        raise NotImplementedError


@dataclass(frozen=True)
class LossParamKnob(Knob):
    """A hyperparameter of the loss itself: theta[p] = v for every p in ``params`` (tied ones move together)."""

    params: tuple[str, ...]

    @property
    def name(self) -> str:  # type: ignore[override]
        return "=".join(self.params)

    def apply(self, cfg: Any, loss: str, value: float) -> Any:
        hp = {**cfg.loss_params.get(loss, {}), **{p: float(value) for p in self.params}}
        return cfg.replace(loss_params={**cfg.loss_params, loss: hp})

    def check(self, loss: str, value: float, where: str) -> None:
        validate_loss(loss, {p: value for p in self.params}, where=where)

    def default(self, cfg: Any, loss: str) -> float:
        return float(cfg.hparams_for(loss)[self.params[0]])


@dataclass(frozen=True)
class WeightDecayKnob(Knob):
    """The optimiser's weight decay, the knob every loss has: Adam's gradient g <- g + v * w."""

    name: str = "weight_decay"

    def apply(self, cfg: Any, loss: str, value: float) -> Any:
        return cfg.replace(weight_decay_per_loss={**cfg.weight_decay_per_loss, loss: float(value)})

    def check(self, loss: str, value: float, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{where} {loss!r}: weight_decay = {value!r} is out of range: allowed 0 <= weight_decay")

    def default(self, cfg: Any, loss: str) -> float:
        return float(cfg.weight_decay_for(loss))


# loss name -> the knob of its own; every other loss is tuned on SHARED_KNOB
KNOBS: Registry[Knob] = Registry("tuning knob")
KNOBS.register("label_smoothing")(LossParamKnob(("eps",)))
KNOBS.register("focal")(LossParamKnob(("gamma",)))
KNOBS.register("flsd53")(LossParamKnob(("gamma_low_p",)))  # the gamma of hard samples (p_y < 0.2); 3 above
KNOBS.register("mmce")(LossParamKnob(("lam",)))
KNOBS.register("comp_sum")(LossParamKnob(("tau",)))
KNOBS.register("gce")(LossParamKnob(("q",)))
KNOBS.register("ldr_kl")(LossParamKnob(("lam",)))
KNOBS.register("aldr_kl")(LossParamKnob(("lambda0",)))
KNOBS.register("bias")(LossParamKnob(("alpha", "beta")))  # the paper uses alpha = beta
KNOBS.register("zloss")(LossParamKnob(("a",)))
SHARED_KNOB = WeightDecayKnob()

# Grids of 4 values that bracket the value the loss's paper uses (docs/methods/calibration.md, "Tuning").
_WEIGHT_DECAY = [0.0, 1e-4, 1e-3, 1e-2]
DEFAULT_GRIDS: dict[str, list[float]] = {
    "ce": list(_WEIGHT_DECAY),
    "label_smoothing": [0.05, 0.1, 0.2, 0.3],
    "focal": [1.0, 2.0, 3.0, 5.0],
    "flsd53": [3.0, 4.0, 5.0, 7.0],
    "brier": list(_WEIGHT_DECAY),
    "mmce": [1.0, 2.0, 4.0, 8.0],
    "gce": [0.3, 0.5, 0.7, 0.9],
    "mae": list(_WEIGHT_DECAY),
    "ldr_kl": [1.0, 3.0, 10.0, 30.0],
    "aldr_kl": [1.0, 3.0, 10.0, 30.0],
    "bias": [0.1, 0.3, 0.5, 1.0],
    "zloss": [0.5, 1.0, 2.0, 4.0],
}


def knob_for(loss: str) -> Knob:
    """The knob ``loss`` is tuned on: its own (:data:`KNOBS`) or the shared weight decay."""
    return KNOBS.get(loss) if loss in KNOBS else SHARED_KNOB


def datasets(cfg: Any) -> list[str]:
    """The main-table datasets of a run, each tuned separately."""
    return ["digits"] + (["waveforms"] if cfg.waveforms.enabled else [])


def tuned_losses(cfg: Any, dataset: str) -> list[str]:
    """The losses tuned on ``dataset``: the main table's, and on the digits also the label-noise
    table's (it reuses the clean digits choices)."""
    losses = list(cfg.losses)
    if dataset == "digits":
        losses += [loss for loss in cfg.noise.losses if loss not in losses]
    return losses


def plan(cfg: Any) -> list[tuple[str, str, float, int]]:
    """(dataset, loss, value, tuning seed) of every trial, grid order within each loss: the same
    number of trials for every loss (the config checks the grid lengths)."""
    if not cfg.tuning.enabled:
        return []
    return [(ds, loss, float(v), seed) for ds in datasets(cfg) for loss in tuned_losses(cfg, ds)
            for v in cfg.tuning.grids[loss] for seed in cfg.tuning.seeds]  # fmt: skip


@dataclass
class TuningResult:
    """``sweep``: one row per trial (dataset, loss, knob, value, seed, val_nll, val_ece, val_acc,
    train_seconds); ``chosen``: dataset -> loss -> chosen value; ``untuned``: dataset -> loss ->
    the value the knob has without tuning (params.yaml); ``trials`` and ``seeds``: the budget."""

    sweep: pd.DataFrame
    chosen: dict[str, dict[str, float]] = field(default_factory=dict)
    trials: int = 0
    seeds: list[int] = field(default_factory=list)
    untuned: dict[str, dict[str, float]] = field(default_factory=dict)

    def config_for(self, cfg: Any, dataset: str) -> Any:
        """``cfg`` with every loss tuned on ``dataset`` at its chosen value (``cfg`` when none)."""
        out = cfg
        for loss, value in self.chosen.get(dataset, {}).items():
            out = knob_for(loss).apply(out, loss, value)
        return out

    def choice(self, dataset: str, loss: str) -> tuple[str, float, list[float]] | None:
        """(knob name, chosen value, grid) of ``loss`` on ``dataset``; None when it was not tuned."""
        if loss not in self.chosen.get(dataset, {}):
            return None
        rows = self.sweep[(self.sweep["dataset"] == dataset) & (self.sweep["loss"] == loss)]
        return knob_for(loss).name, self.chosen[dataset][loss], list(dict.fromkeys(rows["value"]))


def summarize_sweep(sweep: pd.DataFrame) -> pd.DataFrame:
    """Mean over the tuning seeds per dataset x loss x value, grid order kept: dataset, loss,
    knob, value, val_nll, val_ece, val_acc, n (seeds)."""
    if sweep is None or sweep.empty:
        return pd.DataFrame(columns=["dataset", "loss", "knob", "value", "val_nll", "val_ece", "val_acc", "n"])
    g = sweep.groupby(["dataset", "loss", "knob", "value"], sort=False)
    out = g[["val_nll", "val_ece", "val_acc"]].mean().reset_index()
    out["n"] = g.size().to_numpy()
    return out


def choose(sweep: pd.DataFrame) -> dict[str, dict[str, float]]:
    """dataset -> loss -> the value :data:`RULE` picks from the sweep rows (grid order = row order)."""
    summary = summarize_sweep(sweep)
    out: dict[str, dict[str, float]] = {}
    for (ds, loss), rows in summary.groupby(["dataset", "loss"], sort=False):
        scores = np.where(np.isfinite(rows[SCORE].to_numpy(float)), rows[SCORE].to_numpy(float), np.inf)
        out.setdefault(ds, {})[loss] = float(rows["value"].iloc[select_lowest(scores)])
    return out


def check_grids(grids: Mapping[str, Sequence[float]], where: str) -> None:
    """Every grid's values are allowed for its loss's knob (named error otherwise)."""
    from trustlab.core.tuning import check_grid

    for loss, values in grids.items():
        check_grid(values, f"{where}.{loss}")
        for v in values:
            knob_for(loss).check(loss, v, where=f"{where}.{loss}")
