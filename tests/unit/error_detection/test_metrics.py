"""Error-detection metrics: AUROC/AUPRC, lm-polygraph's PRR, P/R/F1 with baselines, evaluate()."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from trustlab.error_detection import metrics as M


def _pairwise_auroc(e, u):
    pos, neg = u[e], u[~e]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _lm_polygraph_prr(u, q):
    """The formula of lm-polygraph's PredictionRejectionArea, written out (tie-free input)."""
    order = np.argsort(u)
    s = q[order]
    scores = (np.cumsum(s) / np.arange(1, len(s) + 1))[::-1]
    return float(np.sum(scores) / len(s))


def _data(n=200, seed=0, strength=1.0):
    gen = np.random.default_rng(seed)
    e = gen.random(n) < 0.4
    u = gen.normal(size=n) + strength * e
    return e, u


def test_prr_hand_checked_tiny_example():
    e = np.array([False, True, False])  # q = 1, 0, 1
    # ascending u -> q = 1, 1, 0 -> prefix means 1, 1, 2/3 -> PRR = 8/9 (= oracle)
    u = np.array([0.1, 0.5, 0.3])
    assert M.prr(u, e) == pytest.approx(8 / 9)
    assert M.prr_oracle(e) == pytest.approx(8 / 9)
    assert M.prr_random(e) == pytest.approx(2 / 3)
    assert M.normalized_prr(u, e) == pytest.approx(1.0)
    # worst order: q = 0, 1, 1 -> prefix means 0, 1/2, 2/3 -> PRR = 7/18; normalised -5/4
    u_bad = np.array([0.5, 0.1, 0.3])
    assert M.prr(u_bad, e) == pytest.approx(7 / 18)
    assert M.normalized_prr(u_bad, e) == pytest.approx((7 / 18 - 2 / 3) / (8 / 9 - 2 / 3))
    assert M.normalized_prr(u_bad, e) == pytest.approx(-1.25)


def test_prr_oracle_is_one_and_random_is_about_zero():
    e, u = _data(400)
    q = 1.0 - e
    assert M.normalized_prr(-q, e) == pytest.approx(1.0)
    assert M.normalized_prr(e.astype(float), e) == pytest.approx(1.0)
    gen = np.random.default_rng(1)
    vals = [M.normalized_prr(gen.random(e.size), e) for _ in range(200)]
    assert abs(np.mean(vals)) < 0.02
    assert M.normalized_prr(u, e) > 0.2  # an informative score beats random


def test_prr_matches_lm_polygraph_formula_without_ties():
    e, u = _data(150, seed=3)
    q = 1.0 - e
    ref = _lm_polygraph_prr(u, q)
    for ties in M.TIES:
        assert M.prr(u, e, ties=ties) == pytest.approx(ref, abs=1e-12)


def test_random_baseline_closed_form_agrees_with_shuffles():
    e, _ = _data(120, seed=5)
    assert M.prr_random_shuffled(e, n_shuffles=2000, seed=0) == pytest.approx(M.prr_random(e), abs=5e-3)


def test_shuffled_random_baseline_is_seeded_like_lm_polygraph():
    """Reference: lm-polygraph's loop, np.random.seed(seed) then np.random.shuffle of arange(N)
    once per iteration; ours must give the same value and leave the global state alone."""
    e, _ = _data(50, seed=7)
    saved = np.random.get_state()
    try:
        np.random.seed(42)
        scores = np.arange(e.size)
        ref = []
        for _ in range(200):
            np.random.shuffle(scores)
            ref.append(_lm_polygraph_prr(scores, 1.0 - e))
        expected = float(np.mean(ref))
        np.random.seed(123)
        before = np.random.get_state()[1].copy()
        got = M.prr_random_shuffled(e, n_shuffles=200)
        assert np.array_equal(np.random.get_state()[1], before)  # the global stream is not consumed
    finally:
        np.random.set_state(saved)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got != M.prr_random_shuffled(e, n_shuffles=200, seed=43)


