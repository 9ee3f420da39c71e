"""The calibration family's experiments: plan, train, evaluate, as pure functions.

Each ``run_*`` function takes a :class:`~trustlab.calibration.config.CalibrationConfig` and
returns per-seed pandas DataFrames (no files, no plots, no W&B). An optional ``on_run(name,
seed, metrics)`` callback is called once per trained model, so the notebook can log one W&B
run per (loss, seed) without this module knowing about W&B. The tables land in one
:class:`Results`.

* :func:`run_tuning`: every loss x each value of its grid x tuning seed, per main-table dataset,
  scored on the validation split (:mod:`.tuning`); its ``config_for(cfg, dataset)`` is the
  config the main table and the label-noise table then run with.
* :func:`run_main_table`: loss x {raw, each calibrator} x seed with ``id_<metric>`` (clean
  test set) and ``shift_<metric>`` (averaged over every shift and severity), plus a per-shift
  table, reliability-diagram bins for the first seed and the single-pass detectors' AUROCs
  (:mod:`.detectors`) of each raw model.
* :func:`run_robustness`: loss x label-noise kind x rate x seed (raw and +TS).
* :func:`run_soft_labels`: label source (majority vote CE, vote / aggregate soft-label KL, ...)
  x seed, in-distribution and shifted.
* :func:`run_anyloss`: binary losses on breast cancer x seed.
* :func:`run_lm`: the base language model's answer-level calibration (:mod:`.lm`).

Every trained model is one :class:`ModelTask`; ``cfg.workers`` processes run the tasks of a
table (:func:`trustlab.core.parallel.iter_tasks`), each seeding itself, and the rows come back in
plan order, so the tables do not depend on the number of workers. ``on_run`` is called in this
process, in plan order, as each task's result arrives (its W&B run is written while the workers
train the next models). :class:`PartClock` measures each part's
wall and CPU seconds (worker processes included).

Per-seed rows carry ``train_seconds`` / ``eval_seconds`` (:data:`TIMING_COLUMNS`): the
report moves them to ``timing.json`` and keeps them out of every table.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from trustlab.calibration import lm as lmcal
from trustlab.calibration import tuning
from trustlab.calibration.calibrators import CALIBRATORS
from trustlab.calibration.config import CalibrationConfig
from trustlab.calibration.data import (
    Split,
    add_label_noise,
    aggregate_soft_labels,
    ca_views,
    load_breast_cancer_split,
    load_digits_split,
    load_waveforms_split,
    majority_vote,
    shifted_test_sets,
    simulate_annotators,
    soft_labels,
)
from trustlab.calibration.detectors import DETECTORS, auroc
from trustlab.calibration.losses import build_loss
from trustlab.calibration.metrics import METRIC_NAMES, binary_metrics, calibration_bins, evaluate
from trustlab.calibration.models import build_model
from trustlab.calibration.module import FitResult, fit, predict_logits, predict_logits_features
from trustlab.core.parallel import iter_tasks
from trustlab.core.registry import Registry
from trustlab.core.seeding import seed_everything, set_threads

__all__ = [
    "FAMILY",
    "OnRun",
    "TIMING_COLUMNS",
    "ROBUSTNESS_CALIBRATORS",
    "MainTables",
    "PartClock",
    "Results",
    "SeedData",
    "calibrator_names",
    "prepare_seed",
    "DATASETS",
    "train_one",
    "fit_calibrators",
    "evaluate_model",
    "evaluate_detectors",
    "run_main_table",
    "run_robustness",
    "run_tuning",
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


@dataclass(frozen=True)
class MainDataset:
    """A dataset of the main loss comparison: ``settings(cfg)`` is the config its runs use,
    ``prepare(cfg, seed)`` its :class:`SeedData`."""

    settings: Callable[[CalibrationConfig], CalibrationConfig]
    prepare: Callable[[CalibrationConfig, int], SeedData]


DATASETS: Registry = Registry("main-table dataset")
DATASETS.register("digits")(MainDataset(settings=lambda cfg: cfg, prepare=prepare_seed))


def _waveform_settings(cfg: CalibrationConfig) -> CalibrationConfig:
    """No image views (CA) and no image shifts on 1-D signals; the waveform table's epochs."""
    keep = [c for c in cfg.calibrators if not CALIBRATORS.get(c).needs_views]
    return cfg.replace(calibrators=keep, shifts=[], epochs=cfg.waveforms.epochs)


