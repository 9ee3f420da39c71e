"""The ``error_detection`` stage: what the notebook calls.

Flow (one :class:`ModelRun` per model; the base model first, then the NoiseFiT exports listed
in ``error_detection.models``):

1. :func:`check_models` resolves every model directory *before* any work (a missing base
   model names the ``base_model`` stage, a missing listed model the ``noisefit`` stage);
   :func:`load_prompts` draws the prompts and the fit/test split (``trustlab.error_detection.collect``).
2. :func:`run_model` computes the statistics once (:func:`collect.load_or_collect`, stored under
   ``<reports_dir>/stats/``), runs every configured detector on both spans
   (:func:`run_detectors`: fitted detectors fit on the fit split only; fit-split scores for
   thresholds are out-of-fold), measures the cost of the generation each detector needs, and
   for the base model scores AEGIS-style injected errors (:mod:`trustlab.error_detection.inject`).
3. Tables: :func:`detector_table` (detector x metric, overall and per task, bootstrap CIs,
   AUPRC beside the base rate, F1 beside the always-error and random baselines),
   :func:`error_rate_table`, :func:`cost_table`, :func:`per_layer_table`,
   :func:`injected_table`, :func:`model_table` (part 4), :func:`make_claims` (the issue's four
   claims; effect + paired-bootstrap 95% CI + verdict).
4. Outputs: :func:`write_outputs` (``metrics.json`` + ``plots/*.csv``), figures
   (``plot_*``) and :func:`log_runs` (one W&B run per model in group ``error_detection``, and
   the summary run).

Choosing "the best" detector of a group (for the claims and the F1 claim) always uses the
*fit* split's out-of-fold AUROC, never the test labels.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.core.config import ConfigError
from trustlab.error_detection import metrics as M
from trustlab.error_detection.collect import (
    DECODING_DEFAULTS,
    load_or_collect,
    select_prompts,
    split_prompts,
)
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.estimators import ESTIMATORS, Estimator, build_estimator, out_of_fold_scores, per_layer_auroc
from trustlab.error_detection.statistics import GenerationStats

FAMILY = "error_detection"
BASE_MODEL_STAGE = "base_model"
NOISEFIT_STAGE = "noisefit"

# detector groups for the claims and the cost table
LOGIT = ("msp", "perplexity", "mean_token_entropy", "zero_shot_z")
SINGLE_PASS_PROBABILITY = ("msp", "perplexity")
SAMPLING = ("self_consistency", "rpc")
HIDDEN = ("mahalanobis", "mahalanobis_lee", "linear_probe", "knn", "sdm_adaptation")
MAHALANOBIS_AND_PROBE = ("mahalanobis", "mahalanobis_lee", "linear_probe")
SHORT = {
    "msp": "MSP", "perplexity": "Perplexity", "mean_token_entropy": "Entropy", "zero_shot_z": "Zero-shot z",
    "self_consistency": "Self-consistency", "rpc": "RPC", "mahalanobis": "Mahalanobis (1 centroid)",
    "mahalanobis_lee": "Mahalanobis (Lee)", "linear_probe": "Linear probe", "knn": "kNN",
    "sdm_adaptation": "SDM-style (adapt.)",
}  # fmt: skip


def group_of(name: str) -> str:
    return "sampling" if name in SAMPLING else "hidden" if name in HIDDEN else "logit"


# -- models and prompts ----------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    from trustlab.core.paths import data_dir as default_data_dir

    return Path(data_dir) if data_dir else default_data_dir()


def model_path(data_dir: str | Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(data_dir) / p


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def check_models(cfg: ErrorDetectionConfig, data_dir: str | Path | None, model_cfg=None) -> dict[str, Path | str]:
    """``{name: directory}`` of the studied model (``cfg.model``, named ``base``) and of each
    model in ``cfg.models`` (named by its last path component), checked to exist before any
    work. Raises ``FileNotFoundError`` naming the stage that produces the missing model.
    With ``model_cfg.backend == "hf"`` (the ``model:`` section) the studied model is that
    transformers model instead (``base`` maps to its ``name_or_path``; the runner's
    environment check has found it)."""
    data = resolve_data_dir(data_dir)
    out: dict[str, Path | str] = {}
    hf = model_cfg is not None and model_cfg.backend == "hf"
    base = model_path(data, cfg.model)
    if hf:
        base = str(model_cfg.name_or_path)
    elif not _is_model_dir(base):
        raise FileNotFoundError(
            f"no model at {base} (error_detection.model = {cfg.model!r}; config.json missing). The error_detection "
            f"stage needs the '{BASE_MODEL_STAGE}' stage's output: run `dvc repro {BASE_MODEL_STAGE}` "
            f"(python pipelines/pretrain_base.py --data-dir {data} --out {base}) first"
        )
    out["base"] = base
    for rel in cfg.models:
        p = model_path(data, rel)
        name = Path(rel).name
        if name in out:
            raise ConfigError(
                f"error_detection.models: two models are named {name!r} (last path component); rename one"
            )
        if not _is_model_dir(p):
            raise FileNotFoundError(
                f"error_detection.models lists {rel!r} but there is no model at {p} (config.json missing). "
                f"NoiseFiT exports its fine-tuned models to <data_dir>/models/noisefit/<variant>/: run "
                f"`dvc repro {NOISEFIT_STAGE}` (the '{NOISEFIT_STAGE}' stage, with noisefit.export: true and the "
                f"variant "
                f"among noisefit.variants) first, or remove it from error_detection.models"
            )
        out[name] = p
    return out


def load_studied_model(model_dirs: dict[str, Path | str], data_dir: str | Path | None, model_cfg=None):
    """``(model, tokenizer)`` of the studied model ``model_dirs["base"]``: the ``model:``
    section's transformers model (LoRA, chat template, dtype, device) when its backend is hf,
    else the model directory (:func:`load_model_dir`)."""
    if model_cfg is not None and model_cfg.backend == "hf":
        from trustlab.lm.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(model_cfg, resolve_data_dir(data_dir))
    return load_model_dir(model_dirs["base"])


def load_model_dir(path: str | Path):
    """``(model, tokenizer)`` from a model directory: our GPT format (``load_pretrained``) or a
    Hugging Face directory (``hf_backend.load_hf_model``, needs ``transformers``)."""
    from trustlab.core.io import read_json

    path = Path(path)
    info = read_json(path / "config.json")
    if info.get("format") == "trustlab-gpt":
        from trustlab.lm.checkpoint import load_pretrained

        return load_pretrained(path)
    from trustlab.lm.hf_backend import load_hf_model

    return load_hf_model(str(path))


@dataclass
class Prompts:
    records: list[dict[str, Any]]
    split: np.ndarray
    by_id: dict[str, dict[str, Any]]

    def counts(self):
        import pandas as pd

        df = pd.DataFrame({"task": [r["task"] for r in self.records], "source": [r["split"] for r in self.records],
                           "split": self.split})  # fmt: skip
        return df.groupby(["task", "source", "split"], sort=False).size().unstack("split", fill_value=0).reset_index()


def load_prompts(cfg: ErrorDetectionConfig, data_dir: str | Path | None) -> Prompts:
    """The configured prompts from ``<data_dir>/generated`` and their fit/test split."""
    gen = resolve_data_dir(data_dir) / "generated"
    if not gen.is_dir():
        raise FileNotFoundError(f"{gen} does not exist: run the data stage (`dvc repro data`) first")
    records = select_prompts(gen, cfg.tasks, cfg.sources, cfg.seed)
    split = split_prompts(records, cfg.fit_fraction, cfg.seed)
    for task in cfg.active_tasks():
        sides = set(split[[r["task"] == task for r in records]].tolist())
        if sides != {"fit", "test"}:
            raise ConfigError(
                f"error_detection.tasks.{task} = {cfg.tasks[task]}: too few prompts for both a fit and a test split "
                f"(got only {sorted(sides)}); use more prompts or another fit_fraction"
            )
    return Prompts(records, split, {str(r["id"]): r for r in records})


# -- detectors ---------------------------------------------------------------------------------------


@dataclass
class DetectorResult:
    name: str
    span: str
    status: str = "ok"  # "ok" | "not applicable: <why>"
    u_test: np.ndarray | None = None
    u_fit: np.ndarray | None = None  # out-of-fold on the fit split (thresholds, best-of-group choice)
    fit_s: float = 0.0
    score_s: float = 0.0
    oof_s: float = 0.0
    estimator: Estimator | None = None

    @property
    def key(self) -> str:
        return f"{self.name}@{self.span}"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def group(self) -> str:
        return group_of(self.name)


def run_detectors(
    cfg: ErrorDetectionConfig,
    stats: GenerationStats,
    *,
    spans: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, DetectorResult]:
    """Every configured detector on every configured span: fit on the fit split, score the test
    split (timed), and out-of-fold scores on the fit split. A detector that cannot run on these
    statistics (e.g. a supervised one when the fit split has one class) is kept with its reason."""
    fit, test = stats.fit_test()
    out: dict[str, DetectorResult] = {}
    with _quiet():
        _run_all(cfg, list(spans or cfg.spans), fit, test, out, progress)
    return out


@contextlib.contextmanager
def _quiet():
    """Silence scikit-learn's notice that a class is rarer than the number of CV folds (small
    fit splits; the estimators already cap the folds at the rarer class's count)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class in y has only", category=UserWarning)
        yield