def test_prr_ties_mean_is_expectation_over_tie_orders():
    u = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    e = np.array([False, True, False, False, True, False])
    tied = [1, 2, 3]
    vals = []
    for perm in itertools.permutations(range(3)):
        for perm2 in itertools.permutations(range(2)):
            order = [0] + [tied[p] for p in perm] + [[4, 5][p] for p in perm2]
            uu = np.empty(6)
            uu[order] = np.arange(6)  # a tie-free score giving this order
            vals.append(M.prr(uu, e, ties="stable"))
    assert M.prr(u, e, ties="mean") == pytest.approx(np.mean(vals))


def test_auroc_agrees_with_pairwise_and_auprc_with_sklearn():
    e, u = _data(120, seed=2)
    u = np.round(u, 1)  # create ties
    assert M.auroc(e, u) == pytest.approx(_pairwise_auroc(e, u))
    assert M.auprc(e, u) == pytest.approx(average_precision_score(e, u))
    assert np.isnan(M.auroc(np.zeros(5, bool), np.arange(5.0)))


def test_rejection_curve_area_is_prr():
    e, u = _data(80, seed=4)
    c = M.rejection_curve(u, e)
    assert c["rejection_rate"][0] == 0.0 and len(c["quality"]) == 80
    assert c["quality"].mean() == pytest.approx(M.prr(u, e))
    assert c["oracle"].mean() == pytest.approx(M.prr_oracle(e))
    assert np.all(c["oracle"] >= c["quality"] - 1e-12)
    assert c["quality"][0] == pytest.approx(1 - e.mean())


def test_threshold_maximises_fit_f1():
    e, u = _data(100, seed=6)
    thr = M.choose_threshold(u, e)
    f1 = M.precision_recall_f1(u > thr, e)[2]
    best = max(M.precision_recall_f1(u >= t, e)[2] for t in np.unique(u))
    assert f1 == pytest.approx(best)
    # uninformative scores: flag everything (always-error) is optimal
    e2 = np.array([True, True, False, True])
    assert M.choose_threshold(np.zeros(4), e2) == -np.inf


def test_baseline_closed_forms():
    b = 0.62
    assert M.always_error_baseline(b)["f1"] == pytest.approx(2 * b / (1 + b))
    e = np.r_[np.ones(62, bool), np.zeros(38, bool)]
    p, r, f1 = M.precision_recall_f1(np.ones(100, bool), e)
    assert (p, r, f1) == pytest.approx((b, 1.0, 2 * b / (1 + b)))
    rb = M.random_baseline(b, b)
    assert rb == pytest.approx({"precision": b, "recall": b, "f1": b})
    # Monte Carlo: flagging at rate r gives precision ~ b and recall ~ r
    gen = np.random.default_rng(0)
    big = gen.random(200_000) < b
    flags = gen.random(big.size) < 0.3
    p, r, _ = M.precision_recall_f1(flags, big)
    assert p == pytest.approx(b, abs=0.01) and r == pytest.approx(0.3, abs=0.01)


def test_evaluate_returns_everything_with_cis():
    e, u = _data(150, seed=7, strength=2.0)
    ef, uf = _data(150, seed=8, strength=2.0)
    out = M.evaluate(u, e, uf, ef, n_resamples=100, seed=0)
    for key in ("auroc", "auprc", "prr", "base_rate", "precision", "recall", "f1", "f1_minus_always_error"):
        assert out[f"{key}_lo"] <= out[key] <= out[f"{key}_hi"], key
    assert out["base_rate"] == pytest.approx(e.mean())
    assert out["always_error_f1"] == pytest.approx(2 * e.mean() / (1 + e.mean()))
    assert out["random_recall"] == pytest.approx(ef.mean())
    assert out["auroc"] > 0.8
    assert out["f1"] - out["always_error_f1"] == pytest.approx(out["f1_minus_always_error"])
    plain = M.evaluate(u, e, n_resamples=0)
    assert "f1" not in plain and np.isnan(plain["auroc_lo"])
    with pytest.raises(ValueError, match="both u_fit and is_error_fit"):
        M.evaluate(u, e, u_fit=uf)