def _prepare_waveforms(cfg: CalibrationConfig, seed: int) -> SeedData:
    w = cfg.waveforms
    split = load_waveforms_split(seed, w.n_samples, w.length, cfg.val_frac, cfg.test_frac, w.n_train)
    return SeedData(seed=seed, split=split, shifted={}, views_val=[], views_test=[])


DATASETS.register("waveforms")(MainDataset(settings=_waveform_settings, prepare=_prepare_waveforms))


# -- training and evaluation --------------------------------------------------------------------


def train_one(
    cfg: CalibrationConfig,
    loss_name: str,
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int = 10,
) -> FitResult:
    """Seed, build the MLP and the loss (hyperparameters from the config), train (:func:`.module.fit`)."""
    seed_everything(seed)
    model = build_model(x.shape[1], num_classes, hidden=cfg.hidden, depth=cfg.depth)
    loss = build_loss(loss_name, n_samples=len(y), **cfg.hparams_for(loss_name))
    return fit(model, loss, x, y, seed=seed, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
               weight_decay=cfg.weight_decay_for(loss_name), enable_progress_bar=cfg.enable_progress_bar)  # fmt: skip


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


# -- detectors ------------------------------------------------------------------------------------


def evaluate_detectors(cfg: CalibrationConfig, model, data: SeedData) -> list[dict]:
    """Every configured detector (:mod:`.detectors`) on the frozen raw model: fit on the
    validation split, then ``error_auroc`` (clean test errors) and ``shift_auroc`` (clean test
    vs every shifted test set pooled; NaN without shifts). One row per detector."""
    sp = data.split
    z_val, h_val = predict_logits_features(model, sp.x_val)
    z_id, h_id = predict_logits_features(model, sp.x_test)
    shifted = [predict_logits_features(model, x) for x in data.shifted.values()]
    p_val, p_id = z_val.softmax(-1).numpy(), z_id.softmax(-1).numpy()
    wrong = p_id.argmax(1) != sp.y_test
    rows = []
    for name in cfg.detectors:
        det = DETECTORS.build(name, **cfg.detector_params(name, data.seed)).fit(p_val, h_val.numpy(), sp.y_val)
        u_id = det.score(p_id, h_id.numpy())
        row = {"detector": name, "error_auroc": auroc(u_id, wrong), "shift_auroc": float("nan")}
        if shifted:
            u_sh = np.concatenate([det.score(z.softmax(-1).numpy(), h.numpy()) for z, h in shifted])
            is_shifted = np.r_[np.zeros(len(u_id), bool), np.ones(len(u_sh), bool)]
            row["shift_auroc"] = auroc(np.r_[u_id, u_sh], is_shifted)
        rows.append(row)
    return rows


# -- main table ---------------------------------------------------------------------------------


@dataclass
class MainTables:
    """``main``: loss x variant x seed; ``per_shift``: + shift x severity; ``bins``: reliability
    bins (first seed) per loss x variant x split ("id" / "shift" pooled); ``detection``: loss x
    seed x detector (error and shift AUROC of the raw model)."""

    main: pd.DataFrame
    per_shift: pd.DataFrame
    bins: pd.DataFrame
    detection: pd.DataFrame = field(default_factory=pd.DataFrame)


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


@dataclass(frozen=True)
class ModelTask:
    """One training run of a table: the config, the seed, the loss and, per table, its setting
    (``noise`` kind and ``rate``, crowd ``labels``; ``with_bins``: keep reliability bins)."""

    cfg: CalibrationConfig
    seed: int
    loss: str
    noise: str = ""
    rate: float = 0.0
    labels: str = ""
    with_bins: bool = False
    dataset: str = "digits"


# per worker process: the split, shifted sets and views of the seeds it has seen (cheap to
# rebuild, but every loss of a seed would rebuild them)
_SEED_DATA: dict[tuple[str, int, str], SeedData] = {}


def _seed_data(cfg: CalibrationConfig, seed: int, dataset: str = "digits") -> SeedData:
    key = (repr(cfg), seed, dataset)
    if key not in _SEED_DATA:
        if len(_SEED_DATA) >= 4:
            _SEED_DATA.pop(next(iter(_SEED_DATA)))
        _SEED_DATA[key] = DATASETS.get(dataset).prepare(cfg, seed)
    return _SEED_DATA[key]


