"""Plan, run and evaluate the ``error_detection`` stage: everything up to the numbers.

Flow (one :class:`ModelRun` per model; the studied base model first, then the NoiseFiT exports
listed in ``error_detection.models``):

1. :func:`check_models` resolves every model directory *before* any work (a missing base model
   names the ``base_model`` stage, a missing listed model the ``noisefit`` stage);
   :func:`load_prompts` draws the prompts and the fit/test split (:mod:`.collect`).
2. :func:`run_model` computes the statistics once (:func:`collect.load_or_collect`, stored under
   ``<data_dir>/<error_detection.stats_dir>/``, default ``data/detection_stats/``), runs every configured detector on every span
   (:func:`run_detectors`: fitted detectors fit on the fit split only; fit-split scores for
   thresholds are out-of-fold), times the generation each detector needs and, for the base
   model, scores AEGIS-style injected errors (:mod:`.inject`).
3. :func:`run_correct` (when ``error_detection.correct.enabled``): step-level error localisation
   on the scratchpad task, the CORRECT schema cache against its baselines (:mod:`.steps`,
   :mod:`.correct`).
4. :class:`Results` holds the runs; :mod:`.tables`, :mod:`.claims` and :mod:`.report` read it.

Choosing "the best" detector of a group always uses the *fit* split's out-of-fold AUROC, never
the test labels (:func:`best_of`). No plotting and no W&B here.
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
from trustlab.core.parallel import SharedValue, iter_tasks
from trustlab.error_detection import metrics as M
from trustlab.error_detection.collect import DECODING_DEFAULTS, load_or_collect, select_prompts, split_prompts
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.correct import CorrectRun
from trustlab.error_detection.estimators import Estimator, build_estimator, out_of_fold_scores
from trustlab.error_detection.statistics import GenerationStats

FAMILY = "error_detection"
BASE_MODEL_STAGE = "base_model"
NOISEFIT_STAGE = "noisefit"

# detector groups for the claims and the cost table
LOGIT = ("msp", "perplexity", "mean_token_entropy", "zero_shot_z")
SINGLE_PASS_PROBABILITY = ("msp", "perplexity")
SAMPLING = ("self_consistency", "rpc")
HIDDEN = ("mahalanobis", "mahalanobis_lee", "linear_probe", "knn", "sdm_adaptation", "spc_uq")
MAHALANOBIS_AND_PROBE = ("mahalanobis", "mahalanobis_lee", "linear_probe")
SHORT = {
    "msp": "MSP", "perplexity": "Perplexity", "mean_token_entropy": "Entropy", "zero_shot_z": "Zero-shot z",
    "self_consistency": "Self-consistency", "rpc": "RPC", "mahalanobis": "Mahalanobis (1 centroid)",
    "mahalanobis_lee": "Mahalanobis (Lee)", "linear_probe": "Linear probe", "knn": "kNN",
    "sdm_adaptation": "SDM-style (adapt.)", "spc_uq": "SPC-UQ (adapt.)",
    "meta_ranking": "Meta Ranking (5 refs, learned judge)",
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


def stats_root(cfg: ErrorDetectionConfig, data_dir: str | Path | None) -> Path:
    """Where the statistics are stored (``error_detection.stats_dir`` under the data directory,
    one ``<model>.npz/.json`` pair per model): a declared pipeline output, kept between runs and
    reused while its fingerprint matches."""
    return model_path(resolve_data_dir(data_dir), cfg.stats_dir)


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
    _run_all(cfg, list(spans or cfg.spans), fit, test, out, progress)
    return out


@contextlib.contextmanager
def quiet_fit_warnings():
    """Silence scikit-learn's notice that a class is rarer than the number of CV folds (small
    fit splits; the estimators already cap the folds at the rarer class's count)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class in y has only", category=UserWarning)
        yield


def _run_all(cfg, spans, fit, test, out, progress) -> None:
    # one task per (detector, span), so the slow ones (RPC fits a mixture per prompt) spread
    # over the workers; the statistics go to each worker once, not with every task
    with SharedValue((fit, test)) as data:
        plan = [(cfg, name, span, data) for name in cfg.detectors for span in spans]
        for res in iter_tasks(_run_detector, plan, workers=cfg.workers, desc="detectors"):
            out[res.key] = res
            if progress:
                progress(f"{res.key}: {res.status}")


