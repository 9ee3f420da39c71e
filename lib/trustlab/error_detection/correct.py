"""Step-level error localisation: where did a trajectory first go wrong? CORRECT and its baselines.

CORRECT (Yu et al. 2025, "COndensed eRror RECognition via knowledge Transfer in multi-agent
systems", arXiv:2509.24088) localises the first wrong step of a failed multi-step trajectory
without training: diagnosed failures are condensed into *error schemata* kept in an online
cache, a new trajectory is matched against the cached schemata, and the cache grows as new
failures are diagnosed. The paper's schemata are LLM-written summaries read by an LLM judge;
here (an **adaptation**) a schema is a vector of the model's own token statistics at the first
wrong step, retrieved by nearest neighbours (docs/methods/error_detection.md, "CORRECT").

Every localiser is one class registered in :data:`LOCALISERS` (``@localiser("name")``). It maps
each trajectory to a per-step score (higher = more likely the first wrong step) and decides

    j* = min{ j : s_j > tau }   if some step exceeds tau,   else   argmax_j s_j

with ``tau`` fitted on the fit split where the localiser has one (the fitted value maximises the
fit split's exact-step accuracy over every observed score, ties to the lowest; ``tau = +inf``
is the plain argmax). Separation of fit and test follows the detectors' rules: ``fit`` refuses
rows whose split is not ``fit``; ``localise`` sees the trajectories with their labels hidden and
refuses rows the localiser was fitted on (``in_sample=True`` says so explicitly); only
``observe`` (the diagnosis of a trajectory already localised) reveals a label, and only the
schema cache uses it.

Localisers: ``first_low_prob`` (the first step whose min token probability is below a fitted
threshold), ``max_entropy`` (the step with the highest token entropy), ``position_prior`` (the
fit split's most frequent first-wrong position: what the position alone gives, a reference)
and ``correct_schema_cache`` (the adaptation of CORRECT).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from trustlab.core.registry import Registry
from trustlab.error_detection.statistics import check_disjoint
from trustlab.error_detection.steps import STEP_STATS, StepTrajectories

__all__ = [
    "LOCALISERS",
    "localiser",
    "Localiser",
    "FirstLowProb",
    "MaxEntropy",
    "PositionPrior",
    "SchemaCache",
    "build_localiser",
    "decide",
    "fit_threshold",
    "signature",
    "localise_stream",
    "cache_growth",
    "hits",
    "stream_hits",
    "CorrectRun",
    "evaluate_localisers",
    "choose_baseline",
    "BASELINES",
    "METHOD",
]

LOCALISERS: Registry[type[Localiser]] = Registry("step localiser")
METHOD = "correct_schema_cache"
BASELINES = ("first_low_prob", "max_entropy")  # the no-cache baselines the claim compares with
SURPRISAL_FLOOR = 1e-4  # signature coordinates are log(floor + surprisal): tokens within 1e-4 of certain read alike


def localiser(name: str):
    """Class decorator: register a step localiser under ``name``."""

    def register(cls: type[Localiser]) -> type[Localiser]:
        cls.name = name
        return LOCALISERS.register(name)(cls)

    return register


def build_localiser(name: str, **kwargs: Any) -> Localiser:
    """A registered localiser; an unknown name or keyword argument raises ``ConfigError``."""
    return LOCALISERS.build(name, **kwargs)


# -- the decision rule ------------------------------------------------------------------------------


def decide(scores: np.ndarray, offsets: np.ndarray, tau: float = np.inf) -> np.ndarray:
    """Per trajectory: the earliest step with score > tau, else the highest-scoring step (the
    first of tied maxima); -1 for a trajectory without steps."""
    scores = np.asarray(scores, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    out = np.full(n, -1, dtype=np.int64)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    if not len(nonempty):
        return out
    starts = offsets[nonempty]
    local = np.arange(offsets[-1]) - np.repeat(offsets[:-1], np.diff(offsets))
    big = np.iinfo(np.int64).max
    first_above = np.minimum.reduceat(np.where(scores > tau, local, big), starts)
    best = np.maximum.reduceat(scores, starts)  # every step row belongs to a non-empty trajectory
    at_best = scores >= np.repeat(best, np.diff(offsets)[nonempty])
    argmax = np.minimum.reduceat(np.where(at_best, local, big), starts)
    out[nonempty] = np.where(first_above < big, first_above, argmax)
    return out


def fit_threshold(scores: np.ndarray, trajs: StepTrajectories) -> tuple[float, float]:
    """``(tau, accuracy)``: the threshold maximising exact-step accuracy on the localisable
    trajectories of ``trajs`` (labels read), over every observed score and +inf (the argmax);
    ties go to the lowest threshold."""
    keep = trajs.localisable
    if not keep.any():
        raise ValueError("no localisable trajectory (a written first wrong step) to fit a threshold on")
    truth = trajs.labels()
    candidates = np.unique(np.r_[np.asarray(scores, float), np.inf])
    best_tau, best_acc = np.inf, -1.0
    for tau in candidates:
        acc = float(np.mean(decide(scores, trajs.offsets, tau)[keep] == truth[keep]))
        if acc > best_acc + 1e-12:
            best_tau, best_acc = float(tau), acc
    return best_tau, best_acc


def signature(stats: np.ndarray) -> np.ndarray:
    """(S, len(STEP_STATS)) step statistics -> the raw signature: surprisals (-log p) as
    log(floor + surprisal), entropies as log(floor + H), so certain and uncertain tokens spread alike."""
    x = np.asarray(stats, dtype=np.float64)
    is_logprob = np.array([name.endswith("logprob") for name in STEP_STATS])
    mag = np.where(is_logprob, -x, x)
    return np.log(SURPRISAL_FLOOR + np.maximum(mag, 0.0))


# -- localisers ---------------------------------------------------------------------------------------


class Localiser:
    """Base class: ``_step_scores`` (one score per step row, higher = more likely the first wrong
    step; subclasses implement it), the decision rule :func:`decide` with ``tau_`` and the
    fit/test separation."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    fits_threshold: ClassVar[bool] = False
    online: ClassVar[bool] = False

    def __init__(self) -> None:
        self.tau_: float = np.inf
        self.fit_accuracy_: float = float("nan")
        self.fit_ids_: set[str] | None = None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in inspect.signature(type(self).__init__).parameters
                           if k != "self")  # fmt: skip
        return f"{type(self).__name__}({params})"

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, trajs: StepTrajectories) -> Localiser:
        """Fit on fit-split trajectories only (labels read): the localiser's own state, then
        ``tau_`` on honest fit-split scores (:meth:`fit_scores`)."""
        bad = trajs.split != "fit"
        if bad.any():
            shown = ", ".join(map(repr, trajs.ids[bad][:5].tolist()))
            raise ValueError(f"{self.name}.fit() got {int(bad.sum())} trajectories whose split is not 'fit' "
                             f"(e.g. {shown}): fit only on trajectories.select('fit')")  # fmt: skip
        if not trajs.localisable.any():
            raise ValueError(f"{self.name}.fit() needs at least one fit trajectory with a written wrong step, "
                             f"got none of {trajs.n}")  # fmt: skip
        self._fit(trajs)
        self.fit_ids_ = set(trajs.ids.tolist())
        scores = self.fit_scores(trajs)
        if self.fits_threshold:
            self.tau_, self.fit_accuracy_ = fit_threshold(scores, trajs)
        else:
            keep = trajs.localisable
            pred = decide(scores, trajs.offsets, self.tau_)
            self.fit_accuracy_ = float(np.mean(pred[keep] == trajs.labels()[keep]))
        return self

    def _fit(self, trajs: StepTrajectories) -> None:
        """The localiser's own state from the fit split (none by default)."""

    def fit_scores(self, trajs: StepTrajectories) -> np.ndarray:
        """Scores of the fit trajectories for choosing ``tau_`` (and the baseline). The baselines
        learn nothing but the threshold, so their scores need no held-out fold; the schema cache's
        are leave-one-trajectory-out because retrieval never returns the query's own entries."""
        return self._step_scores(trajs.without_labels())

    # -- localising --------------------------------------------------------------------------------
    def localise(self, trajs: StepTrajectories, *, in_sample: bool = False) -> np.ndarray:
        """The predicted first wrong step of every trajectory (labels hidden; -1 when it has no step)."""
        if self.fit_ids_ is None:
            raise RuntimeError(f"{self.name}: call fit(fit_trajectories) before localise()")
        if not in_sample:
            check_disjoint(self.fit_ids_, trajs.ids.tolist(),
                           what="trajectory ids (localising trajectories this localiser was fitted on)")  # fmt: skip
        scores = np.asarray(self._step_scores(trajs.without_labels()), dtype=np.float64)
        if scores.shape != (int(trajs.offsets[-1]),):
            raise RuntimeError(f"{self.name} returned {scores.shape} step scores, expected ({trajs.offsets[-1]},)")
        return decide(scores, trajs.offsets, self.tau_)

    def _step_scores(self, trajs: StepTrajectories) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def observe(self, trajs: StepTrajectories) -> None:
        """The diagnosis of trajectories already localised (their labels revealed): no-op unless online."""

    @property
    def cache_size(self) -> int:
        """Error schemata held (0 without a cache)."""
        return 0

    @property
    def cache_entries(self) -> int:
        """Cached vectors each step is compared with (0 without a cache): the retrieval cost."""
        return 0


