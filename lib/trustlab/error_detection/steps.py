"""Step-level trajectories on the scratchpad task: which step went wrong, and what each step looked like.

A scratchpad response (``trustlab.data.scratchpad``) is a trajectory of column-addition steps
``x+y+c=s; ...; answer R``. This module turns responses (the model's greedy ones, or given ones
scored by teacher forcing) into :class:`StepTrajectories`: per trajectory the ground truth, per
step the model's token statistics and the step's operation.

Ground truth (``first_wrong``): the index of the first step that differs from the reference step
of the column (``trustlab.data.checkers.first_wrong_step``), or -1 when every step is right.
Before the first wrong step every step equals the reference, so the first step that differs from
the reference is also the first step that is wrong given the operands (a step after it may be
consistent with the wrong carry before it: only the first wrong step is a label here). A
trajectory whose first wrong step was never written (it stopped early) has no tokens to localise
it at: it is kept and counted, and ``localisable`` is False for it.

Steps of a response are its ``;``-separated parts before the ``answer`` part, exactly as
``checkers.parse_steps`` reads them (checked for every response). A token belongs to the step
that holds its last character; the step's ``;`` belongs to it.

Per-step statistics (:data:`STEP_STATS`, natural logs; the token log-probability is
log p(y_t | y_<t) under the raw model distribution, the entropy the full-vocabulary H_t):

==================  ==============================================================================
``min_logprob``     min over the step's tokens of log p(y_t) (log of the min token probability)
``mean_logprob``    mean over the step's tokens of log p(y_t)
``max_entropy``     max over the step's tokens of H_t
``x_logprob``       log p of the first operand digit's token(s) (min when several)
``y_logprob``       the second operand digit's
``carry_logprob``   the carry digit's
``sum_logprob``     the column sum's tokens' (min)
==================  ==============================================================================

A step that does not read ``x+y+c=s`` gives ``min_logprob`` for the four positional entries.

Per-step operation (:data:`STEP_OPERATION`, from the operands alone, whatever the model wrote):
the column index, the true carry into the column, whether the true column sum is >= 10 and the
two operand digits (0 past an operand's end). ``kind`` (:data:`STEP_KINDS`) combines carry-in
and overflow.

Injected errors (:func:`inject_step_error`, AEGIS-style, at a known step ``k``): ``wrong_sum``
changes the last digit of the column sum (the carry it passes on stays right), ``dropped_carry``
writes carry 0 into a column whose true carry is 1 and adds without it (the carry it passes on
follows from the wrong sum). Steps before ``k`` are the reference, later steps carry on from
step ``k``'s written sum, and the result is read off the written sums, as a model's own error
would propagate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustlab.data.checkers import first_wrong_step, parse_steps
from trustlab.data.scratchpad import FINAL_PREFIX, STEP_SEP, format_answer
from trustlab.data.tasks import sub_seed
from trustlab.error_detection.statistics import HiddenLabels, check_disjoint

__all__ = [
    "STEP_STATS",
    "STEP_OPERATION",
    "STEP_KINDS",
    "INJECTION_KINDS",
    "StepTrajectories",
    "step_segments",
    "column_operations",
    "trajectories_from_tokens",
    "collect_trajectories",
    "score_trajectories",
    "inject_step_error",
    "make_step_injections",
    "score_injections",
    "draw_records",
]

STEP_STATS = ("min_logprob", "mean_logprob", "max_entropy", "x_logprob", "y_logprob", "carry_logprob", "sum_logprob")
STEP_OPERATION = ("column", "carry_in", "overflow", "x", "y")
STEP_KINDS = ("plain", "carry_in", "overflow", "carry_in_overflow")
INJECTION_KINDS = ("wrong_sum", "dropped_carry")
INJECTED_SUFFIX = "#step_injected"
_STEP = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*\+\s*(\d+)\s*=\s*(\d+)\s*;?\s*$")


# -- the trajectories -------------------------------------------------------------------------------


@dataclass
class StepTrajectories:
    """N trajectories with S steps in all; trajectory ``i`` owns step rows ``offsets[i]:offsets[i+1]``.

    ========================  ===========================  =============================================
    field                     shape                        meaning
    ========================  ===========================  =============================================
    ids                       (N,) str, unique             trajectory id (prompt id; injected: + suffix)
    split                     (N,) "fit" | "test"          fit = cache, thresholds; test = localised
    prompt, response          (N,) str                     prompt and the scored response text
    first_wrong               (N,) int | HiddenLabels      ground truth: first wrong step, -1 = none
    n_reference               (N,) int                     the reference's number of steps
    offsets                   (N + 1,) int                 step rows of each trajectory
    stats                     (S, len(STEP_STATS))         per-step token statistics
    operation                 (S, len(STEP_OPERATION))     per-step operation (from the operands)
    meta                      dict                         e.g. injection kinds per id
    ========================  ===========================  =============================================
    """

    ids: Any
    split: Any
    prompt: Any
    response: Any
    first_wrong: Any
    n_reference: Any
    offsets: Any
    stats: Any
    operation: Any
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=str)
        n = len(self.ids)
        if len(set(self.ids.tolist())) != n:
            raise ValueError("trajectory ids must be unique")
        self.split = np.asarray(self.split, dtype=str)
        bad = sorted(set(self.split.tolist()) - {"fit", "test"})
        if bad or len(self.split) != n:
            raise ValueError(f"split needs one of 'fit'/'test' per trajectory, got {bad or len(self.split)}")
        self.prompt = np.asarray(self.prompt, dtype=str)
        self.response = np.asarray(self.response, dtype=str)
        self.n_reference = np.asarray(self.n_reference, dtype=np.int64)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets.shape != (n + 1,) or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
            raise ValueError(f"offsets must be non-decreasing with shape ({n + 1},) starting at 0")
        self.stats = np.asarray(self.stats, dtype=np.float64).reshape(-1, len(STEP_STATS))
        self.operation = np.asarray(self.operation, dtype=np.int64).reshape(-1, len(STEP_OPERATION))
        if len(self.stats) != self.offsets[-1] or len(self.operation) != self.offsets[-1]:
            raise ValueError(f"stats and operation need {self.offsets[-1]} step rows, "
                             f"got {len(self.stats)} and {len(self.operation)}")  # fmt: skip
        if not isinstance(self.first_wrong, HiddenLabels):
            self.first_wrong = np.asarray(self.first_wrong, dtype=np.int64)
            if self.first_wrong.shape != (n,):
                raise ValueError(f"first_wrong needs shape ({n},), got {self.first_wrong.shape}")

    # -- sizes and views ----------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return self.n

    @property
    def n_steps(self) -> np.ndarray:
        """Steps written per trajectory."""
        return np.diff(self.offsets)

    @property
    def step_trajectory(self) -> np.ndarray:
        """(S,) the trajectory index of every step row."""
        return np.repeat(np.arange(self.n), self.n_steps)

    @property
    def step_index(self) -> np.ndarray:
        """(S,) the position of every step row within its trajectory."""
        return np.arange(self.offsets[-1]) - np.repeat(self.offsets[:-1], self.n_steps)

    @property
    def kind(self) -> np.ndarray:
        """(S,) the step kind index into :data:`STEP_KINDS` (carry-in + 2 x overflow)."""
        return self.operation[:, 1] + 2 * self.operation[:, 2]

    def labels(self) -> np.ndarray:
        if isinstance(self.first_wrong, HiddenLabels):
            self.first_wrong._deny()
        return self.first_wrong

    @property
    def has_error(self) -> np.ndarray:
        """A wrong step exists (whether or not it was written)."""
        return self.labels() >= 0

    @property
    def localisable(self) -> np.ndarray:
        """The first wrong step exists and was written (so a step can be pointed at)."""
        fw = self.labels()
        return (fw >= 0) & (fw < self.n_steps)

    def steps_of(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def subset(self, index: Any) -> StepTrajectories:
        """The trajectories ``index`` (a boolean mask or integer positions) with their step rows."""
        idx = np.arange(self.n)[index].reshape(-1)
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx] + [np.zeros(0, np.int64)])
        offsets = np.concatenate([[0], np.cumsum(self.n_steps[idx])])
        fw = HiddenLabels(len(idx)) if isinstance(self.first_wrong, HiddenLabels) else self.first_wrong[idx]
        return StepTrajectories(self.ids[idx], self.split[idx], self.prompt[idx], self.response[idx], fw,
                                self.n_reference[idx], offsets, self.stats[rows], self.operation[rows],
                                dict(self.meta))  # fmt: skip

    def select(self, split: str) -> StepTrajectories:
        return self.subset(self.split == split)

    def without_labels(self) -> StepTrajectories:
        """The same trajectories with ``first_wrong`` hidden: what a localiser's ``localise`` gets."""
        out = self.subset(np.arange(self.n))
        out.first_wrong = HiddenLabels(self.n)
        return out

    @classmethod
    def concat(cls, parts: Sequence[StepTrajectories]) -> StepTrajectories:
        parts = list(parts)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate([p.n_steps for p in parts]))])
        meta: dict[str, Any] = {}
        for p in parts:
            for k, v in p.meta.items():
                meta[k] = {**meta.get(k, {}), **v} if isinstance(v, dict) else v
        return cls(np.concatenate([p.ids for p in parts]), np.concatenate([p.split for p in parts]),
                   np.concatenate([p.prompt for p in parts]), np.concatenate([p.response for p in parts]),
                   np.concatenate([p.labels() for p in parts]), np.concatenate([p.n_reference for p in parts]),
                   offsets, np.concatenate([p.stats for p in parts]), np.concatenate([p.operation for p in parts]),
                   meta)  # fmt: skip

    def summary(self) -> dict[str, int]:
        """Counts: trajectories, steps, with a wrong step, localisable, first wrong step per index."""
        fw = self.labels()
        out = {"trajectories": self.n, "steps": int(self.offsets[-1]), "with_wrong_step": int((fw >= 0).sum()),
               "localisable": int(self.localisable.sum()), "all_steps_right": int((fw < 0).sum())}  # fmt: skip
        for k in sorted(set(fw[fw >= 0].tolist())):
            out[f"first_wrong_at_{k}"] = int((fw == k).sum())
        return out


