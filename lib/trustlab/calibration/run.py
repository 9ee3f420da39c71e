"""The calibration family's experiments: plan, train, evaluate, as pure functions.

Each ``run_*`` function takes a :class:`~trustlab.calibration.config.CalibrationConfig` and
returns per-seed pandas DataFrames (no files, no plots, no W&B). An optional ``on_run(name,
seed, metrics)`` callback is called once per trained model, so the notebook can log one W&B
run per (loss, seed) without this module knowing about W&B. The tables land in one
:class:`Results`.

* :func:`run_main_table`: loss x {raw, each calibrator} x seed with ``id_<metric>`` (clean
  test set) and ``shift_<metric>`` (averaged over every shift and severity), plus a per-shift
  table and reliability-diagram bins for the first seed.
* :func:`run_robustness`: loss x label-noise kind x rate x seed (raw and +TS).
* :func:`run_soft_labels`: label source (majority vote CE, vote / aggregate soft-label KL, ...)
  x seed, in-distribution and shifted.
* :func:`run_anyloss`: binary losses on breast cancer x seed.
* :func:`run_lm`: the base language model's answer-level calibration (:mod:`.lm`).

Per-seed rows carry ``train_seconds`` / ``eval_seconds`` (:data:`TIMING_COLUMNS`): the
report moves them to ``timing.json`` and keeps them out of every table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from trustlab.calibration import lm as lmcal
from trustlab.calibration.calibrators import CALIBRATORS
from trustlab.calibration.config import CalibrationConfig
from trustlab.calibration.data import (
    Split,
    add_label_noise,
    aggregate_soft_labels,
    ca_views,
    load_breast_cancer_split,
    load_digits_split,
    majority_vote,
    shifted_test_sets,
    simulate_annotators,
    soft_labels,
)
from trustlab.calibration.losses import build_loss
from trustlab.calibration.metrics import METRIC_NAMES, binary_metrics, calibration_bins, evaluate
from trustlab.calibration.models import build_model
from trustlab.calibration.module import FitResult, fit, predict_logits
from trustlab.core.progress import progress
from trustlab.core.seeding import seed_everything, set_threads

__all__ = [
    "FAMILY",
    "OnRun",
    "TIMING_COLUMNS",
    "ROBUSTNESS_CALIBRATORS",
    "MainTables",
    "Results",
    "SeedData",
    "calibrator_names",
    "prepare_seed",
    "train_one",
    "fit_calibrators",
    "evaluate_model",
    "run_main_table",
    "run_robustness",
    "run_soft_labels",
    "crowd_targets",
    "run_anyloss",
    "run_lm",
]

FAMILY = "calibration"
OnRun = Callable[[str, int, dict], None]
TIMING_COLUMNS = ("train_seconds", "eval_seconds")
# the label-noise table trains many models: it evaluates raw and temperature scaling only
ROBUSTNESS_CALIBRATORS = ("ts",)


def _set_threads(n: int) -> None:
    """``trustlab.core.seeding.set_threads`` (falls back to ``torch.set_num_threads`` where this torch
    build lacks ``set_interop_threads``, which ``set_threads`` does not catch)."""
    try:
        set_threads(n)
    except AttributeError:
        torch.set_num_threads(n)


# -- per-seed data ------------------------------------------------------------------------------


def calibrator_names(cfg: CalibrationConfig) -> list[str]:
    """The configured calibrators, in registry order (``ts`` before ``ca``)."""
    return [name for name in CALIBRATORS.names() if name in cfg.calibrators]


def _needs_views(cfg: CalibrationConfig) -> bool:
    return any(CALIBRATORS.get(name).needs_views for name in cfg.calibrators)


@dataclass
class SeedData:
    """A digits split and everything derived from it that does not depend on the model: the
    shifted test sets and the transformed views of validation, test and shifted images (only
    when a configured calibrator needs views)."""

    seed: int
    split: Split
    shifted: dict[tuple[str, int], np.ndarray]
    views_val: list[np.ndarray]
    views_test: list[np.ndarray]
    views_shifted: dict[tuple[str, int], list[np.ndarray]] = field(default_factory=dict)


def _views(cfg: CalibrationConfig, images: np.ndarray) -> list[np.ndarray]:
    c = cfg.ca
    return ca_views(images, rotation=c.rotation, contrast=c.contrast, brightness=c.brightness, shift=c.shift,
                    blur=c.blur)  # fmt: skip


def prepare_seed(cfg: CalibrationConfig, seed: int) -> SeedData:
    split = load_digits_split(seed, cfg.val_frac, cfg.test_frac, cfg.n_train)
    shifted = shifted_test_sets(split.images_test, cfg.shifts, cfg.severities, seed=seed)
    with_views = _needs_views(cfg)
    return SeedData(
        seed=seed,
        split=split,
        shifted=shifted,
        views_val=_views(cfg, split.images_val) if with_views else [],
        views_test=_views(cfg, split.images_test) if with_views else [],
        views_shifted={k: _views(cfg, x.reshape(-1, 8, 8)) for k, x in shifted.items()} if with_views else {},
    )


# -- training and evaluation --------------------------------------------------------------------


def train_one(
    cfg: CalibrationConfig,
    loss_name: str,
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int = 10,
) -> FitResult:
    """Seed, build the MLP and the loss (hyperparameters from the config), train with Lightning."""
    seed_everything(seed)
    model = build_model(x.shape[1], num_classes, hidden=cfg.hidden, depth=cfg.depth)
    loss = build_loss(loss_name, n_samples=len(y), **cfg.hparams_for(loss_name))
    return fit(model, loss, x, y, seed=seed, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
               weight_decay=cfg.weight_decay, enable_progress_bar=cfg.enable_progress_bar)  # fmt: skip


Calibrated = Callable[[torch.Tensor, object], torch.Tensor]


def _view_logits(model, data: SeedData) -> dict[object, list[torch.Tensor]]:
    """The model's logits on every view: key ``"val"``, ``"id"`` (clean test) or (shift, severity)."""
    out: dict[object, list[torch.Tensor]] = {}
    if data.views_val:
        out["val"] = [predict_logits(model, v) for v in data.views_val]
        out["id"] = [predict_logits(model, v) for v in data.views_test]
        for k, vs in data.views_shifted.items():
            out[k] = [predict_logits(model, v) for v in vs]
    return out