def _run_all(cfg, spans, fit, test, out, progress) -> None:
    for name in cfg.detectors:
        kw = cfg.estimator_kwargs(name)
        for span in spans:
            res = DetectorResult(name, span)
            try:
                est = build_estimator(name, span=span, **kw)
                t0 = time.perf_counter()
                est.fit(fit)
                res.fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                res.u_test = est.score(test)
                res.score_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                res.u_fit = (
                    out_of_fold_scores(name, fit, span=span, oof_seed=cfg.seed, **kw) if est.needs_fit else est.score(fit)
                )
                res.oof_s = time.perf_counter() - t0
                res.estimator = est
            except ValueError as exc:
                res.status = f"not applicable: {exc}"
                res.u_test = res.u_fit = None
            out[res.key] = res
            if progress:
                progress(f"{res.key}: {res.status}")


def _labels(stats: GenerationStats) -> tuple[np.ndarray, np.ndarray, GenerationStats, GenerationStats]:
    fit, test = stats.fit_test()
    return fit.labels(), test.labels(), fit, test


def aggregate_tasks(part: GenerationStats, aggregate: str = "pooled", min_per_class: int = 5) -> list[str] | None:
    """Tasks that enter a task-mean metric on this split: those with at least ``min_per_class``
    wrong and ``min_per_class`` right responses (an AUROC from a handful of one class is noise).
    None means pooled (``aggregate="pooled"``, or no task qualifies)."""
    if aggregate == "pooled":
        return None
    if aggregate != "task_mean":
        raise ValueError(f"aggregate = {aggregate!r} is not allowed: 'pooled' or 'task_mean'")
    e = part.labels()
    out = []
    for t in sorted(set(part.task.tolist())):
        m = part.task == t
        n_err = int(e[m].sum())
        if n_err >= min_per_class and int(m.sum()) - n_err >= min_per_class:
            out.append(t)
    return out or None


def aggregate_auroc(
    u: np.ndarray, e: np.ndarray, task: np.ndarray, tasks: Sequence[str] | None, W: np.ndarray | None = None
) -> tuple[float, np.ndarray | None]:
    """AUROC pooled over all rows (``tasks`` None) or the mean of the per-task AUROCs over
    ``tasks``; with bootstrap multiplicities ``W`` also the value per resample (a task with one
    class in a resample is left out of that resample's mean)."""
    if tasks is None:
        return M.auroc(e, u), (M.auroc_w(u, e, W) if W is not None else None)
    masks = [task == t for t in tasks]
    point = float(np.mean([M.auroc(e[m], u[m]) for m in masks]))
    if W is None:
        return point, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resample columns
        boot = np.nanmean(np.stack([M.auroc_w(u[m], e[m], W[:, m]) for m in masks]), axis=0)
    return point, boot


def fit_auroc(stats: GenerationStats, det: DetectorResult, aggregate: str = "pooled", min_per_class: int = 5) -> float:
    """AUROC of the out-of-fold fit-split scores (what "best of a group" is chosen by), pooled
    or task-mean over the fit split's qualifying tasks."""
    if not det.ok:
        return float("nan")
    fit = stats.select(split="fit")
    tasks = aggregate_tasks(fit, aggregate, min_per_class)
    return aggregate_auroc(det.u_fit, fit.labels(), fit.task, tasks)[0]


def best_of(
    stats: GenerationStats,
    dets: Mapping[str, DetectorResult],
    names: Sequence[str],
    span: str,
    aggregate: str = "pooled",
    min_per_class: int = 5,
) -> str | None:
    """The key of the detector among ``names`` (on ``span``) with the highest fit-split
    out-of-fold AUROC; None if none ran. Test labels are never read."""
    cands = [
        (fit_auroc(stats, dets[f"{n}@{span}"], aggregate, min_per_class), f"{n}@{span}")
        for n in names
        if f"{n}@{span}" in dets
    ]
    cands = [(a, k) for a, k in cands if np.isfinite(a)]
    return max(cands)[1] if cands else None


# -- tables ------------------------------------------------------------------------------------------


def detector_table(
    cfg: ErrorDetectionConfig,
    stats: GenerationStats,
    dets: Mapping[str, DetectorResult],
    *,
    per_task: bool | None = None,
):
    """One row per (detector, span, task) with every metric of :func:`metrics.evaluate` (task
    ``all`` = every test row). The F1 threshold is chosen on the fit rows of the same task."""
    import pandas as pd

    fit, test = stats.fit_test()
    groups = [("all", None)]
    if cfg.per_task if per_task is None else per_task:
        groups += [(t, t) for t in sorted(set(test.task.tolist()))]
    rows = []
    for det in dets.values():
        for label, task in groups:
            tm = np.ones(test.n, bool) if task is None else test.task == task
            fm = np.ones(fit.n, bool) if task is None else fit.task == task
            row: dict[str, Any] = {"detector": det.name, "span": det.span, "task": label, "group": det.group,
                                   "label": SHORT.get(det.name, det.name), "status": det.status}  # fmt: skip
            if det.ok and tm.any():
                ef = fit.labels()[fm]
                with_f1 = fm.any() and ef.any()
                row.update(M.evaluate(
                    det.u_test[tm], test.labels()[tm], det.u_fit[fm] if with_f1 else None, ef if with_f1 else None,
                    n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed,
                ))  # fmt: skip
                row["fit_auroc"] = M.auroc(ef, det.u_fit[fm]) if fm.any() else float("nan")
            else:
                row["n"] = int(tm.sum())
            rows.append(row)
    return pd.DataFrame(rows)