# -- steps of one response --------------------------------------------------------------------------


def step_segments(text: str) -> list[tuple[int, int]]:
    """Character ranges ``[start, end)`` of the steps of a scratchpad response: its
    ``;``-separated parts before the ``answer`` part, each with the ``;`` that ends it. Parts that
    are only whitespace are skipped, as ``checkers.parse_steps`` skips them."""
    marker = FINAL_PREFIX.strip().lower()
    sep = STEP_SEP.strip()
    out, start = [], 0
    while start < len(text):
        cut = text.find(sep, start)
        end = len(text) if cut < 0 else cut + len(sep)
        body = "".join(text[start : end if cut < 0 else cut].split())
        if body:
            if body.lower().startswith(marker):
                break
            out.append((start, end))
        start = end
    return out


def column_operations(record: Mapping[str, Any], n_steps: int) -> np.ndarray:
    """(n_steps, len(STEP_OPERATION)) true operation of columns 0..n_steps-1 of ``a + b`` (digits 0
    past an operand's end, so an extra step past the last column reads as column ``n`` of 0 + 0)."""
    xs, ys = str(record["a"])[::-1], str(record["b"])[::-1]
    rows, carry = [], 0
    for i in range(n_steps):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        rows.append((i, carry, int(total >= 10), x, y))
        carry = total // 10
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(STEP_OPERATION))


