"""Per-generation statistics, computed once from the language model and stored on disk.

:class:`GenerationStats` holds, for N prompts, everything every detector needs: the greedy
response and its per-token statistics, K sampled responses, and hidden states pooled over the
answer span and over the whole response. Detectors (:mod:`trustlab.error_detection.estimators`)
only ever read this object, so a detector never touches the model.

Conventions (the model-side code that fills the object must follow them)
-----------------------------------------------------------------------
- One row = one prompt = one greedy response. ``ids`` are unique prompt ids (the data
  record's ``id``); ``task`` is the data task name; ``split`` is ``"fit"`` (used to fit
  supervised detectors and to choose thresholds) or ``"test"`` (only scored).
- Token arrays are over the *generated* tokens of the greedy response, in order, including
  the final ``<eos>`` when one was produced (as ``trustlab.lm.generation.generate`` returns
  them): ``token_logprobs[i][t] = log p(y_t | y_<t)`` under the raw model distribution,
  ``token_entropies[i][t] = H_t = -sum_v p_v log p_v`` over the full vocabulary and
  ``token_entropy_vars[i][t] = sum_v p_v log^2 p_v - H_t^2`` (the variance of the surprisal
  ``-log p`` under p; the zero-shot z statistic needs it). All natural logs.
- ``answer_mask[i]`` (bool, same length) marks the tokens of the extracted answer. Every
  token-level detector runs on ``span="answer"`` (masked tokens) or ``span="response"`` (all
  tokens). A row whose answer mask is empty (no answer could be located) falls back to the
  whole response for ``span="answer"``; :meth:`GenerationStats.summary` counts such rows.
- ``sample_texts`` / ``sample_answers`` are (N, K) string arrays of K sampled responses and
  their extracted answers (K >= 2). Sample path log-probabilities come either per token
  (``sample_token_logprobs``, N lists of K arrays, optional ``sample_answer_masks``) or
  already reduced (``sample_mean_logprobs`` and ``sample_sum_logprobs``, (N, K)); when the
  per-token arrays are given the reductions are computed from them.
- ``hidden_answer`` / ``hidden_response`` are (N, L+1, d) arrays: layer 0 = embeddings,
  layer l = output of block l (``GPTOutput.hidden_states`` convention), each averaged over the
  answer-span tokens / over all response tokens (the state of token y_t is the one taken at
  the position whose output predicted y_t, as ``generate(return_hidden_states=...)`` does).
- ``is_error`` (bool, N) is the deterministic checker's label (True = the greedy response is
  wrong). It may be ``None`` (unlabelled). :meth:`GenerationStats.without_labels` replaces it
  by :class:`HiddenLabels`, which raises :class:`LabelAccessError` on any use: this is what
  every estimator's ``score()`` receives, so a scorer cannot read test labels.

Storage: ``save(path)`` writes ``<path>.npz`` (numbers; ragged arrays flattened with offsets)
and ``<path>.json`` (strings, shapes, metadata and the sha256 of the ``.npz``), both atomically
via :mod:`trustlab.core.io`; ``load(path)`` reads them back with ``allow_pickle=False`` and checks
that the two files belong together. The round trip is lossless (token statistics are stored
as float64, hidden states in their own dtype).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.core.io import atomic_write_bytes, read_json, sha256_file, write_json

__all__ = [
    "SPANS",
    "SPLITS",
    "FORMAT",
    "GenerationStats",
    "HiddenLabels",
    "LabelAccessError",
    "check_disjoint",
    "check_span",
    "assign_splits",
    "token_statistics",
]

SPANS = ("answer", "response")
SPLITS = ("fit", "test")
FORMAT = "trustlab.error_detection.GenerationStats"
FORMAT_VERSION = 1
_TOL = 1e-6  # slack on the sign checks (log p <= 0, H >= 0, Var >= 0)


class LabelAccessError(RuntimeError):
    """Raised when code that must not see labels (an estimator's ``score``) reads them."""


class HiddenLabels:
    """Stands in for ``is_error`` in the stats handed to ``score()``: every use raises."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = int(n)

    def _deny(self, *args: Any, **kwargs: Any) -> Any:
        raise LabelAccessError(
            "is_error is hidden here: an estimator's score() must not read labels "
            "(fit supervised detectors with fit(stats) on the fit split)"
        )

    __array__ = __getitem__ = __iter__ = __len__ = __bool__ = _deny
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _deny  # type: ignore[assignment]
    __int__ = __float__ = __index__ = __add__ = __radd__ = __sub__ = __rsub__ = _deny
    __mul__ = __rmul__ = __invert__ = __and__ = __or__ = __xor__ = _deny
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<hidden labels for {self.n} rows>"


def check_span(span: str) -> str:
    if span not in SPANS:
        raise ValueError(f"span = {span!r} is not allowed: choose one of {', '.join(map(repr, SPANS))}")
    return span


def check_disjoint(fit_ids: Iterable[Any], test_ids: Iterable[Any], *, what: str = "prompt ids") -> None:
    """Raise ``ValueError`` naming the overlapping ids if the fit and test sets share any."""
    fit = set(map(str, fit_ids))
    overlap = sorted(fit.intersection(map(str, test_ids)))
    if overlap:
        shown = ", ".join(map(repr, overlap[:10])) + (f", ... ({len(overlap) - 10} more)" if len(overlap) > 10 else "")
        raise ValueError(f"fit and test splits overlap in {len(overlap)} {what}: {shown}; they must be disjoint")


def assign_splits(ids: Sequence[str], task: Sequence[str], fit_fraction: float, seed: int) -> np.ndarray:
    """Assign each prompt to ``"fit"`` or ``"test"``, per task, as a pure function of the ids.

    Within each task the ids are ordered by ``sha256(seed, id)`` and the first
    ``round(fit_fraction * n_task)`` go to fit, so the split does not depend on row order and
    the same prompt lands on the same side for every model evaluated with the same seed.
    """
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction = {fit_fraction!r} is not allowed: 0 < fit_fraction < 1")
    ids = [str(i) for i in ids]
    task = [str(t) for t in task]
    if len(ids) != len(task):
        raise ValueError(f"ids and task have different lengths ({len(ids)} and {len(task)})")
    if len(set(ids)) != len(ids):
        dup = sorted(k for k, c in Counter(ids).items() if c > 1)
        raise ValueError(f"ids must be unique; repeated: {', '.join(map(repr, dup[:10]))}")
    out = np.empty(len(ids), dtype="<U4")
    for t in sorted(set(task)):
        rows = [i for i, tt in enumerate(task) if tt == t]
        key = [hashlib.sha256(f"{int(seed)}:{ids[i]}".encode()).hexdigest() for i in rows]
        order = [rows[j] for j in np.argsort(key, kind="stable")]
        n_fit = int(round(fit_fraction * len(rows)))
        for r, i in enumerate(order):
            out[i] = "fit" if r < n_fit else "test"
    return out


def token_statistics(logits: np.ndarray, tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference computation of the per-token statistics from logits (T, V) and chosen tokens.

    Returns ``(log p(y_t), H_t, Var_t)`` with ``H_t = -sum_v p log p`` and
    ``Var_t = sum_v p log^2 p - H_t^2`` (float64). The model side computes the same in torch.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p = np.exp(logp)
    plogp = np.where(p > 0, p * logp, 0.0)
    h = -plogp.sum(axis=-1)
    var = np.where(p > 0, p * logp**2, 0.0).sum(axis=-1) - h**2
    tokens = np.asarray(tokens, dtype=np.int64)
    return logp[np.arange(len(tokens)), tokens], h, np.maximum(var, 0.0)


# -- helpers for validation ------------------------------------------------------------


def _str_array(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x, dtype=object)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array of strings, got shape {arr.shape}")
    bad = [v for v in arr.reshape(-1) if not isinstance(v, (str, np.str_))]
    if bad:
        raise ValueError(f"{name} must hold strings only; found {bad[0]!r} ({type(bad[0]).__name__})")
    out = np.array([str(v) for v in arr.reshape(-1)], dtype=str)
    if out.size == 0:
        out = out.astype("<U1")
    return out.reshape(arr.shape)


def _ragged(x: Any, name: str, n: int, dtype: Any) -> list[np.ndarray]:
    if x is None:
        raise ValueError(f"{name} is required")
    rows = list(x)
    if len(rows) != n:
        raise ValueError(f"{name} has {len(rows)} rows, expected N = {n}")
    out = []
    for i, r in enumerate(rows):
        a = np.asarray(r)
        if a.ndim != 1:
            raise ValueError(f"{name}[{i}] must be 1-D, got shape {a.shape}")
        if dtype is bool:
            if a.size and not (a.dtype == bool or np.isin(a, (0, 1)).all()):
                raise ValueError(f"{name}[{i}] must be a 0/1 mask")
            a = a.astype(bool)
        else:
            a = a.astype(np.float64)
            if not np.isfinite(a).all():
                raise ValueError(f"{name}[{i}] has non-finite values")
        out.append(a)
    return out


def _flat(rows: Sequence[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows]) if rows else []
    flat = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if rows else np.zeros(0, dtype=dtype)
    return flat.astype(dtype, copy=False), offsets


def _unflat(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]].copy() for i in range(len(offsets) - 1)]


@dataclasses.dataclass(eq=False)
class GenerationStats:
    """Statistics of N greedy responses and their K samples (see the module docstring).

    Fields (N prompts, K samples, L blocks, hidden size d):

    ========================  =====================================  ==========================
    field                     shape / type                           meaning
    ========================  =====================================  ==========================
    ids                       (N,) str, unique                       prompt id
    task                      (N,) str                               data task
    split                     (N,) "fit" | "test"                    fit/test assignment
    response                  (N,) str                               greedy response text
    answer                    (N,) str                               answer extracted from it
    is_error                  (N,) bool | None | HiddenLabels        checker label (True = wrong)
    token_logprobs            N x (T_i,) float64                     log p(y_t)
    token_entropies           N x (T_i,) float64                     H_t (full vocabulary)
    token_entropy_vars        N x (T_i,) float64                     sum p log^2 p - H_t^2
    answer_mask               N x (T_i,) bool                        token in the answer span
    sample_texts              (N, K) str                             sampled responses
    sample_answers            (N, K) str                             their extracted answers
    sample_token_logprobs     N x K x (T_ik,) float64 | None         per-token log p of samples
    sample_answer_masks       N x K x (T_ik,) bool | None            answer span of samples
    sample_mean_logprobs      (N, K) float64                         mean_t log p (whole sample)
    sample_sum_logprobs       (N, K) float64                         sum_t log p (whole sample)
    hidden_answer             (N, L+1, d) float | None               hidden states, answer mean
    hidden_response           (N, L+1, d) float | None               hidden states, response mean
    prompt                    (N,) str | None                        prompt text
    meta                      dict (JSON-serialisable)               model, decoding settings...
    ========================  =====================================  ==========================
    """

    ids: Any
    task: Any
    split: Any
    response: Any
    answer: Any
    is_error: Any
    token_logprobs: Any
    token_entropies: Any
    token_entropy_vars: Any
    answer_mask: Any
    sample_texts: Any
    sample_answers: Any
    sample_token_logprobs: Any = None
    sample_answer_masks: Any = None
    sample_mean_logprobs: Any = None
    sample_sum_logprobs: Any = None
    hidden_answer: Any = None
    hidden_response: Any = None
    prompt: Any = None
    meta: dict = dataclasses.field(default_factory=dict)

    # -- validation ------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.ids = _str_array(self.ids, "ids", 1)
        n = len(self.ids)
        if len(set(self.ids.tolist())) != n:
            dup = sorted(k for k, c in Counter(self.ids.tolist()).items() if c > 1)
            raise ValueError(f"ids must be unique; repeated: {', '.join(map(repr, dup[:10]))}")
        for name in ("task", "split", "response", "answer"):
            arr = _str_array(getattr(self, name), name, 1)
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows, expected N = {n} (the length of ids)")
            setattr(self, name, arr)
        bad = sorted(set(self.split.tolist()) - set(SPLITS))
        if bad:
            raise ValueError(
                f"split has unknown values {', '.join(map(repr, bad))}; allowed: {', '.join(map(repr, SPLITS))}"
            )
        if self.prompt is not None:
            self.prompt = _str_array(self.prompt, "prompt", 1)
            if len(self.prompt) != n:
                raise ValueError(f"prompt has {len(self.prompt)} rows, expected N = {n}")

        # labels
        if isinstance(self.is_error, HiddenLabels):
            if self.is_error.n != n:
                raise ValueError(f"hidden labels are for {self.is_error.n} rows, expected N = {n}")
        elif self.is_error is not None:
            e = np.asarray(self.is_error)
            if e.shape != (n,):
                raise ValueError(f"is_error must have shape ({n},), got {e.shape}")
            if e.dtype != bool:
                if not np.isin(e, (0, 1)).all():
                    raise ValueError("is_error must be boolean (or 0/1)")
                e = e.astype(bool)
            self.is_error = e

        # greedy token statistics
        self.token_logprobs = _ragged(self.token_logprobs, "token_logprobs", n, float)
        self.token_entropies = _ragged(self.token_entropies, "token_entropies", n, float)
        self.token_entropy_vars = _ragged(self.token_entropy_vars, "token_entropy_vars", n, float)
        self.answer_mask = _ragged(self.answer_mask, "answer_mask", n, bool)
        for i in range(n):
            t = len(self.token_logprobs[i])
            if t == 0:
                raise ValueError(f"row {i} (id {self.ids[i]!r}) has an empty greedy response: need at least one token")
            for name in ("token_entropies", "token_entropy_vars", "answer_mask"):
                if len(getattr(self, name)[i]) != t:
                    raise ValueError(
                        f"{name}[{i}] has {len(getattr(self, name)[i])} tokens but token_logprobs[{i}] has {t} "
                        f"(id {self.ids[i]!r})"
                    )
        for name, ok in (
            ("token_logprobs", lambda a: (a <= _TOL).all()),
            ("token_entropies", lambda a: (a >= -_TOL).all()),
            ("token_entropy_vars", lambda a: (a >= -_TOL).all()),
        ):
            for i, a in enumerate(getattr(self, name)):
                if not ok(a):
                    rule = "<= 0 (log-probabilities)" if name == "token_logprobs" else ">= 0"
                    raise ValueError(f"{name}[{i}] (id {self.ids[i]!r}) has values that are not {rule}")

        # samples
        self.sample_texts = _str_array(self.sample_texts, "sample_texts", 2)
        self.sample_answers = _str_array(self.sample_answers, "sample_answers", 2)
        k = self.sample_answers.shape[1]
        if k < 2:
            raise ValueError(
                f"K = {k} sampled responses per prompt: need K >= 2 "
                "(self-consistency and RPC compare samples with each other)"
            )
        for name in ("sample_texts", "sample_answers"):
            if getattr(self, name).shape != (n, k):
                raise ValueError(f"{name} must have shape (N, K) = ({n}, {k}), got {getattr(self, name).shape}")
        if self.sample_token_logprobs is not None:
            self.sample_token_logprobs = self._ragged2(self.sample_token_logprobs, "sample_token_logprobs", n, k, float)
            for i, row in enumerate(self.sample_token_logprobs):
                for j, a in enumerate(row):
                    if a.size == 0:
                        raise ValueError(f"sample_token_logprobs[{i}][{j}] is empty: a sample needs at least one token")
                    if (a > _TOL).any():
                        raise ValueError(f"sample_token_logprobs[{i}][{j}] has values > 0 (not log-probabilities)")
            mean = np.array([[a.mean() for a in row] for row in self.sample_token_logprobs]).reshape(n, k)
            total = np.array([[a.sum() for a in row] for row in self.sample_token_logprobs]).reshape(n, k)
            for name, derived in (("sample_mean_logprobs", mean), ("sample_sum_logprobs", total)):
                given = getattr(self, name)
                if given is not None and not np.allclose(np.asarray(given, float), derived, rtol=1e-9, atol=1e-9):
                    raise ValueError(f"{name} disagrees with the mean/sum of sample_token_logprobs")
            self.sample_mean_logprobs, self.sample_sum_logprobs = mean, total
        if self.sample_answer_masks is not None:
            self.sample_answer_masks = self._ragged2(self.sample_answer_masks, "sample_answer_masks", n, k, bool)
            if self.sample_token_logprobs is not None:
                for i in range(n):
                    for j in range(k):
                        if len(self.sample_answer_masks[i][j]) != len(self.sample_token_logprobs[i][j]):
                            raise ValueError(
                                f"sample_answer_masks[{i}][{j}] has {len(self.sample_answer_masks[i][j])} tokens but "
                                f"sample_token_logprobs[{i}][{j}] has {len(self.sample_token_logprobs[i][j])}"
                            )
        for name in ("sample_mean_logprobs", "sample_sum_logprobs"):
            v = getattr(self, name)
            if v is None:
                raise ValueError(f"{name} is required when sample_token_logprobs is not given")
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (n, k):
                raise ValueError(f"{name} must have shape (N, K) = ({n}, {k}), got {v.shape}")
            if not np.isfinite(v).all() or (v > _TOL).any():
                raise ValueError(f"{name} must be finite log-probabilities (<= 0)")
            setattr(self, name, v)

        # hidden states
        shapes = {}
        for name in ("hidden_answer", "hidden_response"):
            h = getattr(self, name)
            if h is None:
                continue
            h = np.asarray(h)
            if h.ndim != 3 or h.shape[0] != n or not np.issubdtype(h.dtype, np.floating):
                raise ValueError(
                    f"{name} must be a float array of shape (N, L+1, d) with N = {n}, got {h.shape} {h.dtype}"
                )
            if not np.isfinite(h).all():
                raise ValueError(f"{name} has non-finite values")
            shapes[name] = h.shape
            setattr(self, name, h)
        if len(set(shapes.values())) > 1:
            raise ValueError(f"hidden_answer and hidden_response shapes differ: {shapes}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}")

    @staticmethod
    def _ragged2(x: Any, name: str, n: int, k: int, dtype: Any) -> list[list[np.ndarray]]:
        rows = list(x)
        if len(rows) != n:
            raise ValueError(f"{name} has {len(rows)} rows, expected N = {n}")
        out = []
        for i, r in enumerate(rows):
            r = list(r)
            if len(r) != k:
                raise ValueError(f"{name}[{i}] has {len(r)} samples, expected K = {k}")
            out.append(_ragged(r, f"{name}[{i}]", k, dtype))
        return out

    # -- basic properties ----------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return self.n

    @property
    def K(self) -> int:  # noqa: N802 (the literature's name)
        return int(self.sample_answers.shape[1])

    @property
    def n_layers(self) -> int | None:
        """L+1 (embeddings + one per block), or None without hidden states."""
        h = self.hidden_answer if self.hidden_answer is not None else self.hidden_response
        return None if h is None else int(h.shape[1])

    @property
    def labels_hidden(self) -> bool:
        return isinstance(self.is_error, HiddenLabels)

    def labels(self) -> np.ndarray:
        """``is_error`` as a bool array; raises if hidden or absent."""
        if isinstance(self.is_error, HiddenLabels):
            self.is_error._deny()
        if self.is_error is None:
            raise ValueError("these statistics have no labels (is_error is None)")
        return self.is_error

    # -- views -------------------------------------------------------------------------
    def subset(self, index: Any) -> GenerationStats:
        """Rows selected by a boolean mask or integer indices (a new object)."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (self.n,):
                raise ValueError(f"boolean index must have shape ({self.n},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)

        def take_list(v: Any) -> Any:
            return None if v is None else [v[i] for i in idx]

        def take_arr(v: Any) -> Any:
            return None if v is None else np.asarray(v)[idx]

        labels = self.is_error
        if isinstance(labels, HiddenLabels):
            labels = HiddenLabels(len(idx))
        elif labels is not None:
            labels = labels[idx]
        return GenerationStats(
            ids=self.ids[idx], task=self.task[idx], split=self.split[idx], response=self.response[idx],
            answer=self.answer[idx], is_error=labels,
            token_logprobs=take_list(self.token_logprobs), token_entropies=take_list(self.token_entropies),
            token_entropy_vars=take_list(self.token_entropy_vars), answer_mask=take_list(self.answer_mask),
            sample_texts=self.sample_texts[idx].reshape(len(idx), self.K),
            sample_answers=self.sample_answers[idx].reshape(len(idx), self.K),
            sample_token_logprobs=take_list(self.sample_token_logprobs),
            sample_answer_masks=take_list(self.sample_answer_masks),
            sample_mean_logprobs=self.sample_mean_logprobs[idx], sample_sum_logprobs=self.sample_sum_logprobs[idx],
            hidden_answer=take_arr(self.hidden_answer), hidden_response=take_arr(self.hidden_response),
            prompt=take_arr(self.prompt), meta=dict(self.meta),
        )

    def select(self, *, split: str | None = None, task: str | None = None) -> GenerationStats:
        """Rows of one split and/or one task."""
        mask = np.ones(self.n, dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split = {split!r} is not allowed: choose one of {', '.join(map(repr, SPLITS))}")
            mask &= self.split == split
        if task is not None:
            if task not in set(self.task.tolist()):
                known = ", ".join(sorted(set(self.task.tolist())))
                raise ValueError(f"task = {task!r} is not in these statistics; tasks: {known}")
            mask &= self.task == task
        return self.subset(mask)

    def fit_test(self) -> tuple[GenerationStats, GenerationStats]:
        """``(fit rows, test rows)``, after checking that their ids are disjoint."""
        fit, test = self.select(split="fit"), self.select(split="test")
        check_disjoint(fit.ids, test.ids)
        return fit, test

    def without_labels(self) -> GenerationStats:
        """A shallow copy whose ``is_error`` raises :class:`LabelAccessError` on any use."""
        out = copy.copy(self)  # arrays are shared, not copied: estimators never mutate them
        out.is_error = HiddenLabels(self.n)
        return out

    # -- span access ---------------------------------------------------------------------
    def span_masks(self, span: str) -> list[np.ndarray]:
        """Per-row token masks: the answer mask (whole response if empty) or all tokens."""
        check_span(span)
        if span == "response":
            return [np.ones(len(a), dtype=bool) for a in self.token_logprobs]
        return [m if m.any() else np.ones(len(m), dtype=bool) for m in self.answer_mask]

    def span_tokens(self, field: str, span: str) -> list[np.ndarray]:
        """``field`` in ``logprobs | entropies | entropy_vars`` restricted to the span, per row."""
        arrays = {
            "logprobs": self.token_logprobs,
            "entropies": self.token_entropies,
            "entropy_vars": self.token_entropy_vars,
        }
        if field not in arrays:
            raise ValueError(f"field = {field!r} is not allowed: choose one of {', '.join(map(repr, arrays))}")
        return [a[m] for a, m in zip(arrays[field], self.span_masks(span))]

    def hidden(self, span: str) -> np.ndarray:
        """Pooled hidden states (N, L+1, d) for the span."""
        check_span(span)
        h = self.hidden_answer if span == "answer" else self.hidden_response
        if h is None:
            raise ValueError(f"these statistics have no hidden_{span} states (needed by hidden-state detectors)")
        return h

    def sample_path_logprob(self, span: str, reduce: str = "mean") -> np.ndarray:
        """(N, K) mean (or sum) token log-prob of each sample over the span.

        ``span="response"`` uses the whole sample; ``span="answer"`` needs the per-token sample
        log-probs and answer masks (a sample with an empty answer mask uses all its tokens).
        """
        check_span(span)
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce = {reduce!r} is not allowed: 'mean' or 'sum'")
        if span == "response":
            return self.sample_mean_logprobs if reduce == "mean" else self.sample_sum_logprobs
        if self.sample_token_logprobs is None or self.sample_answer_masks is None:
            raise ValueError(
                "span='answer' on samples needs sample_token_logprobs and sample_answer_masks; "
                "these statistics only have whole-sample log-probs (use span='response')"
            )
        out = np.empty((self.n, self.K))
        for i in range(self.n):
            for j in range(self.K):
                a, m = self.sample_token_logprobs[i][j], self.sample_answer_masks[i][j]
                v = a[m] if m.any() else a
                out[i, j] = v.mean() if reduce == "mean" else v.sum()
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for reports: rows per task/split, error rates (when labelled), K, layers."""
        out: dict[str, Any] = {
            "n": self.n, "K": self.K, "n_layers": self.n_layers,
            "empty_answer_spans": int(sum(not m.any() for m in self.answer_mask)),
            "rows": {},
        }
        has_labels = self.is_error is not None and not self.labels_hidden
        for t in sorted(set(self.task.tolist())):
            for s in SPLITS:
                m = (self.task == t) & (self.split == s)
                if m.any():
                    row: dict[str, Any] = {"n": int(m.sum())}
                    if has_labels:
                        row["error_rate"] = float(self.is_error[m].mean())
                    out["rows"][f"{t}/{s}"] = row
        if has_labels and self.n:
            out["error_rate"] = float(self.is_error.mean())
        return out

    # -- combining -------------------------------------------------------------------------
    @classmethod
    def concat(cls, parts: Sequence[GenerationStats]) -> GenerationStats:
        """Stack several objects (e.g. one per task) row-wise; K and hidden shapes must agree."""
        parts = list(parts)
        if not parts:
            raise ValueError("concat needs at least one GenerationStats")
        ks = {p.K for p in parts}
        if len(ks) > 1:
            raise ValueError(f"cannot concatenate statistics with different K: {sorted(ks)}")

        def opt(name: str, how: str) -> Any:
            vals = [getattr(p, name) for p in parts]
            if all(v is None for v in vals):
                return None
            if any(v is None for v in vals):
                raise ValueError(f"cannot concatenate: {name} is present in some parts and missing in others")
            if how == "list":
                return [x for v in vals for x in v]
            return np.concatenate([np.asarray(v) for v in vals])

        labels = [p.is_error for p in parts]
        if any(isinstance(v, HiddenLabels) for v in labels):
            raise ValueError("cannot concatenate statistics with hidden labels")
        is_error = None if all(v is None for v in labels) else opt("is_error", "array")
        meta: dict[str, Any] = {}
        for p in parts:
            meta.update(p.meta)
        return cls(
            ids=np.concatenate([p.ids for p in parts]), task=np.concatenate([p.task for p in parts]),
            split=np.concatenate([p.split for p in parts]), response=np.concatenate([p.response for p in parts]),
            answer=np.concatenate([p.answer for p in parts]), is_error=is_error,
            token_logprobs=opt("token_logprobs", "list"), token_entropies=opt("token_entropies", "list"),
            token_entropy_vars=opt("token_entropy_vars", "list"), answer_mask=opt("answer_mask", "list"),
            sample_texts=np.concatenate([p.sample_texts for p in parts]),
            sample_answers=np.concatenate([p.sample_answers for p in parts]),
            sample_token_logprobs=opt("sample_token_logprobs", "list"),
            sample_answer_masks=opt("sample_answer_masks", "list"),
            sample_mean_logprobs=opt("sample_mean_logprobs", "array"),
            sample_sum_logprobs=opt("sample_sum_logprobs", "array"),
            hidden_answer=opt("hidden_answer", "array"), hidden_response=opt("hidden_response", "array"),
            prompt=opt("prompt", "array"), meta=meta,
        )

    # -- storage -----------------------------------------------------------------------------
    @staticmethod
    def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
        p = Path(path)
        if p.suffix in (".npz", ".json"):
            p = p.with_suffix("")
        return p.with_name(p.name + ".npz"), p.with_name(p.name + ".json")

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<path>.npz`` + ``<path>.json`` atomically (``path`` may end in .npz)."""
        npz_path, json_path = self._paths(path)
        arrays: dict[str, np.ndarray] = {}
        if self.is_error is not None and not self.labels_hidden:
            arrays["is_error"] = np.asarray(self.is_error, dtype=bool)
        arrays["token_logprobs"], arrays["token_offsets"] = _flat(self.token_logprobs, np.float64)
        arrays["token_entropies"], _ = _flat(self.token_entropies, np.float64)
        arrays["token_entropy_vars"], _ = _flat(self.token_entropy_vars, np.float64)
        arrays["answer_mask"], _ = _flat(self.answer_mask, bool)
        arrays["sample_mean_logprobs"] = self.sample_mean_logprobs
        arrays["sample_sum_logprobs"] = self.sample_sum_logprobs
        if self.sample_token_logprobs is not None:
            rows = [a for row in self.sample_token_logprobs for a in row]
            arrays["sample_token_logprobs"], arrays["sample_token_offsets"] = _flat(rows, np.float64)
        if self.sample_answer_masks is not None:
            rows = [a for row in self.sample_answer_masks for a in row]
            arrays["sample_answer_masks"], arrays["sample_mask_offsets"] = _flat(rows, bool)
        for name in ("hidden_answer", "hidden_response"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(npz_path, buf.getvalue())
        sidecar = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "n": self.n,
            "K": self.K,
            "n_layers": self.n_layers,
            "labels": "present" if "is_error" in arrays else ("hidden" if self.labels_hidden else "absent"),
            "ids": self.ids.tolist(),
            "task": self.task.tolist(),
            "split": self.split.tolist(),
            "response": self.response.tolist(),
            "answer": self.answer.tolist(),
            "prompt": None if self.prompt is None else self.prompt.tolist(),
            "sample_texts": self.sample_texts.tolist(),
            "sample_answers": self.sample_answers.tolist(),
            "arrays": sorted(arrays),
            "npz_sha256": sha256_file(npz_path),
            "meta": self.meta,
        }
        write_json(json_path, sidecar)
        return npz_path, json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> GenerationStats:
        """Read what :meth:`save` wrote (no pickle); checks the .npz matches its sidecar."""
        npz_path, json_path = cls._paths(path)
        for p in (npz_path, json_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} does not exist (GenerationStats.save writes a .npz and a .json)")
        side = read_json(json_path)
        if side.get("format") != FORMAT:
            raise ValueError(f"{json_path} is not a GenerationStats sidecar (format = {side.get('format')!r})")
        if side.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{json_path}: version {side.get('version')!r} is not supported (expected {FORMAT_VERSION})"
            )
        digest = sha256_file(npz_path)
        if digest != side["npz_sha256"]:
            raise ValueError(
                f"{npz_path} does not match its sidecar {json_path} (sha256 differs): rewrite both with save()"
            )
        n, k = int(side["n"]), int(side["K"])
        with np.load(npz_path, allow_pickle=False) as z:
            a = {name: z[name] for name in z.files}
        off = a["token_offsets"]
        sample_lp = sample_masks = None
        if "sample_token_logprobs" in a:
            flat = _unflat(a["sample_token_logprobs"], a["sample_token_offsets"])
            sample_lp = [flat[i * k : (i + 1) * k] for i in range(n)]
        if "sample_answer_masks" in a:
            flat = _unflat(a["sample_answer_masks"], a["sample_mask_offsets"])
            sample_masks = [flat[i * k : (i + 1) * k] for i in range(n)]

        def strings2(name: str) -> np.ndarray:
            return np.array(side[name], dtype=str).reshape(n, k) if n else np.zeros((0, k), dtype="<U1")

        return cls(
            ids=side["ids"], task=side["task"], split=side["split"], response=side["response"],
            answer=side["answer"], is_error=a.get("is_error"),
            token_logprobs=_unflat(a["token_logprobs"], off), token_entropies=_unflat(a["token_entropies"], off),
            token_entropy_vars=_unflat(a["token_entropy_vars"], off), answer_mask=_unflat(a["answer_mask"], off),
            sample_texts=strings2("sample_texts"), sample_answers=strings2("sample_answers"),
            sample_token_logprobs=sample_lp, sample_answer_masks=sample_masks,
            sample_mean_logprobs=a["sample_mean_logprobs"], sample_sum_logprobs=a["sample_sum_logprobs"],
            hidden_answer=a.get("hidden_answer"), hidden_response=a.get("hidden_response"),
            prompt=side.get("prompt"), meta=side.get("meta") or {},
        )

    def equals(self, other: GenerationStats) -> bool:
        """Exact equality of every field (used by the round-trip test)."""
        if not isinstance(other, GenerationStats):
            return False
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, HiddenLabels) or isinstance(b, HiddenLabels):
                if not (isinstance(a, HiddenLabels) and isinstance(b, HiddenLabels)):
                    return False
                continue
            if (a is None) != (b is None):
                return False
            if a is None:
                continue
            if f.name == "meta":
                if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
                    return False
            elif isinstance(a, list):
                flat_a = [x for r in a for x in (r if isinstance(r, list) else [r])]
                flat_b = [x for r in b for x in (r if isinstance(r, list) else [r])]
                if len(flat_a) != len(flat_b) or any(
                    x.dtype != y.dtype or not np.array_equal(x, y) for x, y in zip(flat_a, flat_b)
                ):
                    return False
            else:
                if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
        return True