def display_table(table, task: str = "all", span: str | None = None, digits: int = 3):
    """A compact view: AUROC [CI], AUPRC (base rate), PRR [CI], F1 vs always-error / random."""
    import pandas as pd

    t = table[table.task == task]
    if span is not None:
        t = t[t.span == span]

    def ci(r, k):
        v = r.get(k)
        if v is None or not np.isfinite(v):
            return ""
        return f"{v:.{digits}f} [{r.get(k + '_lo', np.nan):.{digits}f}, {r.get(k + '_hi', np.nan):.{digits}f}]"

    rows = []
    for _, r in t.iterrows():
        rows.append({
            "detector": r.label, "span": r.span, "AUROC [95% CI]": ci(r, "auroc"),
            "AUPRC [95% CI]": ci(r, "auprc"), "base rate": r.get("base_rate"),
            "PRR [95% CI]": ci(r, "prr"), "F1 [95% CI]": ci(r, "f1"),
            "F1 always-error": r.get("always_error_f1"), "F1 random": r.get("random_f1"),
            "flag rate": r.get("flag_rate"), "status": "" if r.status == "ok" else r.status[:60],
        })  # fmt: skip
    return pd.DataFrame(rows)


def _nanmean(x) -> float:
    v = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def within_task_table(table, span: str, min_per_class: int = 5):
    """Pooled test AUROC/PRR next to their means over tasks (each task's own value, over the
    tasks with at least ``min_per_class`` wrong and right test responses, as in the claims). A
    detector that only recognises *which task* a prompt belongs to scores well pooled when
    tasks differ in error rate, and at chance within each task."""
    import pandas as pd

    t = table[(table.span == span) & (table.status == "ok")]
    keep = (t.task == "all") | ((t.n_errors >= min_per_class) & (t.n - t.n_errors >= min_per_class))
    t = t[keep]
    rows = []
    for det, g in t.groupby("detector", sort=False):
        pooled = g[g.task == "all"]
        per = g[g.task != "all"]
        rows.append({"detector": det, "label": SHORT.get(det, det),
                     "auroc_pooled": float(pooled.auroc.iloc[0]) if len(pooled) else float("nan"),
                     "auroc_within_task_mean": _nanmean(per.auroc),
                     "prr_pooled": float(pooled.prr.iloc[0]) if len(pooled) else float("nan"),
                     "prr_within_task_mean": _nanmean(per.prr),
                     "tasks": int(per.auroc.notna().sum())})  # fmt: skip
    return pd.DataFrame(rows)


def error_rate_table(stats: GenerationStats, expected: Sequence[float] | None = None):
    """Error rate per task and source split (and the QA outcome classes), fit and test together."""
    import pandas as pd

    info = stats.meta.get("row_info", {})
    df = pd.DataFrame({
        "task": stats.task, "source": [info.get(str(i), {}).get("source", "") for i in stats.ids],
        "is_error": stats.labels(), "qa_class": [info.get(str(i), {}).get("qa_class", "") for i in stats.ids],
        "finish": [info.get(str(i), {}).get("finish", "") for i in stats.ids],
    })  # fmt: skip
    rows = []
    for (task, source), g in [
        (("all", "all"), df),
        *[((t, "all"), g) for t, g in df.groupby("task", sort=True)],
        *[(k, g) for k, g in df.groupby(["task", "source"], sort=True)],
    ]:
        row = {
            "task": task,
            "source": source,
            "n": len(g),
            "errors": int(g.is_error.sum()),
            "error_rate": float(g.is_error.mean()),
            "hit_max_tokens": float((g.finish == "length").mean()),
        }
        for c in ("hallucination", "abstain", "other"):
            if (g.qa_class != "").any():
                row[f"qa_{c}"] = float((g.qa_class == c).mean())
        if expected is not None:
            row["in_expected_range"] = bool(expected[0] <= row["error_rate"] <= expected[1])
        rows.append(row)
    return pd.DataFrame(rows).drop_duplicates(subset=["task", "source"])


def cost_table(stats: GenerationStats, dets: Mapping[str, DetectorResult], timing: Mapping[str, float]):
    """Seconds per 1000 responses per detector, generation included.

    ``model_s_per_1k``: the model work the detector needs, per 1000 prompts: the greedy pass
    without hidden states (``greedy_plain_s``) for logit detectors, plus the K samples
    (``sampling_s``) for sampling detectors; the greedy pass recording hidden states
    (``greedy_s``) for hidden-state detectors. ``fit_s``: one-off fit on the fit split
    (seconds). ``score_s_per_1k``: scoring the test split, per 1000 responses.
    ``total_s_per_1k`` = model + score + fit amortised over the test responses of this stage.
    Wall-clock on a shared CPU: read the ratios, not the digits.
    """
    import pandas as pd

    n = max(int(timing.get("n", stats.n)), 1)
    n_test = max(int((stats.split == "test").sum()), 1)
    per = lambda s: 1000.0 * s / n  # noqa: E731
    greedy_plain = timing.get("greedy_plain_s", timing["greedy_s"])
    rows = []
    for det in dets.values():
        if det.group == "sampling":
            model_s = per(greedy_plain + timing["sampling_s"])
            needs = f"greedy + K={stats.K} samples"
        elif det.group == "hidden":
            model_s = per(timing["greedy_s"])
            needs = "greedy + hidden states"
        else:
            model_s = per(greedy_plain)
            needs = "greedy"
        score = 1000.0 * det.score_s / n_test
        rows.append({"detector": det.name, "span": det.span, "label": SHORT.get(det.name, det.name), "needs": needs,
                     "model_s_per_1k": model_s, "fit_s": det.fit_s, "score_s_per_1k": score,
                     "total_s_per_1k": model_s + score + 1000.0 * det.fit_s / n_test,
                     "status": det.status})  # fmt: skip
    return pd.DataFrame(rows)


def per_layer_table(cfg: ErrorDetectionConfig, stats: GenerationStats):
    """Test AUROC of each ``cfg.per_layer`` method fitted on one layer at a time, per span."""
    import pandas as pd

    fit, test = stats.fit_test()
    rows = []
    for method in cfg.per_layer:
        kw = {k: v for k, v in cfg.estimator_kwargs(method).items() if k not in ("layer", "layers")}
        for span in cfg.spans:
            try:
                with _quiet():
                    rows += per_layer_auroc(fit, test, method=method, span=span, **kw)
            except ValueError as exc:
                rows.append({"layer": None, "method": method, "span": span, "auroc": float("nan"), "note": str(exc)})
    return pd.DataFrame(rows)