def fit_calibrators(cfg: CalibrationConfig, model, data: SeedData) -> tuple[dict[str, Calibrated], dict[str, float]]:
    """Fit every configured calibrator on the validation logits -> ({variant: f(logits, key)},
    {variant: temperature (per-sample calibrators: the mean over validation)}); ``key`` is
    ``"id"`` or (shift, severity) and picks the views of that test set."""
    sp = data.split
    z_val = predict_logits(model, sp.x_val)
    views = _view_logits(model, data) if _needs_views(cfg) else {}
    out: dict[str, Calibrated] = {"raw": lambda z, key: z}
    temps: dict[str, float] = {"raw": 1.0}
    for name in calibrator_names(cfg):
        cal = CALIBRATORS.get(name).from_config(cfg, data.seed)
        cal.fit(z_val, sp.y_val, views.get("val"))
        out[name] = lambda z, key, cal=cal: cal(z, views.get(key))
        temps[name] = cal.mean_temperature(z_val, views.get("val"))
    return out, temps


def evaluate_model(cfg: CalibrationConfig, model, data: SeedData, y_test: np.ndarray | None = None):
    """-> (rows: one dict per variant with id_* and shift_* metrics and the temperature,
    per_shift rows, {variant: {"id": calibrated test logits, "shift": pooled shifted logits}})."""
    sp = data.split
    y = sp.y_test if y_test is None else y_test
    cals, temps = fit_calibrators(cfg, model, data)
    z_id = predict_logits(model, sp.x_test)
    z_sh = {k: predict_logits(model, x) for k, x in data.shifted.items()}
    rows, per_shift, logits = [], [], {}
    for variant, f in cals.items():
        row = {"variant": variant, "temperature": temps[variant]}
        zi = f(z_id, "id")
        row.update({f"id_{m}": v for m, v in evaluate(zi, y, cfg.n_bins).items()})
        pooled = []
        if z_sh:
            ms = []
            for (kind, sev), z in z_sh.items():
                zc = f(z, (kind, sev))
                pooled.append(zc)
                m = evaluate(zc, y, cfg.n_bins)
                ms.append(m)
                per_shift.append({"variant": variant, "shift": kind, "severity": sev, **m})
            row.update({f"shift_{m}": float(np.mean([d[m] for d in ms])) for m in METRIC_NAMES})
        rows.append(row)
        logits[variant] = {"id": zi, "shift": torch.cat(pooled) if pooled else None}
    return rows, per_shift, logits