@localiser("first_low_prob")
class FirstLowProb(Localiser):
    """First low probability: j* = min{ j : min_t p(y_t) in step j < p_min }, else argmin_j of it; p_min fitted."""

    label = "First low-probability step"
    fits_threshold = True

    def _step_scores(self, trajs: StepTrajectories) -> np.ndarray:
        return -trajs.stats[:, STEP_STATS.index("min_logprob")]  # surprisal: > tau  <=>  p_min < exp(-tau)

    @property
    def p_min(self) -> float:
        return float(np.exp(-self.tau_))


@localiser("max_entropy")
class MaxEntropy(Localiser):
    """Max entropy: j* = argmax_j max_{t in step j} H_t."""

    label = "Max-entropy step"

    def _step_scores(self, trajs: StepTrajectories) -> np.ndarray:
        return trajs.stats[:, STEP_STATS.index("max_entropy")].copy()


@localiser("position_prior")
class PositionPrior(Localiser):
    """Position prior: j* = the step index most often first-wrong on the fit split (reads no statistics)."""

    label = "Position prior (reference)"

    def _fit(self, trajs: StepTrajectories) -> None:
        fw = trajs.labels()[trajs.localisable]
        self.counts_ = np.bincount(fw, minlength=int(trajs.n_steps.max(initial=1)))

    def _step_scores(self, trajs: StepTrajectories) -> np.ndarray:
        idx = trajs.step_index
        counts = np.r_[self.counts_, np.zeros(max(0, int(idx.max(initial=0)) + 1 - len(self.counts_)))]
        return counts[idx].astype(np.float64)


