"""SPC-UQ's residual head and Meta Ranking's comparator on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from trustlab.error_detection.estimators import build_estimator
from trustlab.error_detection.meta_ranking import MetaRanking, PairwiseComparator, reliability
from trustlab.error_detection.metrics import auroc
from trustlab.error_detection.spc import (
    SPC_UNCERTAINTIES,
    ResidualHead,
    adjusted_confidence,
    calibrated_residual,
    residual_targets,
    spc_token_scores,
    token_features,
)


@pytest.fixture(scope="module")
def fit_test(stats):
    return stats.fit_test()


def test_residual_head_recovers_two_p_one_minus_p_on_a_calibrated_case():
    gen = np.random.default_rng(0)
    p = gen.uniform(0.02, 0.98, 6000)
    right = gen.random(len(p)) < p  # calibrated: the top-1 class is right with probability p
    entropy, var = gen.uniform(0, 2, len(p)), gen.uniform(0, 1, len(p))  # carry nothing here
    x_fit = token_features(p, entropy, var, gen.normal(size=3))
    head = ResidualHead().fit(x_fit, residual_targets(right, p))
    grid = np.linspace(0.05, 0.95, 19)
    x = token_features(grid, np.ones_like(grid), np.full_like(grid, 0.5), np.zeros(3))
    x[:, 5] = 0.5  # every grid point at the same position
    mar, mar_up, mar_down = head.predict(x).T
    assert np.abs(mar - calibrated_residual(grid)).max() < 0.06
    # a linear head keeps the split-point identity mar = mar_up + mar_down exactly
    assert np.allclose(mar, mar_up + mar_down, atol=1e-12)
    # on a calibrated model the SPC discrepancy is (near) zero; a head that says "always wrong" is not
    assert spc_token_scores(mar, grid).mean() < 0.06
    assert spc_token_scores(1.0 - grid, grid).mean() > 0.3
    # ... and the split-point adjustment leaves the calibrated probability where it is
    assert np.abs(adjusted_confidence(grid, mar_up, mar_down) - grid).max() < 0.06


def test_residual_targets_by_hand():
    t = residual_targets(np.array([True, False]), np.array([0.8, 0.3]))
    assert t == pytest.approx(np.array([[0.2, 0.2, 0.0], [0.3, 0.0, 0.3]]))
    assert adjusted_confidence(np.array([0.8]), np.array([0.2]), np.array([0.0])) == pytest.approx([1.0])


def test_adjusted_confidence_keeps_the_sign_that_the_discrepancy_drops():
    """Two groups of tokens: underconfident ones (p in [0.05, 0.25], right 90% of the time) and
    overconfident ones (p in [0.6, 0.8], right 30% of the time); the entropy feature is the group
    indicator, so p H makes both heads' answers linear. The unsigned discrepancy
    |q - p| |1 - 2p| is largest on the underconfident, mostly right tokens, so it ranks errors
    below chance (so does MSP: the errors have the high p); the adjusted confidence
    q = p + mar_up - mar_down recovers each group's rate and ranks them right."""
    gen = np.random.default_rng(2)

    def tokens(n):
        under = gen.random(n) < 0.5
        p = np.where(under, gen.uniform(0.05, 0.25, n), gen.uniform(0.6, 0.8, n))
        right = gen.random(n) < np.where(under, 0.9, 0.3)
        x = token_features(p, under.astype(float), np.ones(n), np.zeros(1))
        return x, p, right, under

    x_fit, p_fit, right_fit, _ = tokens(4000)
    head = ResidualHead().fit(x_fit, residual_targets(right_fit, p_fit))
    x, p, right, under = tokens(2000)
    mar, mar_up, mar_down = head.predict(x).T
    q = adjusted_confidence(p, mar_up, mar_down)
    assert abs(q[under].mean() - 0.9) < 0.05 and abs(q[~under].mean() - 0.3) < 0.05
    assert auroc(~right, 1.0 - p) < 0.3  # MSP: inverted by construction
    assert auroc(~right, spc_token_scores(np.clip(mar, 0, 1), p)) < 0.3  # the paper's discrepancy
    assert auroc(~right, 1.0 - q) > 0.75  # the adjusted confidence


def test_spc_uq_runs_on_both_spans_and_both_uncertainties(fit_test):
    fit, test = fit_test
    for span in ("answer", "response"):
        for kind in SPC_UNCERTAINTIES:
            u = build_estimator("spc_uq", span=span, uncertainty=kind).fit(fit).score(test)
            assert u.shape == (test.n,) and np.isfinite(u).all()
            if kind == "discrepancy":
                assert (u >= 0).all() and (u <= 2).all()
    est = build_estimator("spc_uq").fit(fit)
    assert est.uncertainty == "adjusted_confidence" and "uncertainty='adjusted_confidence'" in repr(est)
    # the detector's u is the span mean of the token uncertainties
    per_token, row = est.token_scores(test.without_labels())
    assert est.score(test) == pytest.approx(np.bincount(row, per_token, test.n) / np.bincount(row, minlength=test.n))


def test_spc_uq_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"uncertainty = 'total' is not allowed: one of 'adjusted_confidence', "):
        build_estimator("spc_uq", uncertainty="total")
    with pytest.raises(ValueError, match="alpha = -1.0: alpha >= 0"):
        build_estimator("spc_uq", alpha=-1.0)


def test_comparator_ranks_a_known_correct_reference_above_a_known_wrong_one():
    gen = np.random.default_rng(1)
    right = gen.normal(1.0, 0.5, (200, 5))  # right responses: higher features
    wrong = gen.normal(-1.0, 0.5, (200, 5))
    judge = PairwiseComparator().fit(right, wrong)
    a, b = np.ones((1, 5)), -np.ones((1, 5))
    assert judge.prob(a, b)[0] > 0.9 and judge.prob(b, a)[0] < 0.1
    assert np.isclose(judge.prob(a, b)[0] + judge.prob(b, a)[0], 1.0) and np.isclose(judge.prob(a, a)[0], 0.5)
    # votes weighted by correctness: beating correct references counts for, losing to wrong ones against
    assert reliability(np.array([1.0, 1.0]), np.array([1, 1])) == 2.0
    assert reliability(np.array([0.0, 0.0]), np.array([0, 0])) == -2.0
    assert reliability(np.array([0.0, 1.0]), np.array([1, 0])) == 0.0


def test_meta_ranking_uses_five_fit_references_and_never_the_target(fit_test):
    fit, test = fit_test
    est = build_estimator("meta_ranking").fit(fit)
    assert isinstance(est, MetaRanking) and est.calls_per_response == 5
    refs = est.references(str(fit.ids[0]), str(fit.task[0]))
    assert len(refs) == 5 and str(fit.ids[0]) not in est.ref_ids_[refs]
    assert np.array_equal(refs, est.references(str(fit.ids[0]), str(fit.task[0])))  # seeded by the id
    u = est.score(test)
    assert auroc(test.is_error, u) > 0.6
