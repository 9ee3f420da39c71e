"""The calibration family's experiments, as pure functions the notebook calls.

Each ``run_*`` function takes a :class:`~trustlab.calibration.config.CalibrationConfig` and
returns pandas DataFrames (no files, no plots, no W&B); an optional ``on_run(name, seed,
metrics)`` callback is called once per trained model so the notebook can log one W&B run per
(loss, seed). :func:`claims` turns the tables into ``trustlab.core.stats.Claim`` rows, paired by seed.

Tables (one row per seed; ``summarize`` gives mean and std over seeds):

* :func:`run_main_table`: loss x {raw, ts, ca} x seed with ``id_<metric>`` (clean test set) and
  ``shift_<metric>`` (averaged over every shift and severity), plus a per-shift table and
  reliability-diagram bins for the first seed.
* :func:`run_robustness`: loss x label-noise kind x rate x seed (raw and +TS).
* :func:`run_soft_labels`: label variant (majority vote CE, vote / aggregate soft-label KL, ...)
  x seed, in-distribution and shifted.
* :func:`run_anyloss`: binary losses on breast cancer x seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from trustlab.calibration.calibrators import CACalibrator, TemperatureScaling
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
from trustlab.core.stats import Claim, claim_from_seeds, mean_std

__all__ = [
    "OnRun",
    "MainTables",
    "SeedData",
    "prepare_seed",
    "train_one",
    "evaluate_model",
    "run_main_table",
    "run_robustness",
    "run_soft_labels",
    "crowd_targets",
    "run_anyloss",
    "summarize",
    "format_summary",
    "bins_for",
    "claims",
    "FAMILY",
]

FAMILY = "calibration"


def _set_threads(n: int) -> None:
    """``trustlab.core.seeding.set_threads`` (falls back to ``torch.set_num_threads`` where this torch
    build lacks ``set_interop_threads``, which ``set_threads`` does not catch)."""
    try:
        set_threads(n)
    except AttributeError:
        torch.set_num_threads(n)
OnRun = Callable[[str, int, dict], None]
VARIANTS = ("raw", "ts", "ca")

PAPERS = {
    "ca": "Liu et al. 2024, Optimizing Calibration by Gaining Aware of Prediction Correctness",
    "ldr": "Zhu et al. 2023, Label Distributionally Robust Losses for Multi-class Classification",
    "focal": "Mukhoti et al. 2020, Calibrating Deep Neural Networks using Focal Loss",
    "soft": "Singh et al. 2023, Aggregating Soft Labels from Crowd Annotations Improves Uncertainty "
    "Estimation Under Distribution Shift",
    "anyloss": "Han et al. 2024, AnyLoss: Transforming Classification Metrics into Loss Functions",
}


# -- per-seed data ------------------------------------------------------------------------------


@dataclass
class SeedData:
    """A digits split and everything derived from it that does not depend on the model: the
    shifted test sets and the CA views of validation, test and shifted images."""

    seed: int
    split: Split
    shifted: dict[tuple[str, int], np.ndarray]
    views_val: list[np.ndarray]
    views_test: list[np.ndarray]
    views_shifted: dict[tuple[str, int], list[np.ndarray]] = field(default_factory=dict)


def _views(cfg: CalibrationConfig, images: np.ndarray) -> list[np.ndarray]:
    c = cfg.ca
    return ca_views(images, rotation=c.rotation, contrast=c.contrast, brightness=c.brightness, shift=c.shift,
                    blur=c.blur)


def prepare_seed(cfg: CalibrationConfig, seed: int) -> SeedData:
    split = load_digits_split(seed, cfg.val_frac, cfg.test_frac, cfg.n_train)
    shifted = shifted_test_sets(split.images_test, cfg.shifts, cfg.severities, seed=seed)
    with_ca = "ca" in cfg.calibrators
    return SeedData(
        seed=seed,
        split=split,
        shifted=shifted,
        views_val=_views(cfg, split.images_val) if with_ca else [],
        views_test=_views(cfg, split.images_test) if with_ca else [],
        views_shifted={k: _views(cfg, x.reshape(-1, 8, 8)) for k, x in shifted.items()} if with_ca else {},
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
               weight_decay=cfg.weight_decay, enable_progress_bar=cfg.enable_progress_bar)


def _calibrators(cfg: CalibrationConfig, model, data: SeedData, seed: int):
    """Fit the configured calibrators on the validation set -> ({variant: f(logits, key)},
    {variant: temperature (CA: mean over validation)}); key is "id" or (shift, severity)."""
    sp = data.split
    z_val = predict_logits(model, sp.x_val)
    out: dict[str, Callable] = {"raw": lambda z, key: z}
    temps: dict[str, float] = {"raw": 1.0}
    ts = None
    if "ts" in cfg.calibrators or ("ca" in cfg.calibrators and cfg.ca.init == "ts"):
        ts = TemperatureScaling(max_iter=cfg.ts_max_iter).fit(z_val, sp.y_val)
    if "ts" in cfg.calibrators:
        out["ts"] = lambda z, key: ts(z)
        temps["ts"] = ts.temperature
    if "ca" in cfg.calibrators:
        c = cfg.ca
        t0 = min(max(ts.temperature, c.t_min), c.t_max) if c.init == "ts" else 1.0
        ca = CACalibrator(top_k=c.top_k, hidden=c.hidden, t_min=c.t_min, t_max=c.t_max, lr=c.lr, epochs=c.epochs,
                          batch_size=c.batch_size, seed=seed, init_temperature=t0)
        val_views = [predict_logits(model, v) for v in data.views_val]
        ca.fit(z_val, val_views, sp.y_val)
        view_logits = {"id": [predict_logits(model, v) for v in data.views_test]}
        for k, vs in data.views_shifted.items():
            view_logits[k] = [predict_logits(model, v) for v in vs]
        out["ca"] = lambda z, key: ca(z, view_logits[key])
        temps["ca"] = float(ca.temperatures(z_val, val_views).mean())
    return out, temps


def evaluate_model(cfg: CalibrationConfig, model, data: SeedData, y_test: np.ndarray | None = None):
    """-> (rows: one dict per variant with id_* and shift_* metrics and the temperature,
    per_shift rows, {variant: {"id": calibrated test logits, "shift": pooled shifted logits}})."""
    sp = data.split
    y = sp.y_test if y_test is None else y_test
    cals, temps = _calibrators(cfg, model, data, data.seed)
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
    """Train every loss in ``cfg.losses`` for every seed; evaluate raw, +TS and +CA on the clean
    test set and on every shifted test set."""
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
                             "eval_seconds": eval_s, **r})
            per_shift += [{"loss": loss_name, "seed": seed, **r} for r in shift_rows]
            if seed == cfg.seeds[0]:
                y_pool = np.tile(sp.y_test, len(data.shifted))
                for variant, zz in logits.items():
                    bins += _bins_rows(zz["id"].softmax(-1), sp.y_test, cfg.n_bins, loss=loss_name, variant=variant,
                                       split="id")
                    if zz["shift"] is not None:
                        bins += _bins_rows(zz["shift"].softmax(-1), y_pool, cfg.n_bins, loss=loss_name,
                                           variant=variant, split="shift")
            if on_run is not None:
                on_run(loss_name, seed, {"train_seconds": res.seconds, **_flat(rows)})
    return MainTables(pd.DataFrame(main), pd.DataFrame(per_shift), pd.DataFrame(bins))


def bins_for(bins: pd.DataFrame, loss: str, variant: str = "raw", split: str = "id") -> dict[str, np.ndarray]:
    """One reliability diagram's bins from ``MainTables.bins`` (for ``reliability_diagram_from_bins``)."""
    sel = bins[(bins["loss"] == loss) & (bins["variant"] == variant) & (bins["split"] == split)].sort_values("bin")
    if sel.empty:
        raise KeyError(f"no bins for loss={loss!r}, variant={variant!r}, split={split!r}")
    return {k: sel[k].to_numpy(float) for k in ("lo", "hi", "count", "acc", "conf")}