def _main_task(task: ModelTask) -> dict:
    """Train one (loss, seed) of the main table and evaluate it (runs in a worker process)."""
    cfg, seed, loss_name = DATASETS.get(task.dataset).settings(task.cfg), task.seed, task.loss
    data = _seed_data(cfg, seed, task.dataset)
    sp = data.split
    res = train_one(cfg, loss_name, seed, sp.x_train, sp.y_train, sp.num_classes)
    t0 = time.perf_counter()
    rows, shift_rows, logits = evaluate_model(cfg, res.model, data)
    eval_s = time.perf_counter() - t0
    # after the calibrators: the detectors seed their own generators, the table above is unchanged
    detection = [{"loss": loss_name, "seed": seed, **r} for r in evaluate_detectors(cfg, res.model, data)]
    bins = []
    if task.with_bins:
        y_pool = np.tile(sp.y_test, len(data.shifted))
        for variant, zz in logits.items():
            bins += _bins_rows(zz["id"].softmax(-1), sp.y_test, cfg.n_bins, loss=loss_name, variant=variant,
                               split="id")  # fmt: skip
            if zz["shift"] is not None:
                bins += _bins_rows(zz["shift"].softmax(-1), y_pool, cfg.n_bins, loss=loss_name,
                                   variant=variant, split="shift")  # fmt: skip
    return {
        "main": [{"loss": loss_name, "seed": seed, "train_seconds": res.seconds, "eval_seconds": eval_s, **r}
                 for r in rows],  # fmt: skip
        "per_shift": [{"loss": loss_name, "seed": seed, **r} for r in shift_rows],
        "bins": bins,
        "detection": detection,
        "logged": {"train_seconds": res.seconds, **_flat(rows),
                   **{f"{d['detector']}/{k}": d[k] for d in detection for k in ("error_auroc", "shift_auroc")}},
    }


def run_main_table(cfg: CalibrationConfig, on_run: OnRun | None = None, dataset: str = "digits") -> MainTables:
    """Train every loss in ``cfg.losses`` for every seed on ``dataset`` (:data:`DATASETS`;
    ``cfg.workers`` processes); evaluate raw and every calibrator on the clean test set and on
    every shifted test set, and every detector."""
    _set_threads(cfg.threads)
    plan = [ModelTask(cfg, seed, loss, with_bins=seed == cfg.seeds[0], dataset=dataset)
            for seed in cfg.seeds for loss in cfg.losses]  # fmt: skip
    outs = iter_tasks(_main_task, plan, workers=cfg.workers, desc=f"main table ({dataset})")
    main, per_shift, bins, detection = [], [], [], []
    for task, out in zip(plan, outs):  # plan order: the same tables for any number of workers
        main += out["main"]
        per_shift += out["per_shift"]
        bins += out["bins"]
        detection += out["detection"]
        if on_run is not None:
            on_run(task.loss, task.seed, out["logged"])
    return MainTables(pd.DataFrame(main), pd.DataFrame(per_shift), pd.DataFrame(bins), pd.DataFrame(detection))


# -- equal-budget tuning on validation data --------------------------------------------------------


@dataclass(frozen=True)
class TuneTask:
    """One tuning trial: ``loss`` with its knob at ``value``, trained on ``seed``'s training split of ``dataset``."""

    cfg: CalibrationConfig
    dataset: str
    loss: str
    value: float
    seed: int


def _tuning_data_config(cfg: CalibrationConfig) -> CalibrationConfig:
    """The split is all a trial needs: no shifted sets, no calibrator views."""
    return cfg.replace(shifts=[], calibrators=[])


def _tune_task(task: TuneTask) -> dict:
    """Train one candidate and score the raw model on the validation split (runs in a worker).
    Only the training and validation parts of the split are read: never the test part."""
    settings = DATASETS.get(task.dataset).settings(task.cfg)
    sp = _seed_data(_tuning_data_config(settings), task.seed, task.dataset).split
    knob = tuning.knob_for(task.loss)
    res = train_one(knob.apply(settings, task.loss, task.value), task.loss, task.seed, sp.x_train, sp.y_train,
                    sp.num_classes)  # fmt: skip
    m = evaluate(predict_logits(res.model, sp.x_val), sp.y_val, settings.n_bins)
    return {"dataset": task.dataset, "loss": task.loss, "knob": knob.name, "value": task.value, "seed": task.seed,
            "val_nll": m["nll"], "val_ece": m["ece"], "val_acc": m["acc"], "train_seconds": res.seconds}  # fmt: skip


