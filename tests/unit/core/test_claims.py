"""The claims engine against values computed independently: scipy's tests, hand-computed
intervals, an exact permutation count, a power table and a Monte-Carlo power estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trustlab.core import claims
from trustlab.core.claims import ClaimSpec

RATE = ClaimSpec(id="rate-up", claim="the method raises the rate", paper="A et al. 2024", metric="rate",
                 method="m", baseline="b", expected="increase", range=(0.0, 1.0))  # fmt: skip
ITEMS = ClaimSpec(id="auroc-up", claim="the detector ranks errors better", paper="B et al. 2023", metric="auroc",
                  method="m", baseline="b", expected="increase", unit="items", range=(0.0, 1.0))  # fmt: skip


def test_seed_row_matches_scipy_paired_t_test_and_a_hand_computed_interval():
    method = [0.30, 0.25, 0.28, 0.35, 0.31]
    baseline = [0.20, 0.22, 0.21, 0.24, 0.26]
    row = claims.seed_row("fam", RATE, method, baseline)
    d = np.subtract(method, baseline)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert row["id"] == "fam/rate-up" and row["unit"] == "seeds" and row["n"] == 5
    assert row["test"] == claims.TEST_T
    assert row["p_value"] == pytest.approx(stats.ttest_rel(method, baseline).pvalue, rel=1e-12)
    assert row["effect"] == pytest.approx(d.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["p_value"] < 0.05 and row["verdict"] == "supported"
    assert list(row) == list(claims.COLUMNS) and claims.audit([row]) == []


def test_seed_row_pairs_dicts_on_their_common_seeds():
    row = claims.seed_row("fam", RATE, {0: 0.3, 1: 0.5, 2: 0.4, 9: 0.9}, {2: 0.1, 1: 0.3, 0: 0.2})
    assert row["n"] == 3 and row["effect"] == pytest.approx((0.1 + 0.2 + 0.3) / 3)


def test_three_identical_differences_use_the_exact_sign_flip_test():
    baseline = np.array([0.2, 0.4, 0.3])
    row = claims.seed_row("fam", RATE, baseline + 0.05, baseline)
    # 2**3 sign patterns, two as extreme as the observed one: p = 2 / 8
    assert row["test"] == claims.TEST_SIGN_FLIP and row["p_value"] == pytest.approx(0.25)
    assert row["verdict"] == "inconclusive"
    assert claims.seeds_needed_for_sign_flip() == 6 and "at least 6 seeds" in row["reason"]
    assert row["mde"] is None  # no effect size reaches p < 0.05 with 3 seeds: infinite, stored as null
    assert claims.audit([row]) == []


def test_six_identical_differences_can_be_supported_by_the_sign_flip_test():
    baseline = np.linspace(0.1, 0.6, 6)
    row = claims.seed_row("fam", RATE, baseline + 0.05, baseline)
    assert row["p_value"] == pytest.approx(2 / 2**6) and row["verdict"] == "supported"


def test_interval_is_clipped_to_the_feasible_range_of_the_difference():
    # a rate in [0, 1]: the difference lies in [-1, 1]; the raw t-interval reaches past 1
    method, baseline = [1.0, 0.2, 0.9], [0.0, 0.1, 0.05]
    d = np.subtract(method, baseline)
    raw_high = d.mean() + stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert raw_high > 1
    row = claims.seed_row("fam", RATE, method, baseline)
    assert row["ci_high"] == 1.0 and row["ci_low"] >= -1.0
    assert claims.audit([row]) == []


def test_nan_and_missing_seeds_give_not_evaluated_rows():
    row = claims.seed_row("fam", RATE, [0.3, float("nan"), 0.2], [0.1, 0.2, 0.1])
    assert row["verdict"] == "not evaluated" and row["test"] == "none" and "NaN" in row["reason"]
    assert row["effect"] is None and row["p_value"] is None and row["power"] == "not evaluated"
    single = claims.seed_row("fam", RATE, [0.3], [0.1])
    assert single["verdict"] == "not evaluated" and "at least 2" in single["reason"]
    item = claims.item_row("fam", ITEMS, float("nan"), np.zeros(1000), n=50)
    assert item["verdict"] == "not evaluated" and "NaN" in item["reason"]
    skipped = claims.unevaluated_row("fam", RATE, "the variant was not run")
    assert skipped["verdict"] == "not evaluated" and skipped["reason"] == "the variant was not run"
    assert all(claims.audit([r]) == [] for r in (row, single, item, skipped))


def test_mde_matches_a_power_table_and_a_monte_carlo_estimate():
    # Cohen's d a two-sided paired t-test with 10 pairs detects with 80% power at the 5% level
    # (G*Power: 0.996)
    assert claims.mde_paired_t(1.0, 10) == pytest.approx(0.996, abs=2e-3)
    assert claims.mde_paired_t(2.0, 10) == pytest.approx(2 * claims.mde_paired_t(1.0, 10))
    # simulated: a true effect of the MDE is detected in about 80% of experiments
    n, sd = 5, 0.03
    mde = claims.mde_paired_t(sd, n)
    d = np.random.default_rng(0).normal(mde, sd, size=(40_000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    power = np.mean(2 * stats.t.sf(np.abs(t), n - 1) < 0.05)
    assert power == pytest.approx(0.80, abs=0.01)


def test_item_row_p_value_interval_and_mde_from_known_replicates():
    reps = np.linspace(-0.01, 0.09, 1001)  # steps of 1e-4: 101 replicates <= 0
    row = claims.item_row("fam", ITEMS, 0.04, reps, n=200)
    assert row["test"] == claims.TEST_BOOTSTRAP and row["n"] == 200
    assert row["p_value"] == pytest.approx(2 * 101 / 1001)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-0.0075, 0.0875))
    assert row["mde"] == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * reps.std(ddof=1))
    assert row["verdict"] == "inconclusive" and "training-seed variation" in row["reason"]
    # every replicate above 0: p is floored at one replicate's share, not reported as 0
    sure = claims.item_row("fam", ITEMS, 0.05, np.linspace(0.01, 0.09, 500), n=200)
    assert sure["p_value"] == pytest.approx(1 / 500) and sure["verdict"] == "supported"
    assert claims.audit([row]) == [] and claims.audit([sure]) == []


def test_item_row_bootstrap_with_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.1, 300), rng.normal(0.5, 0.1, 300)
    row = claims.item_row_bootstrap("fam", ITEMS, [a, b], lambda x, y: x.mean() - y.mean(), n_resamples=999)
    assert row["effect"] == pytest.approx(a.mean() - b.mean()) and row["verdict"] == "supported"
    assert row["ci_low"] < row["effect"] < row["ci_high"] and claims.audit([row]) == []


def test_the_unit_must_match_the_row_maker():
    with pytest.raises(ValueError, match="needs 'seeds'"):
        claims.seed_row("fam", ITEMS, [1, 2], [0, 1])
    with pytest.raises(ValueError, match="needs 'items'"):
        claims.item_row("fam", RATE, 0.1, np.zeros(200), n=10)
    with pytest.raises(ValueError, match="declared twice"):
        claims.check_specs([RATE, RATE])


def test_verdict_counts_are_by_unique_claim_id():
    baseline = np.array([0.20, 0.22, 0.21])
    sup = claims.seed_row("fam", RATE, baseline + [0.10, 0.12, 0.14], baseline)
    other = claims.unevaluated_row("fam", ITEMS, "not run")
    counts = claims.count_verdicts([sup, sup, other])
    assert counts == {"supported": 1, "not supported": 0, "inconclusive": 0, "not evaluated": 1}


# -- the audit ---------------------------------------------------------------------------------


@pytest.fixture
def good_row():
    baseline = np.array([0.20, 0.22, 0.21])
    row = claims.seed_row("fam", RATE, baseline + [0.10, 0.12, 0.14], baseline)
    assert row["verdict"] == "supported" and claims.audit([row]) == []
    return row


def _audit(row) -> str:
    return "\n".join(claims.audit([row]))


def test_audit_catches_a_verdict_that_contradicts_the_rule(good_row):
    assert "the rule gives 'supported'" in _audit({**good_row, "verdict": "inconclusive"})
    assert "the rule gives 'inconclusive'" in _audit({**good_row, "p_value": 0.2})
    flipped = {**good_row, "expected": "decrease"}
    assert "the rule gives 'not supported'" in _audit(flipped)


def test_audit_catches_an_interval_outside_the_feasible_range(good_row):
    assert "leaves the feasible range" in _audit({**good_row, "ci_high": 1.5})
    assert "does not contain the effect" in _audit({**good_row, "ci_low": good_row["effect"] + 0.01})


def test_audit_catches_duplicate_ids(good_row):
    assert any("duplicate id" in p for p in claims.audit([good_row, dict(good_row)]))


def test_audit_catches_a_missing_or_unknown_unit_and_test(good_row):
    no_unit = {k: v for k, v in good_row.items() if k != "unit"}
    assert "missing columns unit" in _audit(no_unit)
    assert "unit None is neither" in _audit({**good_row, "unit": None})
    assert "test None is not one of" in _audit({**good_row, "test": None})
    assert "without a test" in _audit({**good_row, "test": "none"})
    assert "does not fit unit" in _audit({**good_row, "test": claims.TEST_BOOTSTRAP})


def test_audit_catches_supported_on_a_zero_width_t_interval(good_row):
    flat = {**good_row, "ci_low": good_row["effect"], "ci_high": good_row["effect"]}
    assert "zero-width t-interval" in _audit(flat)


def test_audit_catches_a_decision_on_an_interval_that_includes_zero(good_row):
    assert "includes 0" in _audit({**good_row, "ci_low": -0.01})