def _run_detector(task) -> DetectorResult:
    """One detector on one span: fit on ``fit``, score ``test`` (timed) and out-of-fold scores
    on ``fit``. Module-level and seeded by the config, so a worker process gives the same numbers."""
    cfg, name, span, data = task
    fit, test = data.get()
    kw = cfg.estimator_kwargs(name)
    res = DetectorResult(name, span)
    with quiet_fit_warnings():
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
    return res


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished child processes (worker
    pools): the difference over a stage divided by its wall time is the cores it kept busy."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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



def paired_resample_weights(cfg: ErrorDetectionConfig, n: int) -> np.ndarray:
    """(B, n) bootstrap multiplicities of the n test rows: exactly the resamples
    ``metrics.evaluate`` draws with the same seed, so every table and claim is paired."""
    return M.resample_weights(M.resample_indices(n, cfg.bootstrap_resamples, cfg.seed), n)


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
    model_dir = Path(path) if path and Path(path).is_dir() else None
    stats, reused = load_or_collect(Path(stats_dir) / name, model, tokenizer, prompts.records, prompts.split,
                                    reuse=reuse, model_dir=model_dir, model_name=name, progress=say,
                                    workers=cfg.workers, **decoding_kwargs(cfg))  # fmt: skip
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


# -- step-level localisation (CORRECT, adaptation) ------------------------------------------------------


def run_correct(
    cfg: ErrorDetectionConfig,
    model: Any,
    tokenizer: Any,
    data_dir: str | Path | None,
    *,
    progress: Callable[[str], None] | None = None,
) -> CorrectRun | None:
    """Step-level error localisation on the scratchpad task (``error_detection.correct``; None
    when disabled): the model's greedy trajectories on the fit and test prompts, AEGIS-style
    injected step errors on the test prompts (teacher-forced), every configured localiser fitted
    on the fit split and run over the test streams. Cheap enough (a few seconds at the defaults)
    to compute in the stage rather than store."""
    from trustlab.error_detection import steps as S
    from trustlab.error_detection.correct import evaluate_localisers

    c = cfg.correct
    if not c.enabled:
        return None
    say = progress or (lambda m: None)
    gen = resolve_data_dir(data_dir) / "generated"
    t0 = time.perf_counter()
    records, split = S.draw_records(gen, c.fit_split, c.test_split, c.n_fit, c.n_test, cfg.seed)
    natural = S.collect_trajectories(model, tokenizer, records, split, max_new_tokens=c.max_new_tokens,
                                     batch_size=cfg.batch_size)  # fmt: skip
    generation_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    injected = None
    if c.n_injected:
        injections = S.make_step_injections(natural, {str(r["id"]): r for r in records}, c.n_injected, cfg.seed)
        injected = S.score_injections(model, tokenizer, injections, batch_size=cfg.batch_size) if injections else None
    injection_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = evaluate_localisers(natural, injected, c.localisers, c.localiser_params, c.growth_checkpoints)
    out.timing.update(generation_s=generation_s, injection_s=injection_s, localisers_s=time.perf_counter() - t0,
                      n_natural_test=int((natural.split == "test").sum()),
                      n_injected=injected.n if injected is not None else 0)  # fmt: skip
    say(f"correct: {natural.n} trajectories in {generation_s:.1f} s, injected in {injection_s:.1f} s, "
        f"localisers in {out.timing['localisers_s']:.1f} s")
    return out


@dataclass
class Results:
    """Every model's run, the base model first: what tables, claims and the report read."""

    cfg: ErrorDetectionConfig
    runs: list[ModelRun]
    model_dirs: dict[str, Path | str] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)  # stage wall and CPU seconds (timing.json)
    correct: CorrectRun | None = None  # step-level localisation (error_detection.correct)

    @property
    def base(self) -> ModelRun:
        return self.runs[0]