def run_tuning(cfg: CalibrationConfig, on_run: OnRun | None = None) -> tuning.TuningResult:
    """Every trial of :func:`.tuning.plan` (all datasets in one pool of ``cfg.workers``
    processes), then the choice per dataset and loss by :data:`.tuning.RULE`. An empty result
    when ``cfg.tuning.enabled`` is false."""
    _set_threads(cfg.threads)
    plan = [TuneTask(cfg, ds, loss, value, seed) for ds, loss, value, seed in tuning.plan(cfg)]
    rows = []
    for task, row in zip(plan, iter_tasks(_tune_task, plan, workers=cfg.workers, desc="tuning")):
        rows.append(row)
        if on_run is not None:
            on_run(f"{task.loss}:{row['knob']}={task.value:g}@{task.dataset}", task.seed,
                   {k: row[k] for k in ("val_nll", "val_ece", "val_acc", "train_seconds")})  # fmt: skip
    sweep = pd.DataFrame(rows, columns=["dataset", "loss", "knob", "value", "seed", "val_nll", "val_ece", "val_acc",
                                        "train_seconds"])  # fmt: skip
    untuned = {ds: {loss: tuning.knob_for(loss).default(DATASETS.get(ds).settings(cfg), loss)
                    for loss in tuning.tuned_losses(cfg, ds)}
               for ds in dict.fromkeys(t.dataset for t in plan)}  # fmt: skip
    return tuning.TuningResult(sweep, tuning.choose(sweep), trials=cfg.tuning.trials if plan else 0,
                               seeds=list(cfg.tuning.seeds) if plan else [], untuned=untuned)  # fmt: skip


# -- robustness to label noise -------------------------------------------------------------------


def _robustness_sub(cfg: CalibrationConfig) -> CalibrationConfig:
    sub = cfg.replace(calibrators=[c for c in cfg.calibrators if c in ROBUSTNESS_CALIBRATORS])
    return sub if cfg.noise.shifted else sub.replace(shifts=[])


def _robustness_task(task: ModelTask) -> dict:
    cfg, seed = task.cfg, task.seed
    sub = _robustness_sub(cfg)
    data = _seed_data(sub, seed)
    sp = data.split
    y_noisy = add_label_noise(sp.y_train, task.rate, task.noise, sp.num_classes, seed)
    res = train_one(cfg, task.loss, seed, sp.x_train, y_noisy, sp.num_classes)
    rows, _, _ = evaluate_model(sub, res.model, data)
    return {"rows": [{"loss": task.loss, "noise": task.noise, "rate": task.rate, "seed": seed,
                      "train_seconds": res.seconds, **r} for r in rows],
            "logged": {"train_seconds": res.seconds, **_flat(rows)}}  # fmt: skip


def run_robustness(cfg: CalibrationConfig, on_run: OnRun | None = None) -> pd.DataFrame:
    """Train ``cfg.noise.losses`` on training labels corrupted by each noise kind and rate
    (validation and test labels stay clean); rows: loss, noise, rate, seed, variant (raw and
    :data:`ROBUSTNESS_CALIBRATORS` when configured), id_* and shift_* metrics."""
    _set_threads(cfg.threads)
    plan = [ModelTask(cfg, seed, loss, noise=kind, rate=rate) for seed in cfg.seeds for kind in cfg.noise.kinds
            for rate in cfg.noise.rates for loss in cfg.noise.losses]  # fmt: skip
    outs = iter_tasks(_robustness_task, plan, workers=cfg.workers, desc="label noise")
    rows = []
    for task, out in zip(plan, outs):
        rows += out["rows"]
        if on_run is not None:
            on_run(f"{task.loss}@{task.noise}{task.rate:g}", task.seed, out["logged"])
    return pd.DataFrame(rows)


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


def _soft_sub(cfg: CalibrationConfig) -> CalibrationConfig:
    sub = cfg.replace(calibrators=[])
    return sub if cfg.annotators.epochs is None else sub.replace(epochs=cfg.annotators.epochs)


def _soft_task(task: ModelTask) -> dict:
    cfg, seed = task.cfg, task.seed
    sub = _soft_sub(cfg)
    data = _seed_data(sub, seed)
    sp = data.split
    t = crowd_targets(cfg, sp.x_train, sp.y_train, sp.num_classes, seed)[task.labels]
    res = train_one(sub, task.loss, seed, sp.x_train, t, sp.num_classes)
    rows, _, _ = evaluate_model(sub, res.model, data)
    hard = t if t.ndim == 1 else t.argmax(1)
    label_acc = float((hard == sp.y_train).mean())
    return {"rows": [{"labels": task.labels, "loss": task.loss, "seed": seed, "label_acc": label_acc,
                      "train_seconds": res.seconds, **{k: v for k, v in r.items() if k != "variant"}}
                     for r in rows],
            "logged": {"train_seconds": res.seconds, **_flat(rows)}}  # fmt: skip