# -- main table ---------------------------------------------------------------------------------


@dataclass
class MainTables:
    """``main``: loss x variant x seed; ``per_shift``: + shift x severity; ``bins``: reliability
    bins (first seed) per loss x variant x split ("id" / "shift" pooled)."""

    main: pd.DataFrame
    per_shift: pd.DataFrame
    bins: pd.DataFrame


def _bins_rows(probs, y, n_bins, **keys) -> list[dict]:
    b = calibration_bins(probs, y, n_bins)
    return [{**keys, "bin": i, **{k: float(v[i]) for k, v in b.items()}} for i in range(n_bins)]


def _flat(rows: Sequence[dict]) -> dict:
    out = {}
    for r in rows:
        for k, v in r.items():
            if k != "variant":
                out[f"{r['variant']}/{k}"] = v
    return out


def run_main_table(cfg: CalibrationConfig, on_run: OnRun | None = None) -> MainTables:
    """Train every loss in ``cfg.losses`` for every seed; evaluate raw and every calibrator on
    the clean test set and on every shifted test set."""
    _set_threads(cfg.threads)
    main, per_shift, bins = [], [], []
    for seed in progress(cfg.seeds, desc="seeds"):
        data = prepare_seed(cfg, seed)
        sp = data.split
        for loss_name in progress(cfg.losses, desc=f"losses (seed {seed})"):
            res = train_one(cfg, loss_name, seed, sp.x_train, sp.y_train, sp.num_classes)
            t0 = time.perf_counter()
            rows, shift_rows, logits = evaluate_model(cfg, res.model, data)
            eval_s = time.perf_counter() - t0
            for r in rows:
                main.append({"loss": loss_name, "seed": seed, "train_seconds": res.seconds,
                             "eval_seconds": eval_s, **r})  # fmt: skip
            per_shift += [{"loss": loss_name, "seed": seed, **r} for r in shift_rows]
            if seed == cfg.seeds[0]:
                y_pool = np.tile(sp.y_test, len(data.shifted))
                for variant, zz in logits.items():
                    bins += _bins_rows(zz["id"].softmax(-1), sp.y_test, cfg.n_bins, loss=loss_name, variant=variant,
                                       split="id")  # fmt: skip
                    if zz["shift"] is not None:
                        bins += _bins_rows(zz["shift"].softmax(-1), y_pool, cfg.n_bins, loss=loss_name,
                                           variant=variant, split="shift")  # fmt: skip
            if on_run is not None:
                on_run(loss_name, seed, {"train_seconds": res.seconds, **_flat(rows)})
    return MainTables(pd.DataFrame(main), pd.DataFrame(per_shift), pd.DataFrame(bins))


# -- robustness to label noise -------------------------------------------------------------------


