"""The ``error_detection:`` section of ``params.yaml``.

Detector names and per-detector parameters are checked against the estimator registry
(:data:`trustlab.error_detection.estimators.DETECTORS`, a registry) and task names / data splits against
:mod:`trustlab.data.tasks` when the config is loaded, before any generation starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trustlab.core.config import ConfigError, Section
from trustlab.data.tasks import CHECKED_TASKS, task_splits
from trustlab.error_detection.statistics import SPANS

__all__ = ["ErrorDetectionConfig", "CorrectConfig", "DEFAULT_TASKS", "DEFAULT_SOURCES", "DEFAULT_LOCALISERS"]

# prompts per task (0 = skip the task); one task per ReaLMistake error category
DEFAULT_TASKS = {"arithmetic": 400, "world_qa": 400, "instructions": 300, "context_copy": 300}
# which data splits the prompts are drawn from: held-out material where the base model is right
# on some items and wrong on others (arithmetic's ood split and world_qa's new_facts people are
# wrong by construction, so they would only dilute the right/wrong contrast detectors need)
DEFAULT_SOURCES = {
    "arithmetic": ["test"],
    "world_qa": ["qa_heldout", "nonexistent_test"],
    "instructions": ["test"],
    "context_copy": ["test"],
}


def _all_detectors() -> list[str]:
    from trustlab.error_detection.estimators import estimator_names

    return estimator_names()


def _check_detector(name: str, params: dict[str, Any], where: str) -> None:
    """The registry's check of a detector name and its keyword arguments, the message prefixed
    with the params key it came from."""
    from trustlab.error_detection.estimators import DETECTORS

    try:
        DETECTORS.check(name, params, where=where, skip=("span",))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


# step localisers (trustlab.error_detection.correct.LOCALISERS): the two no-cache baselines, the position
# prior as a reference and the CORRECT schema cache
DEFAULT_LOCALISERS = ["first_low_prob", "max_entropy", "position_prior", "correct_schema_cache"]


@dataclass(frozen=True)
class CorrectConfig(Section):
    """``error_detection.correct``: step-level error localisation on the scratchpad task (CORRECT,
    an adaptation; trustlab.error_detection.correct)."""

    SECTION = "error_detection.correct"
    enabled: bool = True
    fit_split: str = "train"  # scratchpad split of the fit part (cache + thresholds)
    test_split: str = "test"  # scratchpad split of the test part (the stream the cache grows over)
    n_fit: int = 300
    n_test: int = 300
    n_injected: int = 300  # injected step errors, drawn from the test part (0: none)
    max_new_tokens: int = 40  # the longest scratchpad answer (3-digit operands) is 34 tokens with <eos>
    localisers: list[str] = field(default_factory=lambda: list(DEFAULT_LOCALISERS))
    # the schema cache's defaults, spelled out so they are reported
    localiser_params: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"correct_schema_cache": {"k": 5, "prefix_weight": 0.0, "column_weight": 0.0}})
    growth_checkpoints: list[int] = field(default_factory=lambda: [0, 25, 50, 100, 150, 200])

    def validate(self) -> None:
        from trustlab.error_detection.correct import LOCALISERS, build_localiser

        splits = task_splits("scratchpad")
        self.check_choice("fit_split", splits)
        self.check_choice("test_split", splits)
        self.check_range("n_fit", 1, None)
        self.check_range("n_test", 1, None)
        self.check_range("n_injected", 0, self.n_test)
        self.check_range("max_new_tokens", 1, None)
        self.check_subset("localisers", LOCALISERS.names())
        if len(set(self.localisers)) != len(self.localisers):
            self.fail("localisers", "distinct localiser names")
        for name, params in self.localiser_params.items():
            where = f"{self._path()}.localiser_params.{name}"
            try:
                LOCALISERS.check(name, params, where=where)
                build_localiser(name, **dict(params))
            except ConfigError as exc:
                msg = str(exc)
                raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
        points = list(self.growth_checkpoints)
        if any(not 0 <= c < self.n_test for c in points):
            self.fail("growth_checkpoints", f"counts c with 0 <= c < n_test = {self.n_test} (each checkpoint must "
                                            "leave test trajectories to localise)")
        if any(b <= a for a, b in zip(points, points[1:])):
            self.fail("growth_checkpoints", "strictly increasing counts of test trajectories added to the cache")

    def localiser_kwargs(self, name: str) -> dict[str, Any]:
        return dict(self.localiser_params.get(name, {}))


@dataclass(frozen=True)
class ErrorDetectionConfig(Section):
    """Error detection on a small GPT's responses: data, decoding, detectors and evaluation."""

    SECTION = "error_detection"
    seed: int = 0
    # models (paths relative to the data directory, or absolute)
    model: str = "models/base"  # the model whose responses are studied (parts 2-3)
    # further models to compare (part 4): the noisefit stage exports <data_dir>/models/noisefit/<variant>/
    models: list[str] = field(default_factory=lambda: ["models/noisefit/sft", "models/noisefit/noisefit_largest"])
    # prompts
    tasks: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TASKS))
    sources: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_SOURCES.items()})
    fit_fraction: float = 0.5  # per task, a pure function of (prompt id, seed); see assign_splits
    expected_error_rate: list[float] = field(default_factory=lambda: [0.3, 0.6])  # flagged if outside
    # decoding: greedy response + k_samples samples per prompt
    k_samples: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 32
    batch_size: int = 64
    threads: int | None = 1  # torch threads (None: trustlab.core.seeding.set_threads default, all cores up to 8)
    workers: int = 0  # processes for the detector runs (0 = all cores, 1 = serial in this process)
    reuse_stats: bool = True  # reuse stored statistics computed from the same model files, prompts, decoding and code
    # where the statistics are stored: relative to the data directory (or absolute), one subfolder per model
    stats_dir: str = "detection_stats"
    # detectors
    detectors: list[str] = field(default_factory=_all_detectors)
    spans: list[str] = field(default_factory=lambda: list(SPANS))
    detector_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {rpc: {prune: false}}
    # evaluation
    bootstrap_resamples: int = 1000
    ci_level: float = 0.95
    per_task: bool = True  # metrics per task as well as overall
    per_layer: list[str] = field(default_factory=lambda: ["linear_probe", "mahalanobis_lee"])  # layer figure
    # claims: AUROC averaged over tasks (each with >= claims_min_per_class wrong and right test
    # responses) or pooled over all test rows
    claims_aggregate: str = "task_mean"
    claims_min_per_class: int = 5
    # step-level error localisation on the scratchpad task (CORRECT, adaptation)
    correct: CorrectConfig = field(default_factory=CorrectConfig)

    def validate(self) -> None:
        from trustlab.error_detection.estimators import build_estimator

        self.check_range("seed", 0, None)
        if not self.model:
            self.fail("model", "a model directory (relative to the data directory, or absolute)")
        if len(set(self.models)) != len(self.models):
            self.fail("models", "distinct model directories")
        # tasks and sources
        self.check_subset("tasks", CHECKED_TASKS, nonempty=True)
        for task, count in self.tasks.items():
            if count < 0:
                raise ConfigError(
                    f"{self._path()}.tasks.{task} = {count!r} is out of range: allowed 0 <= count (0 skips the task)"
                )
        if not any(c > 0 for c in self.tasks.values()):
            self.fail("tasks", "at least one task with a positive prompt count")
        self.check_subset("sources", CHECKED_TASKS, nonempty=False)
        for task, count in self.tasks.items():
            if count == 0:
                continue
            if not self.sources.get(task):
                raise ConfigError(
                    f"{self._path()}.sources.{task} is missing: give the data splits to draw {task!r} prompts from "
                    f"(one or more of {', '.join(map(repr, task_splits(task)))})"
                )
        for task, splits in self.sources.items():
            dup = sorted({s for s in splits if splits.count(s) > 1})
            if dup:
                raise ConfigError(
                    f"{self._path()}.sources.{task} = {splits!r} lists {', '.join(map(repr, dup))} more than once: "
                    "each split may appear once (a prompt must not be drawn twice)"
                )
            allowed = task_splits(task)
            bad = [s for s in splits if s not in allowed]
            if bad:
                raise ConfigError(
                    f"{self._path()}.sources.{task} = {splits!r}: unknown split {', '.join(map(repr, bad))}; "
                    f"allowed values are {', '.join(map(repr, allowed))}"
                )
        self.check_range("fit_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        rate = self.expected_error_rate
        if len(rate) != 2 or not 0 <= rate[0] <= rate[1] <= 1:
            self.fail("expected_error_rate", "[low, high] with 0 <= low <= high <= 1")
        # decoding
        if self.k_samples < 2:
            raise ConfigError(
                f"{self._path()}.k_samples = {self.k_samples!r} is out of range: allowed 2 <= k_samples "
                "(K >= 2 samples per prompt; self-consistency and RPC compare samples; docs/methods/error_detection.md recommends K >= 16)"
            )
        self.check_range("temperature", 0.0, None, lo_open=True)
        self.check_range("top_p", 0.0, 1.0, lo_open=True)
        self.check_range("top_k", 1, None)
        self.check_range("max_new_tokens", 1, None)
        self.check_range("batch_size", 1, None)
        self.check_range("threads", 1, 64)
        self.check_range("workers", 0, 64)
        if not self.stats_dir:
            self.fail("stats_dir", "a folder (relative to the data directory, or absolute)")
        # detectors: names and keyword arguments are checked by the registry, values by building one
        for name in self.detectors:
            _check_detector(name, {}, f"{self._path()}.detectors")
        if len(set(self.detectors)) != len(self.detectors):
            self.fail("detectors", "distinct detector names")
        self.check_subset("spans", SPANS)
        for name, params in self.detector_params.items():
            where = f"{self._path()}.detector_params.{name}"
            _check_detector(name, params, where)
            try:
                build_estimator(name, **dict(params))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
        from trustlab.error_detection.estimators import layered_detectors

        self.check_subset("per_layer", layered_detectors(), nonempty=False)
        # evaluation
        self.check_range("bootstrap_resamples", 0, None)
        self.check_range("ci_level", 0.5, 1.0, hi_open=True)
        self.check_choice("claims_aggregate", ["task_mean", "pooled"])
        self.check_range("claims_min_per_class", 1, None)

    def estimator_kwargs(self, name: str) -> dict[str, Any]:
        """The configured keyword arguments of one detector (empty if none)."""
        return dict(self.detector_params.get(name, {}))

    def active_tasks(self) -> list[str]:
        return [t for t, c in self.tasks.items() if c > 0]
