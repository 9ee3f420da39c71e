"""Metrics that score an uncertainty u (higher = more likely an error) against error labels.

Threshold-free metrics come first (docs/methods/error_detection.md):

- **AUROC** ``roc_auc_score(is_error, u)``; **AUPRC** ``average_precision_score(is_error, u)``,
  always reported with the base error rate b (a random detector's AUPRC).
- **PRR** as lm-polygraph's ``PredictionRejectionArea`` defines it: quality q = 1 - is_error;
  sort by ascending u; PRR = (1/N) sum_{k=1..N} mean(q over the k most confident rows), i.e. the
  area under the prediction-rejection curve. Normalised PRR = (PRR - PRR_random) /
  (PRR_oracle - PRR_random), the oracle using u = -q and the random baseline being the mean
  over shuffles, whose closed form is mean(q): under a uniformly random order every k-prefix
  has expected mean q equal to mean(q) (:func:`prr_random_shuffled` checks this numerically).
  Ties in u: lm-polygraph leaves them to ``np.argsort`` (an arbitrary order). We default to
  ``ties="mean"``, the expectation over random orderings of tied rows (each tied block's q
  replaced by the block mean, exact because PRR is linear in the prefix sums); tie-free input
  gives exactly lm-polygraph's value, and ``ties="argsort"`` reproduces its code path. When
  every row has the same label the oracle equals random and the normalised PRR is NaN
  (lm-polygraph returns the raw value then).
- **ReaLMistake-style P/R/F1** of the error class, flagging u > threshold with the threshold
  chosen on the *fit* split (max F1 there; ties -> the larger threshold, i.e. fewer flags),
  reported beside closed-form baselines on the test base rate b:

  ======================  ===========  ========  ==========================
  baseline                precision    recall    F1
  ======================  ===========  ========  ==========================
  always "error"          b            1         2b / (1 + b)
  random, flag rate r     b            r         2br / (b + r)
  random at r = b         b            b         b
  coin flip (r = 1/2)     b            1/2       b / (b + 1/2)
  ======================  ===========  ========  ==========================

  (random: precision and recall are ratios of expectations, F1 is computed from them; the
  expected F1 of a finite sample differs slightly). In :func:`evaluate` the random baseline's
  rate r is the *fit* split's base rate (known before seeing test labels).
- **Bootstrap 95% CIs** over test rows: percentile intervals over resamples of the rows with
  replacement. The resamples are exactly those of ``trustlab.core.stats.bootstrap_ci(paired=(u, e))``
  with the same seed (``resample_indices``), and every metric and detector uses the same seed,
  hence the same resamples, so CIs of different detectors on the same rows are paired. The
  metrics are computed for all resamples at once from multiplicity weights and one sort of u
  (``*_w`` functions); tests check them against the one-resample-at-a-time reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "TIES",
    "base_rate",
    "auroc",
    "auprc",
    "prr",
    "prr_oracle",
    "prr_random",
    "prr_random_shuffled",
    "normalized_prr",
    "rejection_curve",
    "choose_threshold",
    "precision_recall_f1",
    "always_error_baseline",
    "random_baseline",
    "evaluate",
    "compare",
    "resample_indices",
    "resample_weights",
    "auroc_w",
    "auprc_w",
    "normalized_prr_w",
    "prf_w",
    "percentile_ci",
]

TIES = ("mean", "stable", "argsort")


def _check(is_error: Any, u: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    e = np.asarray(is_error)
    if e.ndim != 1:
        raise ValueError(f"is_error must be 1-D, got shape {e.shape}")
    if e.dtype != bool:
        if e.size and not np.isin(e, (0, 1)).all():
            raise ValueError("is_error must be boolean (or 0/1)")
        e = e.astype(bool)
    if u is None:
        return e, None
    u = np.asarray(u, dtype=np.float64)
    if u.shape != e.shape:
        raise ValueError(f"u and is_error must have the same length, got {u.shape} and {e.shape}")
    if not np.isfinite(u).all():
        raise ValueError("u has non-finite values")
    return e, u


def base_rate(is_error: Any) -> float:
    """Fraction of responses that are errors (b)."""
    e, _ = _check(is_error)
    return float(e.mean()) if e.size else float("nan")


def auroc(is_error: Any, u: Any) -> float:
    """``roc_auc_score(is_error, u)``: P(u_wrong > u_right) + P(tie)/2; NaN with one class."""
    from sklearn.metrics import roc_auc_score

    e, u = _check(is_error, u)
    if e.all() or not e.any():
        return float("nan")
    return float(roc_auc_score(e, u))


def auprc(is_error: Any, u: Any) -> float:
    """``average_precision_score(is_error, u)``; compare with :func:`base_rate`. NaN without errors."""
    from sklearn.metrics import average_precision_score

    e, u = _check(is_error, u)
    if not e.any():
        return float("nan")
    return float(average_precision_score(e, u))


def _sorted_quality(u: np.ndarray, q: np.ndarray, ties: str) -> np.ndarray:
    """q ordered from the most confident (smallest u) row; tied blocks per ``ties``."""
    if ties not in TIES:
        raise ValueError(f"ties = {ties!r} is not allowed: choose one of {', '.join(map(repr, TIES))}")
    if ties == "argsort":  # lm-polygraph's code path (np.argsort's default kind)
        return q[np.argsort(u)]
    order = np.argsort(u, kind="stable")
    qs, us = q[order].astype(np.float64), u[order]
    if ties == "mean" and qs.size:
        starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
        means = np.add.reduceat(qs, starts) / np.diff(np.r_[starts, qs.size])
        qs = np.repeat(means, np.diff(np.r_[starts, qs.size]))
    return qs


def _prefix_means(u: np.ndarray, q: np.ndarray, ties: str) -> np.ndarray:
    qs = _sorted_quality(u, q, ties)
    return np.cumsum(qs) / np.arange(1, qs.size + 1)


def prr(u: Any, is_error: Any, *, ties: str = "mean") -> float:
    """Raw PRR: (1/N) sum_{k=1..N} mean(q over the k rows with the smallest u), q = 1 - is_error."""
    e, u = _check(is_error, u)
    if not e.size:
        return float("nan")
    return float(_prefix_means(u, 1.0 - e, ties).mean())


def prr_oracle(is_error: Any) -> float:
    """PRR of the oracle u = -q (all correct rows first)."""
    e, _ = _check(is_error)
    return prr(e.astype(np.float64), e)  # u = is_error = 1 - q, same order as -q


def prr_random(is_error: Any) -> float:
    """Closed form of the random baseline: E[PRR] over uniformly random orders = mean(q)."""
    e, _ = _check(is_error)
    return float(1.0 - e.mean()) if e.size else float("nan")


def prr_random_shuffled(is_error: Any, n_shuffles: int = 1000, seed: int = 42) -> float:
    """The random baseline as lm-polygraph's ``get_random_scores`` computes it: the mean PRR of
    the scores ``arange(N)`` over ``n_shuffles`` in-place shuffles.

    Seeding: lm-polygraph calls ``np.random.seed(seed)`` (default 42) and then
    ``np.random.shuffle`` once per shuffle, i.e. the legacy Mersenne-Twister stream. We draw the
    same stream from a private ``np.random.RandomState(seed)``, so the shuffles, and hence the
    value, are identical to lm-polygraph's while numpy's global random state is left untouched.
    """
    e, _ = _check(is_error)
    stream = np.random.RandomState(seed)
    scores = np.arange(e.size)
    vals = []
    for _ in range(n_shuffles):
        stream.shuffle(scores)
        vals.append(prr(scores, e, ties="stable"))
    return float(np.mean(vals))


def normalized_prr(u: Any, is_error: Any, *, ties: str = "mean") -> float:
    """(PRR - PRR_random) / (PRR_oracle - PRR_random): 1 = oracle, 0 = random; NaN with one class."""
    e, u = _check(is_error, u)
    if e.all() or not e.any():
        return float("nan")
    rnd, orc = prr_random(e), prr_oracle(e)
    return float((prr(u, e, ties=ties) - rnd) / (orc - rnd))


def rejection_curve(u: Any, is_error: Any, *, ties: str = "mean") -> dict[str, np.ndarray]:
    """Prediction-rejection curve data: rejecting the most uncertain rows first, the mean quality
    (1 - error rate) of what is kept, for the detector, the oracle and random (mean(q)).

    Arrays of length N at rejection rates 0, 1/N, ..., (N-1)/N; PRR = mean of ``quality``.
    """
    e, u = _check(is_error, u)
    n = e.size
    q = 1.0 - e
    return {
        "rejection_rate": 1.0 - np.arange(n, 0, -1) / n,
        "quality": _prefix_means(u, q, ties)[::-1],
        "oracle": _prefix_means(e.astype(np.float64), q, "stable")[::-1],
        "random": np.full(n, q.mean() if n else np.nan),
    }


def precision_recall_f1(flagged: Any, is_error: Any) -> tuple[float, float, float]:
    """Precision, recall and F1 of the error class for boolean predictions ``flagged``.

    Precision is 0 when nothing is flagged; recall and F1 are NaN when there are no errors.
    """
    e, _ = _check(is_error)
    f = np.asarray(flagged, dtype=bool)
    if f.shape != e.shape:
        raise ValueError(f"flagged and is_error must have the same length, got {f.shape} and {e.shape}")
    tp = float((f & e).sum())
    n_flag, n_err = float(f.sum()), float(e.sum())
    p = tp / n_flag if n_flag else 0.0
    if not n_err:
        return p, float("nan"), float("nan")
    r = tp / n_err
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def choose_threshold(u_fit: Any, is_error_fit: Any) -> float:
    """Threshold maximising the error-class F1 on the fit split (flag u > threshold).

    Candidates: -inf (flag everything = always-error) and the midpoints between consecutive
    distinct u values. Ties in F1 go to the larger threshold (fewer flags).
    """
    e, u = _check(is_error_fit, u_fit)
    if not e.any():
        raise ValueError("cannot choose a threshold: the fit split has no errors")
    v = np.unique(u)
    cands = np.r_[-np.inf, (v[:-1] + v[1:]) / 2.0]
    best_f1, best_t = -1.0, -np.inf
    for t in cands:  # ascending: '>=' keeps the largest threshold among equal F1
        f1 = precision_recall_f1(u > t, e)[2]
        if f1 >= best_f1 - 1e-12:
            best_f1, best_t = f1, float(t)
    return best_t


def always_error_baseline(b: float) -> dict[str, float]:
    """Flag every response: precision b, recall 1, F1 2b/(1+b)."""
    return {"precision": b, "recall": 1.0, "f1": 2 * b / (1 + b) if b > 0 else 0.0}


def random_baseline(b: float, rate: float) -> dict[str, float]:
    """Flag each response independently with probability ``rate``: precision b, recall rate,
    F1 2 b rate / (b + rate) (from the expected precision and recall)."""
    return {"precision": b, "recall": rate, "f1": 2 * b * rate / (b + rate) if b + rate > 0 else 0.0}



# -- vectorised metrics over bootstrap resamples -------------------------------------------------
#
# A bootstrap resample is a vector of multiplicities w (how often each row was drawn). Sorting
# u once, every metric of every resample follows from per-tie-block sums of w over the errors
# (P_k) and over the correct rows (N_k), so no resample is ever sorted. Each *_w function takes
# u (n,), e (n,) and W (B, n) multiplicities and returns (B,) values equal to the scalar metric
# on the resampled rows (NaN where it is undefined); tests check this resample by resample.


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) row indices; row b equals the b-th resample drawn by
    ``trustlab.core.stats.bootstrap_ci`` with the same seed (``integers(0, n, n)`` per resample)."""
    return np.random.default_rng(seed).integers(0, n, (n_resamples, n)) if n_resamples else np.zeros((0, n), int)


def resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) multiplicities of each row in each resample of ``idx`` (B, m)."""
    idx = np.asarray(idx, dtype=np.int64)
    b = idx.shape[0]
    if b == 0:
        return np.zeros((0, n))
    flat = (idx + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


class _Blocks:
    """u sorted once; per resample, the weight of errors (P) and of correct rows (N) in every
    block of tied scores, in ascending order of u."""

    def __init__(self, u: Any, e: Any, W: np.ndarray):
        u = np.asarray(u, dtype=np.float64)
        e = np.asarray(e, dtype=bool)
        order = np.argsort(u, kind="stable")
        us, es = u[order], e[order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]]) if u.size else np.zeros(0, int)
        ws = np.asarray(W, dtype=np.float64)[:, order]
        if u.size:
            self.P = np.add.reduceat(ws * es, starts, axis=1)
            self.N = np.add.reduceat(ws * (1.0 - es), starts, axis=1)
        else:
            self.P = self.N = np.zeros((ws.shape[0], 0))
        self.p_tot, self.n_tot = self.P.sum(axis=1), self.N.sum(axis=1)
        self.n = ws.sum(axis=1)


def auroc_w(u: Any, e: Any, W: np.ndarray, _b: _Blocks | None = None) -> np.ndarray:
    """Mann-Whitney AUROC per resample: sum over tie blocks k of P_k (N_<k + N_k / 2) / (P N)
    (= ``roc_auc_score``: ties count 1/2); NaN with one class."""
    b = _b or _Blocks(u, e, W)
    below = np.cumsum(b.N, axis=1) - b.N
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (b.P * (below + 0.5 * b.N)).sum(axis=1) / (b.p_tot * b.n_tot)
    out[(b.p_tot == 0) | (b.n_tot == 0)] = np.nan
    return out


def auprc_w(u: Any, e: Any, W: np.ndarray, _b: _Blocks | None = None) -> np.ndarray:
    """Average precision per resample (= ``average_precision_score``): going down the distinct
    scores from the largest, AP = sum_k (P_k / P) * TP_k / (TP_k + FP_k) with TP_k, FP_k the
    error / correct weight at or above block k. NaN without errors."""
    b = _b or _Blocks(u, e, W)
    pd, nd = b.P[:, ::-1], b.N[:, ::-1]
    tp, fp = np.cumsum(pd, axis=1), np.cumsum(nd, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        out = (pd * prec).sum(axis=1) / b.p_tot
    out[b.p_tot == 0] = np.nan
    return out


def _harmonic(n: int) -> np.ndarray:
    """H[k] = sum_{j=1..k} 1/j for k = 0..n."""
    return np.r_[0.0, np.cumsum(1.0 / np.arange(1, n + 1))]


def normalized_prr_w(u: Any, e: Any, W: np.ndarray, _b: _Blocks | None = None) -> np.ndarray:
    """Normalised PRR per resample with ``ties="mean"``. A tie block k of W_k = P_k + N_k rows
    fills positions S_{k-1}+1 .. S_k of the ascending order with mean quality m_k = N_k / W_k,
    so with Q_{k-1} = correct weight before it the raw PRR is
    (1/n) sum_k [(Q_{k-1} - S_{k-1} m_k)(H_{S_k} - H_{S_{k-1}}) + N_k] (H = harmonic numbers).
    Oracle in closed form: with m correct rows, (m + m (H_n - H_m)) / n; random: m / n."""
    b = _b or _Blocks(u, e, W)
    size = b.P + b.N
    s = np.cumsum(size, axis=1)
    s_prev = s - size
    q_prev = np.cumsum(b.N, axis=1) - b.N
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(size > 0, b.N / np.where(size > 0, size, 1.0), 0.0)
    n_max = int(b.n.max()) if b.n.size else 0
    h = _harmonic(n_max)
    hs = h[np.rint(s).astype(int)] - h[np.rint(s_prev).astype(int)]
    nn = b.n
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = ((q_prev - s_prev * m) * hs + b.N).sum(axis=1) / nn
        mc = b.n_tot
        rnd = mc / nn
        orc = (mc + mc * (h[np.rint(nn).astype(int)] - h[np.rint(mc).astype(int)])) / nn
        out = (raw - rnd) / (orc - rnd)
    out[(b.p_tot == 0) | (b.n_tot == 0)] = np.nan
    return out


def prf_w(flagged: Any, e: Any, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 of the error class per resample for fixed flags, as
    :func:`precision_recall_f1` (precision 0 without flags; recall and F1 NaN without errors)."""
    f = np.asarray(flagged, dtype=np.float64)
    ee = np.asarray(e, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    tp, nf, ne = W @ (f * ee), W @ f, W @ ee
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(nf > 0, tp / np.where(nf > 0, nf, 1.0), 0.0)
        r = np.where(ne > 0, tp / np.where(ne > 0, ne, 1.0), np.nan)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return p, r, np.where(ne > 0, f1, np.nan)


def percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap values (NaN, NaN if there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def batch_metrics(u: np.ndarray, e: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """base_rate, auroc, auprc, prr (normalised) for every resample (multiplicities W)."""
    blocks = _Blocks(u, e, W)
    with np.errstate(invalid="ignore", divide="ignore"):
        base = blocks.p_tot / blocks.n
    return {"base_rate": base, "auroc": auroc_w(u, e, W, blocks), "auprc": auprc_w(u, e, W, blocks),
            "prr": normalized_prr_w(u, e, W, blocks)}  # fmt: skip


def evaluate(
    u_test: Any,
    is_error_test: Any,
    u_fit: Any | None = None,
    is_error_fit: Any | None = None,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    ties: str = "mean",
) -> dict[str, Any]:
    """Every metric for one detector on one test set, with bootstrap CIs (``<key>_lo/_hi``).

    Keys: ``n, n_errors, base_rate(+CI), auroc, auprc, prr`` (normalised), ``prr_raw,
    prr_oracle, prr_random``. With ``u_fit``/``is_error_fit``: ``threshold`` (max F1 on fit),
    ``fit_f1``, ``precision, recall, f1, flag_rate`` on test at that threshold,
    ``f1_minus_always_error`` (paired CI), and the baselines ``always_error_{precision,recall,f1}``,
    ``random_{precision,recall,f1}`` (flag rate = fit base rate), ``coin_f1`` (rate 1/2).
    """
    e, u = _check(is_error_test, u_test)
    out: dict[str, Any] = {"n": int(e.size), "n_errors": int(e.sum())}
    W = resample_weights(resample_indices(e.size, n_resamples, seed), e.size)
    boot = batch_metrics(u, e, W) if e.size else {}
    points = {"base_rate": base_rate(e), "auroc": auroc(e, u), "auprc": auprc(e, u),
              "prr": normalized_prr(u, e, ties=ties)}  # fmt: skip

    def put(key: str, point: float, values: np.ndarray | None) -> None:
        out[key] = point
        out[f"{key}_lo"], out[f"{key}_hi"] = (
            percentile_ci(values, level) if values is not None and len(values) else (float("nan"), float("nan"))
        )

    for key, point in points.items():
        put(key, point, boot.get(key))
    out["prr_raw"] = prr(u, e, ties=ties)
    out["prr_oracle"] = prr_oracle(e)
    out["prr_random"] = prr_random(e)
    if (u_fit is None) != (is_error_fit is None):
        raise ValueError("give both u_fit and is_error_fit (for the P/R/F1 threshold) or neither")
    if u_fit is not None:
        ef, uf = _check(is_error_fit, u_fit)
        thr = choose_threshold(uf, ef)
        b, b_fit = out["base_rate"], float(ef.mean())
        out["threshold"] = thr
        out["fit_f1"] = precision_recall_f1(uf > thr, ef)[2]
        out["flag_rate"] = float((u > thr).mean()) if u.size else float("nan")
        prf = precision_recall_f1(u > thr, e)
        bp, br, bf = prf_w(u > thr, e, W) if len(W) else (None, None, None)
        for key, point, values in zip(("precision", "recall", "f1"), prf, (bp, br, bf)):
            put(key, point, values)
        gain_boot = None
        if bf is not None:
            bb = (W @ e.astype(np.float64)) / W.sum(axis=1)
            gain_boot = bf - np.where(bb > 0, 2 * bb / (1 + bb), 0.0)
        put("f1_minus_always_error", prf[2] - always_error_baseline(b)["f1"], gain_boot)
        for name, base in (("always_error", always_error_baseline(b)), ("random", random_baseline(b, b_fit))):
            for k, v in base.items():
                out[f"{name}_{k}"] = v
        out["random_rate"] = b_fit
        out["coin_f1"] = random_baseline(b, 0.5)["f1"]
    return out


def compare(
    u_a: Any,
    u_b: Any,
    is_error: Any,
    metric: str = "auroc",
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap of metric(u_a) - metric(u_b) on the same rows: (difference, lo, hi)."""
    fns = {"auroc": auroc_w, "auprc": auprc_w, "prr": normalized_prr_w}
    scalar = {
        "auroc": lambda u, e: auroc(e, u),
        "auprc": lambda u, e: auprc(e, u),
        "prr": lambda u, e: normalized_prr(u, e),
    }
    if metric not in fns:
        raise ValueError(f"metric = {metric!r} is not allowed: choose one of {', '.join(map(repr, fns))}")
    e, a = _check(is_error, u_a)
    _, b = _check(is_error, u_b)
    diff = scalar[metric](a, e) - scalar[metric](b, e)
    W = resample_weights(resample_indices(e.size, n_resamples, seed), e.size)
    if not len(W):
        return diff, float("nan"), float("nan")
    lo, hi = percentile_ci(fns[metric](a, e, W) - fns[metric](b, e, W), level)
    return diff, lo, hi