def _token_rows(spans: Sequence[tuple[int, int]], segments: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token indices of each step: the tokens whose last character lies in the step's range."""
    out: list[list[int]] = [[] for _ in segments]
    for t, (a, b) in enumerate(spans):
        if b <= a:
            continue  # special tokens decode to nothing
        for j, (s, e) in enumerate(segments):
            if s <= b - 1 < e:
                out[j].append(t)
                break
    return out


def _positional(text: str, seg: tuple[int, int], spans, tokens: list[int], lp: np.ndarray) -> list[float]:
    """log p of the x, y, carry and sum tokens of one step (min over tokens overlapping each)."""
    m = _STEP.match(text[seg[0] : seg[1]])
    low = float(lp[tokens].min())
    if m is None:
        return [low] * 4
    out = []
    for g in range(1, 5):
        a, b = seg[0] + m.start(g), seg[0] + m.end(g)
        hit = [t for t in tokens if spans[t][0] < b and spans[t][1] > a]
        out.append(float(lp[hit].min()) if hit else low)
    return out


def step_rows(
    text: str, spans: Sequence[tuple[int, int]], logprobs: np.ndarray, entropies: np.ndarray
) -> np.ndarray:
    """(steps, len(STEP_STATS)) statistics of the steps of one response from its per-token arrays."""
    segs = step_segments(text)
    lp, ent = np.asarray(logprobs, float), np.asarray(entropies, float)
    rows = []
    for seg, toks in zip(segs, _token_rows(spans, segs)):
        if not toks:
            raise ValueError(f"step {text[seg[0]:seg[1]]!r} has no token")
        rows.append([float(lp[toks].min()), float(lp[toks].mean()), float(ent[toks].max()),
                     *_positional(text, seg, spans, toks, lp)])  # fmt: skip
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(STEP_STATS))


# -- building trajectories ----------------------------------------------------------------------------