def run_soft_labels(cfg: CalibrationConfig, on_run: OnRun | None = None) -> pd.DataFrame:
    """Train on crowd-derived targets: hard labels (gold / majority) with ``ce``, soft labels with
    ``soft_kl``; rows: variant (the label source), loss, seed, id_* and shift_* metrics (raw)."""
    _set_threads(cfg.threads)
    hard_sources = ("gold", "majority")  # integer labels -> ce; every other source is a soft label -> soft_kl
    plan = [ModelTask(cfg, seed, "ce" if v in hard_sources else "soft_kl", labels=v)
            for seed in cfg.seeds for v in cfg.annotators.variants]  # fmt: skip
    outs = iter_tasks(_soft_task, plan, workers=cfg.workers, desc="soft labels")
    rows = []
    for task, out in zip(plan, outs):
        rows += out["rows"]
        if on_run is not None:
            on_run(f"soft:{task.labels}", task.seed, out["logged"])
    return pd.DataFrame(rows)


# -- AnyLoss (binary) ----------------------------------------------------------------------------


def _anyloss_task(task: ModelTask) -> dict:
    cfg, seed, loss_name, a = task.cfg, task.seed, task.loss, task.cfg.anyloss
    sp = load_breast_cancer_split(seed, cfg.val_frac, cfg.test_frac)
    seed_everything(seed)
    model = build_model(sp.x_train.shape[1], 1, hidden=a.hidden, depth=1)
    loss = build_loss(loss_name, **cfg.hparams_for(loss_name))
    res = fit(model, loss, sp.x_train, sp.y_train, seed=seed, epochs=a.epochs, lr=a.lr,
              batch_size=a.batch_size, enable_progress_bar=cfg.enable_progress_bar)  # fmt: skip
    m = binary_metrics(predict_logits(model, sp.x_test), sp.y_test, cfg.n_bins)
    return {"loss": loss_name, "seed": seed, "train_seconds": res.seconds, **m}


def run_anyloss(cfg: CalibrationConfig, on_run: OnRun | None = None) -> pd.DataFrame:
    """Binary MLP on standardised breast cancer with BCE and the AnyLoss variants; rows: loss,
    seed, test acc / f1 / bacc / gmean / precision / recall / nll / ece / brier."""
    _set_threads(cfg.threads)
    plan = [ModelTask(cfg, seed, loss) for seed in cfg.seeds for loss in cfg.anyloss.losses]
    out = []
    for task, row in zip(plan, iter_tasks(_anyloss_task, plan, workers=cfg.workers, desc="AnyLoss")):
        out.append(row)
        if on_run is not None:
            on_run(task.loss, task.seed, {k: v for k, v in row.items() if k not in ("loss", "seed")})
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


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the worker pools)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class PartClock:
    """Wall and CPU seconds per part of the stage: ``with clock("main"): ...``; ``wall`` and
    ``cpu`` are ``{part: seconds}``, so ``cpu / wall`` is the number of cores a part kept busy."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, part: str) -> PartClock:
        self._part = part
        return self

    def __enter__(self) -> PartClock:
        self._t0, self._c0 = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall[self._part] = time.perf_counter() - self._t0
        self.cpu[self._part] = _cpu_seconds() - self._c0


@dataclass
class Results:
    """Every table of one run: ``main`` (:class:`MainTables`), ``robustness``, ``soft_labels``,
    ``anyloss`` (per-seed DataFrames), ``lm`` (None when the LM section is off), ``seconds``
    (wall time per part) and ``cpu_seconds`` (CPU time per part, workers included), both for
    ``timing.json``, ``waveforms`` (the main table on the waveform digits) and ``tuning``
    (:func:`run_tuning`)."""

    main: MainTables
    robustness: pd.DataFrame
    soft_labels: pd.DataFrame
    anyloss: pd.DataFrame
    lm: lmcal.LMCalibration | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    waveforms: MainTables | None = None  # the main table on the second dataset (None: not run)
    tuning: tuning.TuningResult | None = None  # the validation sweeps and the chosen values (None: not tuned)