def run_robustness(cfg: CalibrationConfig, on_run: OnRun | None = None) -> pd.DataFrame:
    """Train ``cfg.noise.losses`` on training labels corrupted by each noise kind and rate
    (validation and test labels stay clean); rows: loss, noise, rate, seed, variant (raw and
    :data:`ROBUSTNESS_CALIBRATORS` when configured), id_* and shift_* metrics."""
    _set_threads(cfg.threads)
    sub = cfg.replace(calibrators=[c for c in cfg.calibrators if c in ROBUSTNESS_CALIBRATORS])
    if not cfg.noise.shifted:
        sub = sub.replace(shifts=[])
    out = []
    for seed in progress(cfg.seeds, desc="seeds"):
        data = prepare_seed(sub, seed)
        sp = data.split
        for kind in cfg.noise.kinds:
            for rate in cfg.noise.rates:
                y_noisy = add_label_noise(sp.y_train, rate, kind, sp.num_classes, seed)
                for loss_name in cfg.noise.losses:
                    res = train_one(cfg, loss_name, seed, sp.x_train, y_noisy, sp.num_classes)
                    rows, _, _ = evaluate_model(sub, res.model, data)
                    for r in rows:
                        out.append({"loss": loss_name, "noise": kind, "rate": rate, "seed": seed,
                                    "train_seconds": res.seconds, **r})  # fmt: skip
                    if on_run is not None:
                        on_run(f"{loss_name}@{kind}{rate:g}", seed, {"train_seconds": res.seconds, **_flat(rows)})
    return pd.DataFrame(out)


# -- soft labels from simulated annotators ------------------------------------------------------

# label sources other than a soft-labelling method (those are data.SOFT_METHODS):
# (crowd labels, true labels, number of classes, settings, seed) -> training targets
LABEL_SOURCES: dict[str, Callable[..., np.ndarray]] = {
    "gold": lambda crowd, y, k, a, seed: np.asarray(y),
    "majority": lambda crowd, y, k, a, seed: majority_vote(crowd, k, seed=seed),
    "aggregate": lambda crowd, y, k, a, seed: aggregate_soft_labels(crowd, k, a.methods, a.softmax_temperature),
}


def crowd_targets(cfg: CalibrationConfig, x_train: np.ndarray, y_train: np.ndarray, num_classes: int,
                  seed: int) -> dict[str, np.ndarray]:  # fmt: skip
    """Training targets per soft-label variant: ``gold`` (true labels), ``majority`` (majority
    vote), ``aggregate`` (the average of ``cfg.annotators.methods``) or one soft-label method."""
    a = cfg.annotators
    crowd = simulate_annotators(y_train, num_classes, a.n_annotators, a.labels_per_item, (a.acc_low, a.acc_high),
                                a.concentration, seed=seed, features=x_train, ambiguity=a.ambiguity,
                                ambiguity_temperature=a.ambiguity_temperature)  # fmt: skip
    out = {}
    for v in a.variants:
        source = LABEL_SOURCES.get(v)
        if source is not None:
            out[v] = source(crowd.labels, y_train, num_classes, a, seed)
        else:
            out[v] = soft_labels(crowd.labels, num_classes, v, a.softmax_temperature).astype(np.float32)
    return out


def run_soft_labels(cfg: CalibrationConfig, on_run: OnRun | None = None) -> pd.DataFrame:
    """Train on crowd-derived targets: hard labels (gold / majority) with ``ce``, soft labels with
    ``soft_kl``; rows: variant (the label source), loss, seed, id_* and shift_* metrics (raw)."""
    _set_threads(cfg.threads)
    sub = cfg.replace(calibrators=[])
    if cfg.annotators.epochs is not None:
        sub = sub.replace(epochs=cfg.annotators.epochs)
    out = []
    for seed in progress(cfg.seeds, desc="seeds"):
        data = prepare_seed(sub, seed)
        sp = data.split
        targets = crowd_targets(cfg, sp.x_train, sp.y_train, sp.num_classes, seed)
        for label_variant, t in targets.items():
            loss_name = "ce" if t.ndim == 1 else "soft_kl"
            res = train_one(sub, loss_name, seed, sp.x_train, t, sp.num_classes)
            rows, _, _ = evaluate_model(sub, res.model, data)
            hard = t if t.ndim == 1 else t.argmax(1)
            for r in rows:
                metrics = {k: v for k, v in r.items() if k != "variant"}
                out.append({"labels": label_variant, "loss": loss_name, "seed": seed,
                            "label_acc": float((hard == sp.y_train).mean()), "train_seconds": res.seconds,
                            **metrics})  # fmt: skip
            if on_run is not None:
                on_run(f"soft:{label_variant}", seed, {"train_seconds": res.seconds, **_flat(rows)})
    return pd.DataFrame(out)