def curve_frames(stats: GenerationStats, dets: Mapping[str, DetectorResult], keys: Sequence[str]):
    """ROC, precision-recall and rejection-curve points of the given detectors on the test split."""
    import pandas as pd
    from sklearn.metrics import precision_recall_curve, roc_curve

    test = stats.select(split="test")
    e = test.labels()
    roc, pr, rej = [], [], []
    for key in keys:
        det = dets[key]
        if not det.ok or e.all() or not e.any():
            continue
        fpr, tpr, _ = roc_curve(e, det.u_test)
        roc += [{"detector": key, "fpr": a, "tpr": b} for a, b in zip(fpr, tpr)]
        p, r, _ = precision_recall_curve(e, det.u_test)
        pr += [{"detector": key, "recall": b, "precision": a} for a, b in zip(p, r)]
        c = M.rejection_curve(det.u_test, e)
        rej += [
            {"detector": key, "rejection_rate": a, "accuracy_kept": b}
            for a, b in zip(c["rejection_rate"], c["quality"])
        ]
    if len(e):
        c = M.rejection_curve(np.zeros(len(e)), e)
        rej += [
            {"detector": "oracle", "rejection_rate": a, "accuracy_kept": b}
            for a, b in zip(c["rejection_rate"], c["oracle"])
        ]
        rej += [
            {"detector": "random", "rejection_rate": a, "accuracy_kept": b}
            for a, b in zip(c["rejection_rate"], c["random"])
        ]
    return pd.DataFrame(roc), pd.DataFrame(pr), pd.DataFrame(rej)


def top_keys(table, span: str, k: int = 3, always: Sequence[str] = ("perplexity",)) -> list[str]:
    """The k detectors on ``span`` with the highest test AUROC (for display only) plus the
    reference detectors in ``always``."""
    t = table[(table.task == "all") & (table.status == "ok") & (table.span == span)].sort_values(
        "auroc", ascending=False
    )
    keys = [f"{r.detector}@{r.span}" for _, r in t.head(k).iterrows()]
    present = {f"{r.detector}@{r.span}" for _, r in t.iterrows()}
    keys += [f"{n}@{span}" for n in always if f"{n}@{span}" in present and f"{n}@{span}" not in keys]
    return keys


# -- injected errors ---------------------------------------------------------------------------------


@dataclass
class InjectedResult:
    stats: GenerationStats | None
    counts: dict[str, int]
    u: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def run_injected(
    cfg: ErrorDetectionConfig,
    model: Any,
    tokenizer: Any,
    stats: GenerationStats,
    prompts: Prompts,
    dets: Mapping[str, DetectorResult],
) -> InjectedResult:
    """Corrupt the correct test responses, score originals and corruptions by teacher forcing
    and score them with every fitted detector (fitted on the natural fit split only)."""
    from trustlab.error_detection.inject import make_injections, score_injected

    t0 = time.perf_counter()
    injections, counts = make_injections(stats, prompts.by_id, split="test", seed=cfg.seed)
    if not injections:
        return InjectedResult(None, counts, seconds=time.perf_counter() - t0)
    inj = score_injected(model, tokenizer, stats, injections, batch_size=cfg.batch_size)
    out = InjectedResult(inj, counts)
    for key, det in dets.items():
        if det.ok:
            out.u[key] = det.estimator.score(inj)
    out.seconds = time.perf_counter() - t0
    return out


def injected_table(
    cfg: ErrorDetectionConfig, stats: GenerationStats, dets: Mapping[str, DetectorResult], inj: InjectedResult
):
    """Per detector and span: natural test AUROC vs injected AUROC (originals vs their
    corruptions), both with CIs, the paired win rate P(u_injected > u_original) (+ ties / 2) and
    the per-task injected AUROC. ``mode`` = ``verifier`` for sampling detectors (see
    :mod:`trustlab.error_detection.inject`)."""
    import pandas as pd

    if inj.stats is None:
        return pd.DataFrame()
    e_nat = stats.select(split="test").labels()
    s = inj.stats
    e = s.labels()
    pair = np.array([s.meta["row_info"][str(i)]["pair"] for i in s.ids])
    rows = []
    for key, det in dets.items():
        if not det.ok or key not in inj.u:
            continue
        u = inj.u[key]
        nat = M.evaluate(det.u_test, e_nat, n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed)
        ij = M.evaluate(u, e, n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed)
        by = {p: i for i, p in enumerate(s.ids) if not e[i]}
        wins = [float(u[i] > u[by[pair[i]]]) + 0.5 * float(u[i] == u[by[pair[i]]]) for i in np.flatnonzero(e)]
        row = {"detector": det.name, "span": det.span, "label": SHORT.get(det.name, det.name),
               "mode": "verifier" if det.name in SAMPLING else "self",
               "natural_auroc": nat["auroc"], "natural_auroc_lo": nat["auroc_lo"], "natural_auroc_hi": nat["auroc_hi"],
               "injected_auroc": ij["auroc"], "injected_auroc_lo": ij["auroc_lo"], "injected_auroc_hi": ij["auroc_hi"],
               "pair_win_rate": float(np.mean(wins)) if wins else float("nan"), "n_pairs": len(wins)}  # fmt: skip
        for task in sorted(set(s.task.tolist())):
            m = s.task == task
            row[f"injected_auroc_{task}"] = M.auroc(e[m], u[m])
        rows.append(row)
    return pd.DataFrame(rows)


def injection_examples(inj: InjectedResult, n: int = 2):
    """A few (task, kind, original, corrupted) rows per task, for the report."""
    import pandas as pd

    if inj.stats is None:
        return pd.DataFrame()
    s = inj.stats
    rows = []
    for task in sorted(set(s.task.tolist())):
        idx = [i for i in np.flatnonzero(s.task == task) if s.is_error[i]][:n]
        for i in idx:
            pid = s.meta["row_info"][str(s.ids[i])]["pair"]
            j = int(np.flatnonzero(s.ids == pid)[0])
            rows.append({"task": task, "kind": s.meta["row_info"][str(s.ids[i])]["kind"], "prompt": s.prompt[i],
                         "original": s.response[j], "injected": s.response[i]})  # fmt: skip
    return pd.DataFrame(rows)


# -- claims ------------------------------------------------------------------------------------------


def _boot(cfg: ErrorDetectionConfig, n: int) -> np.ndarray:
    """(B, n) bootstrap multiplicities: the resamples ``metrics.evaluate`` draws with the same seed."""
    return M.resample_weights(M.resample_indices(n, cfg.bootstrap_resamples, cfg.seed), n)




