"""SPC-UQ's residual head and Meta Ranking's comparator on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from trustlab.error_detection.estimators import build_estimator
from trustlab.error_detection.meta_ranking import MetaRanking, PairwiseComparator, reliability
from trustlab.error_detection.metrics import auroc
from trustlab.error_detection.spc import ResidualHead, calibrated_residual, spc_token_scores, token_features


@pytest.fixture(scope="module")
def fit_test(stats):
    return stats.fit_test()


def test_residual_head_recovers_two_p_one_minus_p_on_a_calibrated_case():
    gen = np.random.default_rng(0)
    p = gen.uniform(0.02, 0.98, 6000)
    right = gen.random(len(p)) < p  # calibrated: the top-1 class is right with probability p
    entropy, var = gen.uniform(0, 2, len(p)), gen.uniform(0, 1, len(p))  # carry nothing here
    x_fit = token_features(p, entropy, var, gen.normal(size=3))
    head = ResidualHead().fit(x_fit, np.abs(right - p))
    grid = np.linspace(0.05, 0.95, 19)
    x = token_features(grid, np.ones_like(grid), np.full_like(grid, 0.5), np.zeros(3))
    x[:, 5] = 0.5  # every grid point at the same position
    assert np.abs(head.predict(x) - calibrated_residual(grid)).max() < 0.06
    # on a calibrated model the SPC score is (near) zero; a head that says "always wrong" is not
    assert spc_token_scores(head.predict(x), grid).mean() < 0.06
    assert spc_token_scores(1.0 - grid, grid).mean() > 0.3


def test_spc_uq_runs_on_both_spans_and_separates_a_synthetic_signal(fit_test):
    fit, test = fit_test
    for span in ("answer", "response"):
        u = build_estimator("spc_uq", span=span).fit(fit).score(test)
        assert u.shape == (test.n,) and np.isfinite(u).all() and (u >= 0).all()


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