def trajectories_from_tokens(
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    split: Sequence[str],
    token_ids: Sequence[Sequence[int]],
    token_logprobs: Sequence[np.ndarray],
    token_entropies: Sequence[np.ndarray],
    *,
    ids: Sequence[str] | None = None,
    meta: dict | None = None,
) -> StepTrajectories:
    """Trajectories from scored responses (one per record): decode, split into steps, label."""
    from trustlab.error_detection.collect import token_char_spans

    texts, fws, offsets, stats, ops = [], [], [0], [], []
    for rec, toks, lp, ent in zip(records, token_ids, token_logprobs, token_entropies):
        text, spans = token_char_spans(tokenizer, list(toks))
        rows = step_rows(text, spans, lp, ent)
        parsed = parse_steps(text)
        if len(parsed) != len(rows):
            raise RuntimeError(f"step split disagrees with checkers.parse_steps on {text!r}")
        fw = first_wrong_step(text, dict(rec))
        texts.append(text)
        fws.append(-1 if fw is None else int(fw))
        offsets.append(offsets[-1] + len(rows))
        stats.append(rows)
        ops.append(column_operations(rec, len(rows)))
    n = len(texts)
    return StepTrajectories(
        ids=[str(r["id"]) for r in records] if ids is None else list(ids), split=list(split),
        prompt=[str(r["prompt"]) for r in records], response=texts, first_wrong=fws,
        n_reference=[len(r["steps"]) for r in records], offsets=offsets,
        stats=np.concatenate(stats) if n else np.zeros((0, len(STEP_STATS))),
        operation=np.concatenate(ops) if n else np.zeros((0, len(STEP_OPERATION)), np.int64), meta=dict(meta or {}),
    )  # fmt: skip


def collect_trajectories(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    split: Sequence[str],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 64,
) -> StepTrajectories:
    """The model's greedy trajectories (one batched pass with the KV cache) and their step statistics."""
    from trustlab.lm.generation import generate

    check_disjoint([r["id"] for r, s in zip(records, split) if s == "fit"],
                   [r["id"] for r, s in zip(records, split) if s == "test"], what="scratchpad prompt ids")  # fmt: skip
    g = generate(model, tokenizer, [str(r["prompt"]) for r in records], max_new_tokens=max_new_tokens,
                 batch_size=batch_size)  # fmt: skip
    finish = dict(zip([str(r["id"]) for r in records], g.finish_reasons))
    return trajectories_from_tokens(tokenizer, records, split, g.token_ids, g.token_logprobs, g.entropies,
                                    meta={"finish": finish})  # fmt: skip


def score_trajectories(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    responses: Sequence[str],
    *,
    ids: Sequence[str],
    split: str = "test",
    batch_size: int = 64,
    meta: dict | None = None,
) -> StepTrajectories:
    """Given responses scored by teacher forcing (``score_continuations``: answer encoding + ``<eos>``,
    the positions generation uses), as trajectories."""
    from trustlab.lm.generation import score_continuations

    sc = score_continuations(model, tokenizer, [str(r["prompt"]) for r in records], list(responses),
                             batch_size=batch_size)  # fmt: skip
    return trajectories_from_tokens(tokenizer, records, [split] * len(records), sc.token_ids, sc.token_logprobs,
                                    sc.entropies, ids=ids, meta=meta)  # fmt: skip


# -- injected step errors -----------------------------------------------------------------------------