# -- robustness to label noise -------------------------------------------------------------------


def run_robustness(cfg: CalibrationConfig, on_run: OnRun | None = None) -> pd.DataFrame:
    """Train ``cfg.noise.losses`` on training labels corrupted by each noise kind and rate
    (validation and test labels stay clean); rows: loss, noise, rate, seed, variant (raw / ts),
    id_* and shift_* metrics."""
    _set_threads(cfg.threads)
    sub = cfg.replace(calibrators=[c for c in cfg.calibrators if c == "ts"])
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
                                    "train_seconds": res.seconds, **r})
                    if on_run is not None:
                        on_run(f"{loss_name}@{kind}{rate:g}", seed, {"train_seconds": res.seconds, **_flat(rows)})
    return pd.DataFrame(out)


# -- soft labels from simulated annotators ------------------------------------------------------


def crowd_targets(cfg: CalibrationConfig, x_train: np.ndarray, y_train: np.ndarray, num_classes: int,
                  seed: int) -> dict[str, np.ndarray]:
    """Training targets per soft-label variant: ``gold`` (true labels), ``majority`` (majority
    vote), one soft-label method, or ``aggregate`` (the average of ``cfg.annotators.methods``)."""
    a = cfg.annotators
    crowd = simulate_annotators(y_train, num_classes, a.n_annotators, a.labels_per_item, (a.acc_low, a.acc_high),
                                a.concentration, seed=seed, features=x_train, ambiguity=a.ambiguity,
                                ambiguity_temperature=a.ambiguity_temperature)
    out = {}
    for v in a.variants:
        if v == "gold":
            out[v] = np.asarray(y_train)
        elif v == "majority":
            out[v] = majority_vote(crowd.labels, num_classes, seed=seed)
        elif v == "aggregate":
            out[v] = aggregate_soft_labels(crowd.labels, num_classes, a.methods, a.softmax_temperature)
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
                            "label_acc": float((hard == sp.y_train).mean()), "train_seconds": res.seconds, **metrics})
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
                      batch_size=a.batch_size, enable_progress_bar=cfg.enable_progress_bar)
            m = binary_metrics(predict_logits(model, sp.x_test), sp.y_test, cfg.n_bins)
            out.append({"loss": loss_name, "seed": seed, "train_seconds": res.seconds, **m})
            if on_run is not None:
                on_run(loss_name, seed, {"train_seconds": res.seconds, **m})
    return pd.DataFrame(out)