def make_claims(
    cfg: ErrorDetectionConfig, stats: GenerationStats, dets: Mapping[str, DetectorResult], span: str | None = None
) -> list:
    """The issue's four claims on the test split, each an effect with a paired bootstrap CI over
    test responses (``n_seeds`` = 1: one model, one seed; the CI is over responses).

    AUROC here is ``cfg.claims_aggregate``: ``task_mean`` = the mean of the per-task AUROCs over
    tasks with at least ``cfg.claims_min_per_class`` wrong and right test responses (what
    per-benchmark papers report; pooling tasks whose error rates differ lets a detector score by
    recognising the task), or ``pooled`` = one AUROC over all test rows. The other aggregate is
    given in each note. "Best of a group" is chosen by the same aggregate on the fit split.

    1. Self-consistency vs the better single-pass probability detector (MSP or perplexity):
       AUROC difference, expected > 0.
    2. RPC vs both self-consistency and perplexity: min of the two AUROC differences (computed
       per resample), expected > 0.
    3. The best hidden-state detector (Mahalanobis single/Lee or probe) vs the best logit-based
       detector (MSP, perplexity, entropy, z): AUROC difference, expected > 0.
    4. F1 at the base rate is misleading: effect = F1(the detector with the best fit-split
       AUROC, at its fit-chosen threshold; per task for ``task_mean``) - F1(always "error").
       *supported* when that detector's AUROC CI lies above 0.5 while the F1 gain's CI reaches
       0 or below (F1 does not credit an informative detector over the trivial baseline);
       *not supported* when the F1 gain's CI lies above 0; *inconclusive* otherwise.
    """
    from trustlab.core.stats import Claim

    span = span or cfg.spans[0]
    agg, kmin = cfg.claims_aggregate, cfg.claims_min_per_class
    fit, test = stats.fit_test()
    e, ef = test.labels(), fit.labels()
    W = _boot(cfg, test.n)
    level = cfg.ci_level
    tasks = aggregate_tasks(test, agg, kmin)
    other = None if tasks is not None else aggregate_tasks(test, "task_mean", kmin)
    metric = "AUROC (pooled)" if tasks is None else "AUROC (mean over tasks)"
    scope = (f"pooled over {test.n} test responses" if tasks is None else
             f"mean over tasks {', '.join(tasks)} (>= {kmin} of each class in test)")  # fmt: skip
    if agg == "task_mean" and tasks is None:
        scope += f"; no task has >= {kmin} of each class, so pooled"
    claims = []

    def get(name: str) -> DetectorResult | None:
        d = dets.get(f"{name}@{span}")
        return d if d is not None and d.ok else None

    def auc(d: DetectorResult) -> tuple[float, np.ndarray]:
        return aggregate_auroc(d.u_test, e, test.task, tasks, W)

    def alt(d: DetectorResult) -> str:
        """The other aggregate, for the note."""
        if tasks is None:
            return f"{aggregate_auroc(d.u_test, e, test.task, other)[0]:.3f} mean over tasks" if other else "n/a"
        return f"{M.auroc(e, d.u_test):.3f} pooled"

    def best(names: Sequence[str]) -> str | None:
        return best_of(stats, dets, names, span, agg, kmin)

    def skipped(text: str, paper: str, why: str):
        return Claim(FAMILY, text, paper, metric, "increase", float("nan"), float("nan"), float("nan"), 1,
                     "inconclusive", f"not evaluated: {why}")  # fmt: skip

    def add(text, paper, point, boot, note, expected="increase"):
        lo, hi = M.percentile_ci(boot, level)
        claims.append(Claim(FAMILY, text, paper, metric, expected, float(point), lo, hi, 1,
                            verdict(lo, hi, expected), f"{note}; {scope}"))  # fmt: skip

    from trustlab.core.stats import verdict

    # 1
    text, paper = "sampling-based consistency beats single-pass probability", "RPC; lm-polygraph"
    sc, base_key = get("self_consistency"), best(SINGLE_PASS_PROBABILITY)
    if sc is None or base_key is None or not np.isfinite(auc(sc)[0]):
        claims.append(skipped(text, paper, "self_consistency or MSP/perplexity missing, or one class in test"))
    else:
        (a, ab), (b, bb) = auc(sc), auc(dets[base_key])
        add(text, paper, a - b, ab - bb,
            f"self_consistency@{span} {a:.3f} ({alt(sc)}) - {base_key} {b:.3f} ({alt(dets[base_key])}; best of "
            f"MSP/perplexity on the fit split); K = {stats.K}")  # fmt: skip
    # 2
    text, paper = "RPC beats both self-consistency and perplexity", "RPC (perplexity consistency + pruning)"
    rpc, ppl = get("rpc"), get("perplexity")
    if rpc is None or sc is None or ppl is None or not np.isfinite(auc(rpc)[0]):
        claims.append(skipped(text, paper, "rpc, self_consistency or perplexity missing, or one class in test"))
    else:
        (r, rb), (s_, sb), (p, pb) = auc(rpc), auc(sc), auc(ppl)
        add(text, paper, min(r - s_, r - p), np.minimum(rb - sb, rb - pb),
            f"min(RPC - SC, RPC - perplexity): RPC {r:.3f} ({alt(rpc)}), SC {s_:.3f}, perplexity {p:.3f}")
    # 3
    text, paper = "hidden-state detectors (Mahalanobis, probe) beat logit-based detectors", "Lee et al.; lm-polygraph"
    hk, lk = best(MAHALANOBIS_AND_PROBE), best(LOGIT)
    if hk is None or lk is None or not np.isfinite(auc(dets[hk])[0]):
        claims.append(skipped(text, paper, "no hidden-state or logit detector ran, or one class in test"))
    else:
        (h, hb), (l_, lb) = auc(dets[hk]), auc(dets[lk])
        add(text, paper, h - l_, hb - lb,
            f"{hk} {h:.3f} ({alt(dets[hk])}) - {lk} {l_:.3f} ({alt(dets[lk])}); each the best of its group on the "
            f"fit split; the hidden-state detectors are trained on fit labels, the logit ones are zero-shot")
    # 4
    text, paper = "F1 at the base rate is misleading (always-error baseline)", "ReaLMistake"
    all_keys = [k for k, d in dets.items() if d.ok and d.span == span]
    bkey = best([dets[k].name for k in all_keys])
    groups = [np.ones(test.n, bool)] if tasks is None else [test.task == t for t in tasks]
    fgroups = [np.ones(fit.n, bool)] if tasks is None else [fit.task == t for t in tasks]
    if bkey is None or not e.any() or e.all() or any(not ef[fm].any() for fm in fgroups):
        claims.append(skipped(text, paper, "no detector ran, only one class, or a task without errors in fit"))
        return claims

    def f1_gain(d: DetectorResult) -> tuple[float, np.ndarray, list[float]]:
        points, boots, thrs = [], [], []
        for m, fm in zip(groups, fgroups):
            thr = M.choose_threshold(d.u_fit[fm], ef[fm])
            b = float(e[m].mean())
            points.append(M.precision_recall_f1(d.u_test[m] > thr, e[m])[2] - 2 * b / (1 + b))
            wm = W[:, m]
            bb = (wm @ e[m].astype(float)) / wm.sum(axis=1)
            boots.append(M.prf_w(d.u_test[m] > thr, e[m], wm)[2] - np.where(bb > 0, 2 * bb / (1 + bb), 0.0))
            thrs.append(thr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.mean(points)), np.nanmean(np.stack(boots), axis=0), thrs

    d = dets[bkey]
    gain, gain_boot, thrs = f1_gain(d)
    gain_lo, gain_hi = M.percentile_ci(gain_boot, level)
    a_point, a_boot = auc(d)
    auc_lo, auc_hi = M.percentile_ci(a_boot, level)
    informative = [f1_gain(dets[k])[0] <= 0 for k in all_keys if M.percentile_ci(auc(dets[k])[1], level)[0] > 0.5]
    # the claim is an asymmetry: the detector is clearly informative by AUROC (CI above 0.5) while
    # F1 does not credit it over always-error (F1 gain CI reaches 0). A strict "always-error beats
    # the detector" test is nearly untestable: a threshold tuned on the fit split can flag everything.
    verdict_ = "not supported" if gain_lo > 0 else "supported" if auc_lo > 0.5 else "inconclusive"
    claims.append(Claim(
        FAMILY, text, paper, "F1 gain over always-error", "decrease", gain, gain_lo, gain_hi, 1, verdict_,
        f"F1 of {bkey} (best by fit AUROC; test {metric} {a_point:.3f} [{auc_lo:.3f}, {auc_hi:.3f}]; thresholds "
        f"{', '.join(f'{t:.3g}' for t in thrs)} chosen on fit) minus always-error F1 (test base rate {e.mean():.3f}). "
        f"Verdict rule: supported = AUROC CI above 0.5 while the F1 gain CI reaches 0; not supported = F1 gain CI "
        f"above 0. {sum(informative)} of {len(informative)} detectors with AUROC CI above 0.5 do not beat "
        f"always-error on F1; {scope}",
    ))  # fmt: skip
    return claims