def inject_step_error(record: Mapping[str, Any], k: int, kind: str, digit: int = 1) -> str:
    """The reference answer with step ``k`` corrupted (``wrong_sum``: the sum's last digit
    shifted by ``digit`` mod 10; ``dropped_carry``: carry 0 written and added where the true
    carry is 1), later steps carried on from it and the result read off the written sums."""
    n = len(record["steps"])
    if not 0 <= k < n:
        raise ValueError(f"k = {k} is out of range: 0 <= k < {n} (the record's steps)")
    if kind not in INJECTION_KINDS:
        raise ValueError(f"kind = {kind!r} is not allowed: choose one of {', '.join(map(repr, INJECTION_KINDS))}")
    if not 1 <= digit <= 9:
        raise ValueError(f"digit = {digit} is out of range: 1 <= digit <= 9")
    ops = column_operations(record, n)
    steps, digits, carry = [], [], 0
    for i, (_col, _cin, _ovf, x, y) in enumerate(ops.tolist()):
        written = carry
        if i == k and kind == "dropped_carry":
            if carry != 1:
                raise ValueError(f"dropped_carry needs a carry of 1 into column {k}; it is {carry}")
            written = 0
        total = x + y + written
        if i == k and kind == "wrong_sum":
            total = 10 * (total // 10) + (total % 10 + digit) % 10
        steps.append(f"{x}+{y}+{written}={total}")
        digits.append(str(total % 10))
        carry = total // 10
    final = ((str(carry) if carry else "") + "".join(reversed(digits))).lstrip("0") or "0"
    return format_answer(steps, final)


def make_step_injections(
    natural: StepTrajectories,
    records_by_id: Mapping[str, Mapping[str, Any]],
    n: int,
    seed: int,
) -> list[tuple[dict[str, Any], str, int, str]]:
    """Up to ``n`` injections ``(record, corrupted answer, k, kind)`` on the test trajectories of
    ``natural`` (a seeded subset, in stream order). Step ``k`` is uniform over the steps before
    and at the model's own first wrong step (any step when it made none), so every step before
    ``k`` is one the model itself wrote that way; ``dropped_carry`` is chosen with probability 1/2
    where the true carry into step ``k`` is 1, else ``wrong_sum``."""
    test = natural.select("test")
    fw = test.labels()
    gen = np.random.default_rng(sub_seed(seed, "error_detection", "correct", "inject"))
    order = gen.permutation(test.n)[: max(0, int(n))]
    out = []
    for i in sorted(order.tolist()):
        rec = dict(records_by_id[str(test.ids[i])])
        n_ref = len(rec["steps"])
        last = n_ref - 1 if fw[i] < 0 else min(int(fw[i]), n_ref - 1)
        k = int(gen.integers(0, last + 1))
        carry_in = int(column_operations(rec, n_ref)[k, 1])
        kind = "dropped_carry" if carry_in and gen.random() < 0.5 else "wrong_sum"
        text = inject_step_error(rec, k, kind, digit=int(gen.integers(1, 10)))
        if first_wrong_step(text, rec) != k:  # a corruption must be wrong exactly at k
            raise RuntimeError(f"injection at step {k} of {rec['id']} is wrong at {first_wrong_step(text, rec)}")
        out.append((rec, text, k, kind))
    return out


def score_injections(
    model: Any, tokenizer: Any, injections: Sequence[tuple[dict[str, Any], str, int, str]], *, batch_size: int = 64
) -> StepTrajectories:
    """The injected answers as test trajectories scored by teacher forcing (ids = prompt id + suffix)."""
    recs = [rec for rec, *_ in injections]
    ids = [str(rec["id"]) + INJECTED_SUFFIX for rec in recs]
    meta = {"injection": {i: {"k": k, "kind": kind} for i, (_r, _t, k, kind) in zip(ids, injections)}}
    out = score_trajectories(model, tokenizer, recs, [t for _r, t, *_ in injections], ids=ids, batch_size=batch_size,
                             meta=meta)  # fmt: skip
    want = np.array([k for *_x, k, _kind in injections])
    if not np.array_equal(out.labels(), want):
        raise RuntimeError("injected trajectories are not wrong exactly at their injected step")
    return out


# -- prompts ------------------------------------------------------------------------------------------


def draw_records(
    generated_dir: Any, fit_split: str, test_split: str, n_fit: int, n_test: int, seed: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """``n_fit`` scratchpad records from ``fit_split`` and ``n_test`` from ``test_split`` (disjoint
    when the two are the same split), each part in a seeded random order (the test part's order is
    the stream the schema cache grows over). Returns the records and their ``fit``/``test`` side."""
    from trustlab.data.tasks import load_task

    gen = np.random.default_rng(sub_seed(seed, "error_detection", "correct", "prompts"))
    pools = {s: load_task(generated_dir, "scratchpad", s) for s in {fit_split, test_split}}
    need = n_fit + n_test if fit_split == test_split else None
    for s, pool in pools.items():
        want = need if need is not None else (n_fit if s == fit_split else n_test)
        if want > len(pool):
            raise ValueError(f"error_detection.correct asks for {want} scratchpad prompts from split {s!r}, "
                             f"which has {len(pool)}; lower n_fit / n_test")  # fmt: skip
    fit_order = gen.permutation(len(pools[fit_split]))
    fit = [pools[fit_split][int(i)] for i in fit_order[:n_fit]]
    if fit_split == test_split:
        test = [pools[test_split][int(i)] for i in fit_order[n_fit : n_fit + n_test]]
    else:
        test = [pools[test_split][int(i)] for i in gen.permutation(len(pools[test_split]))[:n_test]]
    return fit + test, ["fit"] * len(fit) + ["test"] * len(test)