# -- summaries and claims --------------------------------------------------------------------------


def summarize(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sample std over seeds: columns ``<metric>_mean``, ``<metric>_std`` and ``n``."""
    by = list(by)
    if metrics is None:
        metrics = [c for c in df.columns if c not in (*by, "seed") and pd.api.types.is_numeric_dtype(df[c])]
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for m in metrics:
            mu, sd = mean_std(g[m].to_numpy(float))
            row[f"{m}_mean"], row[f"{m}_std"] = mu, sd
        row["n"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], scale: float = 1.0,
                   digits: int = 2) -> pd.DataFrame:
    """``mean ± std`` strings per group (``scale=100`` for percentages)."""
    s = summarize(df, by, metrics)
    out = s[list(by)].copy()
    for m in metrics:
        out[m] = [f"{scale * a:.{digits}f} ± {scale * b:.{digits}f}" for a, b in zip(s[f"{m}_mean"], s[f"{m}_std"])]
    return out


def _paired(df: pd.DataFrame, metric: str, method: Mapping[str, object], baseline: Mapping[str, object]):
    def pick(sel):
        g = df
        for k, v in sel.items():
            g = g[g[k] == v]
        return g.set_index("seed")[metric]

    a, b = pick(method), pick(baseline)
    seeds = sorted(set(a.index) & set(b.index))
    return a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)


def _claim(df, claim, paper, metric, method, baseline, expected, note="") -> Claim | None:
    if df is None or df.empty or metric not in df.columns:
        return None
    a, b = _paired(df, metric, method, baseline)
    if len(a) == 0:
        return None
    return claim_from_seeds(FAMILY, claim, paper, metric, a, b, expected, note)


def claims(tables: Mapping[str, object], base_loss: str = "ce") -> list[Claim]:
    """Claims (effect = method - baseline, paired by seed, t 95% CI) from whichever tables are
    given: ``main`` (a MainTables or its ``main`` frame), ``robustness``, ``soft_labels``,
    ``anyloss``. A claim whose rows are missing (e.g. in the smoke profile) is left out."""
    out: list[Claim | None] = []
    main = tables.get("main")
    main = main.main if isinstance(main, MainTables) else main
    if main is not None:
        out.append(_claim(
            main, "CA calibrator beats temperature scaling on shifted ECE", PAPERS["ca"], "shift_ece",
            {"loss": base_loss, "variant": "ca"}, {"loss": base_loss, "variant": "ts"}, "decrease",
            f"{base_loss}-trained MLP, ECE averaged over all shifts and severities",
        ))
        out.append(_claim(
            main, "Focal loss improves ECE over cross-entropy", PAPERS["focal"], "id_ece",
            {"loss": "focal", "variant": "raw"}, {"loss": "ce", "variant": "raw"}, "decrease",
            "in-distribution test set, before temperature scaling",
        ))
    rob = tables.get("robustness")
    if rob is not None and not rob.empty:
        for kind in rob["noise"].unique():
            for rate in sorted(rob["rate"].unique()):
                sub = rob[(rob["noise"] == kind) & (rob["rate"] == rate)]
                out.append(_claim(
                    sub, f"ALDR-KL is more robust than CE under {kind} label noise ({rate:g})", PAPERS["ldr"],
                    "id_acc", {"loss": "aldr_kl", "variant": "raw"}, {"loss": "ce", "variant": "raw"}, "increase",
                    "clean test accuracy after training on noisy labels",
                ))
    soft = tables.get("soft_labels")
    if soft is not None and not soft.empty:
        out.append(_claim(
            soft, "Aggregated soft labels improve calibration under shift", PAPERS["soft"], "shift_ece",
            {"labels": "aggregate"}, {"labels": "majority"}, "decrease",
            "soft_kl on the averaged soft labels vs CE on the majority vote",
        ))
    anyl = tables.get("anyloss")
    if anyl is not None and not anyl.empty:
        out.append(_claim(
            anyl, "AnyLoss (F1) improves F1 over BCE", PAPERS["anyloss"], "f1",
            {"loss": "anyloss_f1"}, {"loss": "bce"}, "increase", "breast cancer test set",
        ))
    return [c for c in out if c is not None]
