"""Meta Ranking: the reliability of a (query, response) judged by pairwise comparisons with a few
reference (query, response, correct?) pairs (docs/methods/error_detection.md).

The paper's judge is an instruction-following LM asked "which of these two responses is more
reliable?". **Our judge is an adaptation**: a learned pairwise comparator over the two pairs'
stored single-pass statistics, ``P(a more reliable than b) = sigmoid(w . (f(a) - f(b)))`` with
``f`` = (mean log p, min log p, mean entropy, max entropy, zero-shot z) on the span. It is a
logistic regression without intercept (so ``P(a > b) = 1 - P(b > a)`` and ``P(a > a) = 1/2``),
fitted on fit-split pairs of one right and one wrong response of the same task.

Each target is compared with ``n_references`` references drawn from the fit split (the same task
when it has enough, seeded by the target's id, never the target itself). The votes are weighted
by the references' correctness, as the paper aggregates them: being judged more reliable than a
*correct* reference is evidence for the target, being judged less reliable than a *wrong*
reference is evidence against it (the other two outcomes say little)::

    reliability = sum_r [ c_r q_r - (1 - c_r) (1 - q_r) ],   q_r = P(target > r),  c_r = 1 if r is right

and u = -reliability. Cost: ``n_references`` judge calls per response (``calls_per_response``).
"""

from __future__ import annotations

import zlib

import numpy as np

from trustlab.error_detection.estimators import Estimator, detector

__all__ = ["PairwiseComparator", "MetaRanking", "pair_features", "reliability"]


def pair_features(stats, span: str) -> np.ndarray:
    """(N, 5) single-pass features of each response on ``span`` (higher = looks more reliable
    for the first two, less for the rest; the comparator learns the signs)."""
    lp = stats.span_tokens("logprobs", span)
    ent = stats.span_tokens("entropies", span)
    var = stats.span_tokens("entropy_vars", span)
    z = [float(np.sum(-a - h) / np.sqrt(max(float(np.sum(v)), 1e-12))) for a, h, v in zip(lp, ent, var)]
    return np.column_stack([[a.mean() for a in lp], [a.min() for a in lp], [h.mean() for h in ent],
                            [h.max() for h in ent], z])  # fmt: skip


class PairwiseComparator:
    """P(a more reliable than b) = sigmoid(w . (f(a) - f(b))): antisymmetric by construction."""

    def __init__(self, C: float = 1.0):
        self.C = float(C)

    def fit(self, f_right: np.ndarray, f_wrong: np.ndarray) -> PairwiseComparator:
        """Fit on pairs (right_i, wrong_i): label 1 for right - wrong, 0 for wrong - right."""
        from sklearn.linear_model import LogisticRegression

        d = np.asarray(f_right, np.float64) - np.asarray(f_wrong, np.float64)
        self.scale_ = np.abs(d).mean(axis=0) + 1e-12  # features on one scale; keeps antisymmetry
        x = np.vstack([d, -d]) / self.scale_
        y = np.r_[np.ones(len(d)), np.zeros(len(d))]
        self.model_ = LogisticRegression(C=self.C, fit_intercept=False, max_iter=2000).fit(x, y)
        return self

    def prob(self, f_a: np.ndarray, f_b: np.ndarray) -> np.ndarray:
        """P(a > b) for each row pair."""
        d = (np.asarray(f_a, np.float64) - np.asarray(f_b, np.float64)) / self.scale_
        return 1.0 / (1.0 + np.exp(-(d @ self.model_.coef_[0])))


def reliability(q: np.ndarray, ref_right: np.ndarray) -> np.ndarray:
    """sum_r [c_r q_r - (1 - c_r)(1 - q_r)] over the last axis (votes weighted by correctness)."""
    c = np.asarray(ref_right, np.float64)
    return (c * q - (1.0 - c) * (1.0 - q)).sum(axis=-1)


@detector("meta_ranking")
class MetaRanking(Estimator):
    """Meta Ranking (learned comparator, adapt.): u = -sum_r [c_r q_r - (1 - c_r)(1 - q_r)] over
    ``n_references`` fit-split references, q_r = P(target more reliable than reference r)."""

    label = "Meta Ranking (learned judge, adapt.)"
    needs_fit = True
    supervised = True

    def __init__(self, span: str = "answer", n_references: int = 5, max_pairs: int = 4000, C: float = 1.0,
                 seed: int = 0):  # fmt: skip
        super().__init__(span)
        if n_references < 1 or max_pairs < 1:
            raise ValueError(f"n_references = {n_references}, max_pairs = {max_pairs}: both must be >= 1")
        self.n_references, self.max_pairs, self.C, self.seed = int(n_references), int(max_pairs), float(C), int(seed)

    @property
    def calls_per_response(self) -> int:  # type: ignore[override]
        return self.n_references

    def _fit(self, stats):
        f = pair_features(stats, self.span)
        wrong = stats.labels()
        gen = np.random.default_rng(self.seed)
        pairs = []
        for t in sorted(set(stats.task.tolist())):  # pairs within a task: the judge compares like with like
            r = np.flatnonzero((stats.task == t) & ~wrong)
            w = np.flatnonzero((stats.task == t) & wrong)
            if len(r) and len(w):
                pairs.append(np.stack(np.meshgrid(r, w), -1).reshape(-1, 2))
        if not pairs:  # no task has both classes: pair across tasks
            pairs.append(np.stack(np.meshgrid(np.flatnonzero(~wrong), np.flatnonzero(wrong)), -1).reshape(-1, 2))
        pairs = np.vstack(pairs)
        if len(pairs) > self.max_pairs:
            pairs = pairs[np.sort(gen.choice(len(pairs), self.max_pairs, replace=False))]
        self.judge_ = PairwiseComparator(self.C).fit(f[pairs[:, 0]], f[pairs[:, 1]])
        self.ref_f_, self.ref_right_ = f, (~wrong).astype(np.float64)
        self.ref_task_, self.ref_ids_ = stats.task.copy(), stats.ids.copy()

    def references(self, target_id: str, task: str) -> np.ndarray:
        """Indices of the target's references: fit rows of its task (all fit rows when the task
        has too few), drawn without replacement by a generator seeded with the target's id."""
        pool = np.flatnonzero((self.ref_task_ == task) & (self.ref_ids_ != target_id))
        if len(pool) < self.n_references:
            pool = np.flatnonzero(self.ref_ids_ != target_id)
        gen = np.random.default_rng([self.seed, zlib.crc32(str(target_id).encode())])
        return gen.choice(pool, min(self.n_references, len(pool)), replace=False)

    def _score(self, stats, in_sample):
        f = pair_features(stats, self.span)
        u = np.empty(stats.n)
        for i, (rid, task) in enumerate(zip(stats.ids, stats.task)):
            refs = self.references(str(rid), str(task))
            q = self.judge_.prob(np.repeat(f[i : i + 1], len(refs), axis=0), self.ref_f_[refs])
            u[i] = -reliability(q, self.ref_right_[refs]) * self.n_references / max(len(refs), 1)
        return u