# -- AnyLoss (binary) ----------------------------------------------------------------------------


def run_anyloss(cfg: CalibrationConfig, on_run: OnRun | None = None) -> pd.DataFrame:
    """Binary MLP on standardised breast cancer with BCE and the AnyLoss variants; rows: loss,
    seed, test acc / f1 / bacc / gmean / precision / recall / nll / ece / brier."""
    _set_threads(cfg.threads)
    a = cfg.anyloss
    out = []
    for seed in progress(cfg.seeds, desc="seeds"):
        sp = load_breast_cancer_split(seed, cfg.val_frac, cfg.test_frac)
        for loss_name in a.losses:
            seed_everything(seed)
            model = build_model(sp.x_train.shape[1], 1, hidden=a.hidden, depth=1)
            loss = build_loss(loss_name, **cfg.hparams_for(loss_name))
            res = fit(model, loss, sp.x_train, sp.y_train, seed=seed, epochs=a.epochs, lr=a.lr,
                      batch_size=a.batch_size, enable_progress_bar=cfg.enable_progress_bar)  # fmt: skip
            m = binary_metrics(predict_logits(model, sp.x_test), sp.y_test, cfg.n_bins)
            out.append({"loss": loss_name, "seed": seed, "train_seconds": res.seconds, **m})
            if on_run is not None:
                on_run(loss_name, seed, {"train_seconds": res.seconds, **m})
    return pd.DataFrame(out)


# -- the language model ---------------------------------------------------------------------------


def run_lm(cfg: CalibrationConfig, items: Sequence[dict], data_dir: str | os.PathLike,
           model_cfg=None) -> tuple[lmcal.LMCalibration, lmcal.LMAnswers]:  # fmt: skip
    """Answer ``items`` with the language model (``model_cfg``: the ``model:`` section), then
    fit and evaluate answer-level temperature scaling per seed (:func:`.lm.run_lm_calibration`)."""
    _set_threads(cfg.threads)
    c = cfg.lm
    model, tokenizer = lmcal.load_lm(data_dir, c.model_dir, model_cfg)
    answers = lmcal.collect_answers(model, tokenizer, items, max_new_tokens=c.max_new_tokens,
                                    batch_size=c.batch_size, with_gold="gold_nll" in c.objectives)  # fmt: skip
    result = lmcal.run_lm_calibration(answers, seeds=cfg.seeds, val_frac=c.val_frac, objectives=c.objectives,
                                      n_bins=cfg.n_bins, max_iter=c.max_iter)  # fmt: skip
    return result, answers


# -- everything ---------------------------------------------------------------------------------


@dataclass
class Results:
    """Every table of one run: ``main`` (:class:`MainTables`), ``robustness``, ``soft_labels``,
    ``anyloss`` (per-seed DataFrames), ``lm`` (None when the LM section is off) and ``seconds``
    (wall time per part, for ``timing.json``)."""

    main: MainTables
    robustness: pd.DataFrame
    soft_labels: pd.DataFrame
    anyloss: pd.DataFrame
    lm: lmcal.LMCalibration | None = None
    seconds: dict[str, float] = field(default_factory=dict)