def claims_frame(claims: Sequence):
    import pandas as pd

    return pd.DataFrame([c.as_dict() for c in claims])


# -- one model ----------------------------------------------------------------------------------------


@dataclass
class ModelRun:
    name: str
    path: str
    stats: GenerationStats
    dets: dict[str, DetectorResult]
    timing: dict[str, float]
    reused: bool = False
    injected: InjectedResult | None = None


def decoding_kwargs(cfg: ErrorDetectionConfig) -> dict[str, Any]:
    kw = {"k_samples": cfg.k_samples, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
          "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "seed": cfg.seed}  # fmt: skip
    assert set(kw) == set(DECODING_DEFAULTS)
    return kw


def time_plain_greedy(cfg: ErrorDetectionConfig, model: Any, tokenizer: Any, prompts: Prompts) -> float:
    """Seconds of the greedy pass without hidden states (for the cost table)."""
    from trustlab.lm.generation import generate

    t0 = time.perf_counter()
    generate(model, tokenizer, [r["prompt"] for r in prompts.records], max_new_tokens=cfg.max_new_tokens,
             batch_size=cfg.batch_size)  # fmt: skip
    return time.perf_counter() - t0


def run_model(
    cfg: ErrorDetectionConfig,
    name: str,
    model: Any,
    tokenizer: Any,
    prompts: Prompts,
    stats_dir: str | Path,
    *,
    path: str = "",
    inject: bool = False,
    spans: Sequence[str] | None = None,
    reuse: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelRun:
    """Statistics (stored, or reused when identical: ``reuse``, default ``cfg.reuse_stats``),
    detectors, timing and (optionally) injected errors."""
    say = progress or (lambda m: None)
    reuse = cfg.reuse_stats if reuse is None else reuse
    stats, reused = load_or_collect(Path(stats_dir) / name, model, tokenizer, prompts.records, prompts.split,
                                    reuse=reuse, model_name=name, progress=say, **decoding_kwargs(cfg))  # fmt: skip
    timing = dict(stats.meta["timing"])
    timing["greedy_plain_s"] = time_plain_greedy(cfg, model, tokenizer, prompts)
    say(f"{name}: statistics {'reused' if reused else 'computed'}; error rate {stats.labels().mean():.3f}")
    t0 = time.perf_counter()
    dets = run_detectors(cfg, stats, spans=spans)
    timing["detectors_s"] = time.perf_counter() - t0
    run = ModelRun(name, str(path), stats, dets, timing, reused)
    if inject:
        run.injected = run_injected(cfg, model, tokenizer, stats, prompts, dets)
        timing["injected_s"] = run.injected.seconds
    return run


def model_table(cfg: ErrorDetectionConfig, runs: Sequence[ModelRun], span: str | None = None):
    """Part 4: per model and detector, test AUROC and PRR with CIs and the error rate; for every
    model after the first listed fine-tuned one, the paired difference to it (same prompts,
    resampled together)."""
    import pandas as pd

    span = span or cfg.spans[0]
    rows = []
    ref = runs[1] if len(runs) > 2 else None  # the first listed model (e.g. sft) is the reference for the others
    for run in runs:
        test = run.stats.select(split="test")
        e = test.labels()
        W = _boot(cfg, test.n)
        for det in run.dets.values():
            if det.span != span:
                continue
            row = {"model": run.name, "detector": det.name, "label": SHORT.get(det.name, det.name),
                   "error_rate": float(e.mean()), "n": test.n, "status": det.status}  # fmt: skip
            if det.ok:
                ev = M.evaluate(det.u_test, e, n_resamples=cfg.bootstrap_resamples, level=cfg.ci_level, seed=cfg.seed)
                row.update({k: ev[k] for k in ("auroc", "auroc_lo", "auroc_hi", "prr", "prr_lo", "prr_hi", "auprc")})
                tasks = aggregate_tasks(test, "task_mean", cfg.claims_min_per_class)
                if tasks is not None:
                    row["auroc_task_mean"] = aggregate_auroc(det.u_test, e, test.task, tasks)[0]
                if ref is not None and run is not ref and run.name != "base":
                    rd = ref.dets.get(det.key)
                    rtest = ref.stats.select(split="test")
                    if rd is not None and rd.ok and np.array_equal(rtest.ids, test.ids):
                        re_ = rtest.labels()
                        for metric, fn, batch in (("auroc", M.auroc, M.auroc_w),):
                            d = fn(e, det.u_test) - fn(re_, rd.u_test)
                            lo, hi = M.percentile_ci(batch(det.u_test, e, W) - batch(rd.u_test, re_, W), cfg.ci_level)
                            row[f"{metric}_minus_{ref.name}"] = d
                            row[f"{metric}_minus_{ref.name}_lo"] = lo
                            row[f"{metric}_minus_{ref.name}_hi"] = hi
            rows.append(row)
    return pd.DataFrame(rows)


# -- outputs --------------------------------------------------------------------------------------


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def headline(
    cfg: ErrorDetectionConfig,
    base: ModelRun,
    table,
    claims: Sequence,
    cost,
    injected,
    models,
    stage_seconds: float | None,
) -> dict[str, Any]:
    """Flat readable numbers: error rates, each detector's test AUROC/PRR/AUPRC on the primary
    span, the F1 baselines, claims, injected AUROCs, part-4 AUROCs, timing."""
    span = cfg.spans[0]
    h: dict[str, Any] = {}
    s = base.stats
    test = s.select(split="test")
    h["error_rate"] = float(s.labels().mean())
    h["test_error_rate"] = float(test.labels().mean())
    for t in sorted(set(s.task.tolist())):
        h[f"error_rate/{t}"] = float(s.labels()[s.task == t].mean())
    h["n_prompts"] = s.n
    h["n_test"] = test.n
    h["k_samples"] = s.K
    t = table[(table.task == "all") & (table.span == span) & (table.status == "ok")]
    for _, r in t.iterrows():
        for m in ("auroc", "prr", "auprc", "f1"):
            if m in r and _f(r[m]) is not None:
                h[f"{r.detector}/{m}"] = _f(r[m])
    for _, r in within_task_table(table, span, cfg.claims_min_per_class).iterrows():
        if _f(r.auroc_within_task_mean) is not None:
            h[f"{r.detector}/auroc_within_task"] = _f(r.auroc_within_task_mean)
    if len(t) and "always_error_f1" in t:
        h["always_error_f1"] = _f(t.always_error_f1.iloc[0])
        h["random_f1"] = _f(t.random_f1.iloc[0])
    if len(t):
        best = t.sort_values("auroc", ascending=False).iloc[0]
        h["best_detector_test"] = f"{best.detector}@{best.span}"
        h["best_detector_test_auroc"] = _f(best.auroc)
    for c in claims:
        h[f"claim/{c.claim[:48]}"] = c.verdict
    h["claims_supported"] = sum(c.verdict == "supported" for c in claims)
    h["claims_total"] = len(claims)
    if injected is not None and len(injected):
        for _, r in injected[injected.span == span].iterrows():
            h[f"{r.detector}/injected_auroc"] = _f(r.injected_auroc)
    if models is not None and len(models):
        for _, r in models.iterrows():
            if r.model != "base" and _f(r.get("auroc")) is not None:
                h[f"{r.model}/{r.detector}/auroc"] = _f(r.auroc)
    sp = cost[(cost.span == span)]
    for _, r in sp.iterrows():
        h[f"{r.detector}/s_per_1k"] = _f(r.total_s_per_1k)
    h["generation_s"] = base.timing.get("greedy_s", 0) + base.timing.get("sampling_s", 0)
    h["stage_seconds"] = stage_seconds
    return h


def write_outputs(
    reports_dir: str | Path,
    cfg: ErrorDetectionConfig,
    runs: Sequence[ModelRun],
    tables: Mapping[str, Any],
    claims: Sequence,
    *,
    profile: str | None = None,
    stage_seconds: float | None = None,
    notes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``metrics.json`` (headline, claims, tables, timing, run info) and plot CSVs under ``plots/``."""
    from trustlab.tracking import write_metrics, write_plot

    base = runs[0]
    metrics = {
        "headline": headline(
            cfg,
            base,
            tables["detectors"],
            claims,
            tables["cost"],
            tables.get("injected"),
            tables.get("models"),
            stage_seconds,
        ),  # fmt: skip
        "claims": [c.as_dict() for c in claims],
        "tables": {
            k: (v.to_dict(orient="records") if hasattr(v, "to_dict") else v)
            for k, v in tables.items()
            if k not in ("roc", "pr", "rejection")
        },  # fmt: skip
        "stats": {
            r.name: {
                **r.stats.summary(),
                "reused": r.reused,
                "timing": r.timing,
                "settings": r.stats.meta.get("settings"),
                "model_sha256": r.stats.meta.get("model_sha256"),
                "path": r.path,
            }
            for r in runs
        },  # fmt: skip
        "injected_counts": base.injected.counts if base.injected else None,
        "notes": dict(notes or {}),
        "config": cfg.to_dict(),
        "run": {"profile": profile, "stage_seconds": stage_seconds},
    }
    try:
        from trustlab.core.provenance import provenance

        metrics["provenance"] = provenance()
    except Exception:  # provenance is informative only
        pass
    write_metrics(FAMILY, metrics, reports_dir)
    for name, df in tables.items():
        if hasattr(df, "to_dict") and len(df):
            write_plot(FAMILY, name, df, reports_dir)
    return metrics




def log_runs(
    cfg: ErrorDetectionConfig,
    runs: Sequence[ModelRun],
    tables: Mapping[str, Any],
    figures: Mapping[str, Any],
    claims: Sequence,
    *,
    profile: str | None = None,
    html_path: str | Path | None = None,
    summary: Mapping[str, Any] | None = None,
) -> list[str]:
    """One W&B run per model (group ``error_detection``, job type ``detect``, named
    ``<model>-seed<seed>``): its detector table (``wandb.Table``), error rates, ROC/PR and
    rejection curves (images) and summary numbers. Then the family's summary run (job type
    ``summary``): the claims, detector, cost, per-layer, injected and model-comparison tables,
    every figure of the stage, the headline numbers and the HTML summary."""
    import matplotlib.pyplot as plt

    from trustlab.tracking import run_name, start_run

    names = []
    for i, run in enumerate(runs):
        config = {**cfg.to_dict(), "profile": profile, "model_name": run.name, "model_path": run.path}
        with start_run(FAMILY, "detect", run_name(run.name, cfg.seed), config, tags=[run.name]) as wb:
            det = detector_table(cfg, run.stats, run.dets, per_task=False) if i else tables["detectors"]
            wb.log_table("detectors", det)
            wb.log_table("error_rates", error_rate_table(run.stats, cfg.expected_error_rate))
            span = next(iter(run.dets.values())).span if run.dets else cfg.spans[0]
            roc, pr, rej = curve_frames(run.stats, run.dets, top_keys(det, span))
            base_rate = float(run.stats.select(split="test").labels().mean())
            for name, fig in (("roc_pr", plot_roc_pr(roc, pr, base_rate)), ("rejection_curves", plot_rejection(rej))):
                if fig is not None:
                    wb.log_image(name, fig)
                    plt.close(fig)
            wb.summary({"error_rate": float(run.stats.labels().mean()),
                        **{f"timing/{k}": v for k, v in run.timing.items()}})  # fmt: skip
            names.append(wb.name)
    config = {**cfg.to_dict(), "profile": profile, "models": {r.name: r.path for r in runs}}
    with start_run(FAMILY, "summary", f"{FAMILY}-summary", config, tags=["summary"]) as wb:
        wb.log_table("claims", claims_frame(claims))
        for name in ("detectors", "cost", "per_layer", "injected", "models"):
            df = tables.get(name)
            if df is not None and len(df):
                wb.log_table(name, df)
        for name, fig in figures.items():
            wb.log_image(name, fig)
        if html_path is not None and Path(html_path).exists():
            wb.log_html("summary_html", html_path)
        wb.summary(dict(summary or {}))
        names.append(wb.name)
    return names


# -- figures ---------------------------------------------------------------------------------------


def plot_error_rates(err_table):
    import matplotlib.pyplot as plt

    t = err_table[(err_table.source != "all") | (err_table.task == "all")]
    fig, ax = plt.subplots(figsize=(7, 3))
    labels = [f"{r.task}/{r.source}" if r.source != "all" else "all" for _, r in t.iterrows()]
    ax.bar(range(len(t)), t.error_rate, color="tab:red", alpha=0.7)
    ax.set_xticks(range(len(t)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("error rate (greedy)")
    ax.set_title("error rate per task and source", fontsize=9)
    fig.tight_layout()
    return fig


def plot_detector_auroc(table, task: str = "all"):
    """AUROC with 95% CIs per detector, one bar per span."""
    import matplotlib.pyplot as plt

    t = table[(table.task == task) & (table.status == "ok")]
    if not len(t):
        return None
    spans = list(dict.fromkeys(t.span))
    names = list(dict.fromkeys(t.detector))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    w = 0.8 / len(spans)
    for j, span in enumerate(spans):
        ts = t[t.span == span].set_index("detector").reindex(names)
        x = np.arange(len(names)) + j * w
        y = ts.auroc.to_numpy(float)
        err = np.abs(np.vstack([y - ts.auroc_lo.to_numpy(float), ts.auroc_hi.to_numpy(float) - y]))
        ax.bar(x, y, w, yerr=np.nan_to_num(err), capsize=2, label=f"span = {span}")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)) + w * (len(spans) - 1) / 2, [SHORT.get(n, n) for n in names], rotation=35,
                  ha="right", fontsize=7)  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("test AUROC")
    ax.legend(fontsize=7)
    ax.set_title(f"detector AUROC ({task}); dashed = chance", fontsize=9)
    fig.tight_layout()
    return fig


def plot_roc_pr(roc, pr, base_rate: float):
    import matplotlib.pyplot as plt

    if not len(roc):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for key, g in roc.groupby("detector", sort=False):
        axes[0].plot(g.fpr, g.tpr, label=key, lw=1.2)
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    for key, g in pr.groupby("detector", sort=False):
        axes[1].plot(g.recall, g.precision, label=key, lw=1.2)
    axes[1].axhline(base_rate, color="k", ls="--", lw=0.8, label=f"base rate {base_rate:.2f}")
    axes[1].set(xlabel="recall (errors)", ylabel="precision", title="precision-recall (test)", ylim=(0, 1.02))
    for ax in axes:
        ax.legend(fontsize=6)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def plot_rejection(rej):
    import matplotlib.pyplot as plt

    if not len(rej):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, g in rej.groupby("detector", sort=False):
        style = {"oracle": dict(color="k", ls=":"), "random": dict(color="k", ls="--")}.get(key, {})
        ax.plot(g.rejection_rate, g.accuracy_kept, label=key, lw=1.2, **style)
    ax.set(xlabel="fraction rejected (most uncertain first)", ylabel="accuracy of kept responses",
           title="prediction-rejection curves (test)")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_per_layer(layer_table):
    import matplotlib.pyplot as plt

    t = layer_table.dropna(subset=["layer"]) if len(layer_table) else layer_table
    if not len(t):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for (method, span), g in t.groupby(["method", "span"], sort=False):
        ax.plot(g.layer, g.auroc, marker="o", label=f"{SHORT.get(method, method)} ({span})")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set(xlabel="layer (0 = embeddings)", ylabel="test AUROC", title="which layer knows best")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_injected(inj_table, span: str):
    import matplotlib.pyplot as plt

    if inj_table is None or not len(inj_table):
        return None
    t = inj_table[inj_table.span == span]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(t))
    for off, col, lab in ((-0.2, "natural_auroc", "natural errors"), (0.2, "injected_auroc", "injected errors")):
        y = t[col].to_numpy(float)
        err = np.abs(np.vstack([y - t[col + "_lo"].to_numpy(float), t[col + "_hi"].to_numpy(float) - y]))
        ax.bar(x + off, y, 0.4, yerr=np.nan_to_num(err), capsize=2, label=lab)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f"{r.label}{' (verifier)' if r.mode == 'verifier' else ''}" for _, r in t.iterrows()],
                  rotation=35, ha="right", fontsize=7)  # fmt: skip
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("AUROC")
    ax.legend(fontsize=7)
    ax.set_title(f"natural vs injected errors (span = {span})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_models(model_tab):
    import matplotlib.pyplot as plt

    if model_tab is None or not len(model_tab) or model_tab.model.nunique() < 2:
        return None
    t = model_tab[model_tab.status == "ok"]
    models = list(dict.fromkeys(t.model))
    names = list(dict.fromkeys(t.detector))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    w = 0.8 / len(models)
    for ax, metric in zip(axes, ("auroc", "prr")):
        for j, m in enumerate(models):
            tm = t[t.model == m].set_index("detector").reindex(names)
            y = tm[metric].to_numpy(float)
            err = np.abs(np.vstack([y - tm[metric + "_lo"].to_numpy(float), tm[metric + "_hi"].to_numpy(float) - y]))
            ax.bar(
                np.arange(len(names)) + j * w,
                y,
                w,
                yerr=np.nan_to_num(err),
                capsize=2,
                label=f"{m} (error rate {tm.error_rate.dropna().iloc[0]:.2f})" if tm.error_rate.notna().any() else m,
            )
        ax.set_xticks(np.arange(len(names)) + w * (len(models) - 1) / 2, [SHORT.get(n, n) for n in names], rotation=35,
                      ha="right", fontsize=7)  # fmt: skip
        ax.axhline(0.5 if metric == "auroc" else 0.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"test {metric.upper()} per model", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_cost(cost, span: str):
    import matplotlib.pyplot as plt

    t = cost[(cost.span == span) & (cost.status == "ok")].sort_values("total_s_per_1k")
    if not len(t):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(t.label, t.model_s_per_1k, label="generation")
    ax.barh(t.label, t.total_s_per_1k - t.model_s_per_1k, left=t.model_s_per_1k, label="fit + score")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per 1000 responses (log)")
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title(f"cost per detector (span = {span})", fontsize=9)
    fig.tight_layout()
    return fig


# -- narrative ------------------------------------------------------------------------------------


def findings(cfg: ErrorDetectionConfig, base: ModelRun, table, claims, err_table, injected=None, models=None) -> str:
    """Markdown bullets generated from the results (no hand-written numbers)."""
    span = cfg.spans[0]
    lines = []
    all_row = err_table[(err_table.task == "all")].iloc[0]
    lo, hi = cfg.expected_error_rate
    per_task = err_table[(err_table.source == "all") & (err_table.task != "all")]
    outside = [f"{r.task} {r.error_rate:.0%}" for _, r in per_task.iterrows() if not lo <= r.error_rate <= hi]
    lines.append(
        f"- Greedy error rate {all_row.error_rate:.1%} over {int(all_row.n)} prompts; per task: "
        + ", ".join(f"{r.task} {r.error_rate:.0%}" for _, r in per_task.iterrows())
        + (f". Outside the target range [{lo:.0%}, {hi:.0%}]: {', '.join(outside)}." if outside else ".")
    )
    t = table[(table.task == "all") & (table.span == span) & (table.status == "ok")].sort_values(
        "auroc", ascending=False
    )
    if len(t):
        top = t.iloc[0]
        lines.append(
            f"- Best test AUROC on the {span} span: {top.label} {top.auroc:.3f} "
            f"[{top.auroc_lo:.3f}, {top.auroc_hi:.3f}]; worst: {t.iloc[-1].label} {t.iloc[-1].auroc:.3f}."
        )
        if "always_error_f1" in t:
            beat = t[t.f1_minus_always_error_lo > 0]
            lines.append(
                f"- F1 of the always-error baseline: {t.always_error_f1.iloc[0]:.3f} (base rate "
                f"{t.base_rate.iloc[0]:.3f}); detectors whose F1 beats it with a CI excluding 0: "
                f"{', '.join(beat.label) if len(beat) else 'none'}."
            )
    wt = within_task_table(table, span, cfg.claims_min_per_class)
    if len(wt) and wt.auroc_within_task_mean.notna().any():
        gap = wt.auroc_pooled - wt.auroc_within_task_mean
        worst = wt.loc[gap.idxmax()]
        lines.append(
            f"- Pooled vs within-task AUROC: the largest drop is {worst.label} ({worst.auroc_pooled:.3f} pooled, "
            f"{worst.auroc_within_task_mean:.3f} mean within task): part of a pooled AUROC can come from "
            f"recognising the task, whose error rates differ."
        )
    for c in claims:
        lines.append(
            f"- Claim *{c.claim}*: effect {c.effect:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] -> **{c.verdict}**."
        )
    if injected is not None and len(injected):
        t = injected[(injected.span == span) & (injected["mode"] == "self")]
        if len(t):
            gap = (t.injected_auroc - t.natural_auroc).mean()
            lines.append(
                f"- Injected errors: mean AUROC over non-sampling detectors {t.injected_auroc.mean():.3f} vs "
                f"{t.natural_auroc.mean():.3f} on natural errors (difference {gap:+.3f})."
            )
    if models is not None and len(models) and models.model.nunique() > 1:
        ok = models[models.status == "ok"]
        means = ok.groupby("model", sort=False).agg(auroc=("auroc", "mean"), error_rate=("error_rate", "first"))
        lines.append(
            "- Part 4, mean AUROC over detectors per model: "
            + ", ".join(f"{m} {r.auroc:.3f} (error rate {r.error_rate:.0%})" for m, r in means.iterrows())
            + "."
        )
    return "\n".join(lines)


def known_detectors() -> list[str]:
    return list(ESTIMATORS)