def test_compare_is_paired_difference():
    e, u = _data(150, seed=9, strength=2.0)
    diff, lo, hi = M.compare(u, -u, e, "auroc", n_resamples=100)
    assert diff == pytest.approx(M.auroc(e, u) - M.auroc(e, -u))
    assert lo > 0
    with pytest.raises(ValueError, match="not allowed"):
        M.compare(u, u, e, "accuracy")


def test_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        M.auroc(np.array([True, False]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="non-finite"):
        M.prr(np.array([np.nan, 1.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="ties"):
        M.prr(np.array([0.0, 1.0]), np.array([True, False]), ties="random")
    assert np.isnan(M.normalized_prr(np.array([0.0, 1.0]), np.array([True, True])))


# -- vectorised bootstrap ----------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_batch_metrics_equal_the_scalar_ones_on_every_resample(ties):
    e, u = _data(90, seed=11, strength=1.0)
    if ties:
        u = np.round(u, 0)  # many tied scores
    idx = M.resample_indices(len(e), 60, seed=4)
    W = M.resample_weights(idx, len(e))
    assert (W.sum(axis=1) == len(e)).all() and W[3, idx[3, 0]] == (idx[3] == idx[3, 0]).sum()
    got = M.batch_metrics(u, e, W)
    for b in range(len(idx)):
        ub, eb = u[idx[b]], e[idx[b]]
        assert got["auroc"][b] == pytest.approx(M.auroc(eb, ub), abs=1e-12)
        assert got["auprc"][b] == pytest.approx(M.auprc(eb, ub), abs=1e-12)
        assert got["prr"][b] == pytest.approx(M.normalized_prr(ub, eb), abs=1e-12)
        assert got["base_rate"][b] == pytest.approx(eb.mean())
    p, r, f = M.prf_w(u > 0.3, e, W)
    for b in range(len(idx)):
        assert (p[b], r[b], f[b]) == pytest.approx(M.precision_recall_f1(u[idx[b]] > 0.3, e[idx[b]]))


def test_batch_metrics_one_class_resamples_are_nan():
    e = np.array([True, True, True])
    u = np.array([0.1, 0.2, 0.3])
    got = M.batch_metrics(u, e, M.resample_weights(M.resample_indices(3, 5, seed=0), 3))
    assert np.isnan(got["auroc"]).all() and np.isnan(got["prr"]).all()
    assert (got["auprc"] == 1.0).all()


def test_evaluate_cis_equal_the_reference_bootstrap():
    """Same resamples as trustlab.core.stats.bootstrap_ci with the same seed, hence the same CIs."""
    from trustlab.core.stats import bootstrap_ci

    e, u = _data(120, seed=12, strength=1.0)
    out = M.evaluate(u, e, n_resamples=300, seed=5)
    for key, fn in (("auroc", lambda uu, ee: M.auroc(ee, uu)), ("auprc", lambda uu, ee: M.auprc(ee, uu)),
                    ("prr", lambda uu, ee: M.normalized_prr(uu, ee))):
        ref = bootstrap_ci(None, fn, n_resamples=300, seed=5, paired=(u, e))
        assert (out[key], out[f"{key}_lo"], out[f"{key}_hi"]) == pytest.approx(ref, abs=1e-12)
    diff = M.compare(u, -u, e, "prr", n_resamples=300, seed=5)
    ref = bootstrap_ci(None, lambda a, b, ee: M.normalized_prr(a, ee) - M.normalized_prr(b, ee), n_resamples=300,
                       seed=5, paired=(u, -u, e))
    assert diff == pytest.approx(ref, abs=1e-12)