@localiser(METHOD)
class SchemaCache(Localiser):
    """CORRECT schema cache (adapt.): s_j = log(eps + dbar_k(v_j, R)) - log(eps + dbar_k(v_j, W)), first s_j > tau.

    A schema is distilled from each diagnosed failure: the first wrong step's kind (carry-in x
    overflow, :data:`STEP_KINDS`), its standardised signature z (``signature`` of its statistics,
    standardised by the fit split's step mean and SD), the mean signature of the steps before it
    (``prefix``) and its column index. The cache holds the schemata ``W`` and the right steps
    seen before each first wrong step (and every step of trajectories without a wrong step),
    ``R``. A step is the vector

        v_j = [ z_j,  prefix_weight * mean_{i<j} z_i,  column_weight * column_j ]

    and ``dbar_k(v, C)`` the mean Euclidean distance from v to its k nearest entries of C of
    the *same step kind* (all kinds when either cache has fewer than k of that kind). A step
    close to past failures and far from right steps scores high. ``eps = 1e-6``. Fit-split
    scores (for tau) are leave-one-trajectory-out: a trajectory's own entries are never its
    neighbours. :meth:`observe` adds each diagnosed trajectory to the cache (one schema per
    failure), so the cache grows online over the test stream.
    """

    label = "CORRECT schema cache (adapt.)"
    fits_threshold = True
    online = True
    EPS = 1e-6

    def __init__(self, k: int = 5, prefix_weight: float = 0.0, column_weight: float = 0.0):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k = {k!r} is out of range: an integer >= 1 (neighbours retrieved per cache)")
        for key, v in (("prefix_weight", prefix_weight), ("column_weight", column_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{key} = {v!r} is out of range: a number >= 0 (0 leaves that part out)")
        self.k = k
        self.prefix_weight = float(prefix_weight)
        self.column_weight = float(column_weight)

    # -- vectors -------------------------------------------------------------------------------------
    def _vectors(self, trajs: StepTrajectories) -> np.ndarray:
        z = (signature(trajs.stats) - self.mu_) / self.sd_
        before = np.zeros_like(z)
        for i in range(trajs.n):
            rows = z[trajs.steps_of(i)]
            if len(rows) > 1:
                before[trajs.offsets[i] + 1 : trajs.offsets[i + 1]] = np.cumsum(rows, 0)[:-1] / np.arange(
                    1, len(rows))[:, None]  # fmt: skip
        column = trajs.operation[:, 0:1].astype(np.float64)
        return np.hstack([z, self.prefix_weight * before, self.column_weight * column])

    def _fit(self, trajs: StepTrajectories) -> None:
        sig = signature(trajs.stats)
        self.mu_ = sig.mean(0)
        self.sd_ = np.where(sig.std(0) > 1e-12, sig.std(0), 1.0)
        d = len(STEP_STATS) * 2 + 1
        self.W_, self.R_ = np.zeros((0, d)), np.zeros((0, d))
        self.W_kind_, self.R_kind_ = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.W_owner_, self.R_owner_ = np.zeros(0, dtype=str), np.zeros(0, dtype=str)
        self._add(trajs)

    def _add(self, trajs: StepTrajectories) -> None:
        """Distil labelled trajectories into the cache: one schema per written first wrong step,
        the right steps before it (all steps when none is wrong) as right entries."""
        v, kind, owner = self._vectors(trajs), trajs.kind, trajs.ids[trajs.step_trajectory]
        fw = trajs.labels()[trajs.step_trajectory]
        pos = trajs.step_index
        wrong = (fw >= 0) & (pos == fw)
        right = (fw < 0) | (pos < fw)
        self.W_, self.W_kind_, self.W_owner_ = (np.vstack([self.W_, v[wrong]]), np.r_[self.W_kind_, kind[wrong]],
                                                np.r_[self.W_owner_, owner[wrong]])  # fmt: skip
        self.R_, self.R_kind_, self.R_owner_ = (np.vstack([self.R_, v[right]]), np.r_[self.R_kind_, kind[right]],
                                                np.r_[self.R_owner_, owner[right]])  # fmt: skip

    def observe(self, trajs: StepTrajectories) -> None:
        if self.fit_ids_ is None:
            raise RuntimeError(f"{self.name}: call fit(fit_trajectories) before observe()")
        self._add(trajs)

    @property
    def cache_size(self) -> int:
        """Schemata in the cache (one per diagnosed failure)."""
        return int(len(self.W_)) if hasattr(self, "W_") else 0

    @property
    def cache_entries(self) -> int:
        return int(len(self.W_) + len(self.R_)) if hasattr(self, "W_") else 0

    # -- retrieval -----------------------------------------------------------------------------------
    def _mean_knn(self, v: np.ndarray, kind: np.ndarray, owner: np.ndarray, C: np.ndarray, C_kind: np.ndarray,
                  C_owner: np.ndarray, same_kind: np.ndarray) -> np.ndarray:  # fmt: skip
        """Mean distance to the k nearest cache entries (same kind where ``same_kind``; never the
        query's own trajectory)."""
        if not len(C):
            return np.full(len(v), np.inf)
        sq = (v**2).sum(1)[:, None] + (C**2).sum(1)[None, :] - 2.0 * v @ C.T
        D = np.sqrt(np.maximum(sq, 0.0))
        D[owner[:, None] == C_owner[None, :]] = np.inf
        D[same_kind[:, None] & (kind[:, None] != C_kind[None, :])] = np.inf
        k = min(self.k, D.shape[1])
        near = np.partition(D, k - 1, axis=1)[:, :k]
        finite = np.isfinite(near)
        return np.where(finite.any(1), np.where(finite, near, 0.0).sum(1) / np.maximum(finite.sum(1), 1), np.inf)

    def _retrieval(self, v: np.ndarray, kind: np.ndarray, owner: np.ndarray) -> np.ndarray:
        own_w = owner[:, None] == self.W_owner_[None, :]
        own_r = owner[:, None] == self.R_owner_[None, :]
        n_w = ((kind[:, None] == self.W_kind_[None, :]) & ~own_w).sum(1)
        n_r = ((kind[:, None] == self.R_kind_[None, :]) & ~own_r).sum(1)
        same = (n_w >= self.k) & (n_r >= self.k)  # back off to every kind when a kind is rare
        dw = self._mean_knn(v, kind, owner, self.W_, self.W_kind_, self.W_owner_, same)
        dr = self._mean_knn(v, kind, owner, self.R_, self.R_kind_, self.R_owner_, same)
        with np.errstate(invalid="ignore"):
            score = np.log(self.EPS + dr) - np.log(self.EPS + dw)
        return np.where(np.isnan(score), -np.inf, score)  # nothing retrievable on either side: never chosen first

    def _step_scores(self, trajs: StepTrajectories) -> np.ndarray:
        # labels are hidden here; a trajectory not yet in the cache shares no entries with it
        owner = trajs.ids[trajs.step_trajectory]
        return self._retrieval(self._vectors(trajs), trajs.kind, owner)

    def localise(self, trajs: StepTrajectories, *, in_sample: bool = False) -> np.ndarray:
        if self.fit_ids_ is not None and not in_sample:
            cached = set(self.W_owner_.tolist()) | set(self.R_owner_.tolist())
            check_disjoint(cached, trajs.ids.tolist(),
                           what="trajectory ids (localising trajectories already diagnosed into the cache)")
        return super().localise(trajs, in_sample=in_sample)


# -- streams and growth ---------------------------------------------------------------------------------


def localise_stream(loc: Localiser, trajs: StepTrajectories) -> np.ndarray:
    """Localise the trajectories one at a time in order; after each, its diagnosis is revealed to
    the localiser (``observe``), so an online cache has grown by every earlier trajectory.
    ``loc`` is copied: the fitted localiser is left as it was."""
    loc = copy.deepcopy(loc)
    if not loc.online:
        return loc.localise(trajs)
    out = np.empty(trajs.n, dtype=np.int64)
    for i in range(trajs.n):
        one = trajs.subset([i])
        out[i] = loc.localise(one)[0]
        loc.observe(one)
    return out


def hits(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact, within one step) per trajectory, as floats."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    return (pred == truth).astype(np.float64), (np.abs(pred - truth) <= 1).astype(np.float64)


def stream_hits(run: CorrectRun, name: str, which: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(exact, within one) of localiser ``name`` on the localisable trajectories of stream
    ``which`` (``natural`` | ``injected``), in stream order; None when it did not run there."""
    s, pred = run.stream(which), run.predictions.get(name, {}).get(which)
    if s is None or pred is None:
        return None
    keep = s.localisable
    return hits(pred[keep], s.labels()[keep])


def cache_growth(
    fitted: Mapping[str, Localiser], stream: StepTrajectories, checkpoints: Sequence[int]
) -> list[dict[str, Any]]:
    """For each checkpoint c: every online localiser's cache holds the fit split plus the first c
    trajectories of ``stream`` (diagnosed); every localiser (online or not) then localises the
    rest of the stream with that cache *frozen*; exact and within-one accuracy on its localisable
    trajectories. Checkpoints past the stream's end are skipped."""
    rows = []
    for c in sorted(set(int(x) for x in checkpoints)):
        if c >= stream.n:
            continue
        head, tail = stream.subset(np.arange(c)), stream.subset(np.arange(c, stream.n))
        keep = tail.localisable
        for name, loc in fitted.items():
            loc = copy.deepcopy(loc)
            if loc.online and c:
                loc.observe(head)
            exact, within = hits(loc.localise(tail)[keep], tail.labels()[keep])
            rows.append({"added": c, "localiser": name, "label": loc.label, "online": loc.online,
                         "n_evaluated": int(keep.sum()), "cache_schemata": loc.cache_size,
                         "exact": float(exact.mean()) if len(exact) else float("nan"),
                         "within_one": float(within.mean()) if len(within) else float("nan")})  # fmt: skip
    return rows


# -- the whole evaluation -------------------------------------------------------------------------------


@dataclass
class CorrectRun:
    """Everything the tables, figure and claim read: trajectories, fitted localisers, predictions."""

    natural: StepTrajectories  # fit + test, the model's greedy trajectories
    injected: StepTrajectories | None  # test-side injected trajectories (ground truth = injected step)
    localisers: dict[str, Localiser]  # fitted on the natural fit split (before any test item)
    predictions: dict[str, dict[str, np.ndarray]]  # localiser -> {"natural": (n_test,), "injected": (n_inj,)}
    growth: list[dict[str, Any]]
    baseline: str | None  # the better of BASELINES on the fit split
    status: dict[str, str] = field(default_factory=dict)  # localiser -> "ok" | "not applicable: <why>"
    counts: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def stream(self, which: str) -> StepTrajectories | None:
        """The test trajectories of one stream: ``natural`` (greedy) or ``injected``."""
        return self.natural.select("test") if which == "natural" else self.injected


def choose_baseline(fitted: Mapping[str, Localiser]) -> str | None:
    """The baseline with the higher fit-split exact-step accuracy (first listed on a tie)."""
    cands = [(fitted[b].fit_accuracy_, -i, b) for i, b in enumerate(BASELINES) if b in fitted]
    cands = [c for c in cands if np.isfinite(c[0])]
    return max(cands)[2] if cands else None


def evaluate_localisers(
    natural: StepTrajectories,
    injected: StepTrajectories | None,
    names: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    checkpoints: Sequence[int] = (),
) -> CorrectRun:
    """Fit every localiser on the natural fit split, localise the natural test stream and the
    injected stream (online localisers grow over each stream separately, each starting from the
    fit-split cache) and the cache-growth curve on the natural stream. A localiser that cannot
    be fitted (no written wrong step in the fit split) is kept with its reason."""
    import time

    params = params or {}
    fit = natural.select("fit")
    fitted, status, timing = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            fitted[name] = build_localiser(name, **dict(params.get(name, {}))).fit(fit)
            status[name] = "ok"
        except ValueError as exc:
            status[name] = f"not applicable: {exc}"
        timing[f"{name}/fit_s"] = time.perf_counter() - t0
    preds: dict[str, dict[str, np.ndarray]] = {}
    streams = {"natural": natural.select("test"), "injected": injected}
    for name, loc in fitted.items():
        preds[name] = {}
        for which, s in streams.items():
            if s is None or not s.n:
                continue
            t0 = time.perf_counter()
            preds[name][which] = localise_stream(loc, s)
            timing[f"{name}/{which}_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    growth = cache_growth(fitted, streams["natural"], checkpoints) if checkpoints else []
    timing["growth_s"] = time.perf_counter() - t0
    counts = {"natural_fit": fit.summary(), "natural_test": streams["natural"].summary(),
              "injected": injected.summary() if injected is not None else None}  # fmt: skip
    if injected is not None and injected.n:
        kinds = [v["kind"] for v in injected.meta.get("injection", {}).values()]
        counts["injection_kinds"] = {k: kinds.count(k) for k in sorted(set(kinds))}
    return CorrectRun(natural, injected, fitted, preds, growth, choose_baseline(fitted), status, counts, timing)
