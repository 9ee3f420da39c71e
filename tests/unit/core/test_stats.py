from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from trustlab.core.stats import bootstrap_ci, claim_from_seeds, mean_std, t_ci, verdict


def test_t_ci_matches_scipy():
    x = [0.1, 0.3, 0.2, 0.5, 0.4]
    m, lo, hi = t_ci(x)
    ref = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert m == pytest.approx(0.3) and (lo, hi) == pytest.approx(ref)


def test_mean_std_single_value():
    assert mean_std([2.0]) == (2.0, 0.0)


@pytest.mark.parametrize(
    "lo, hi, expected, out",
    [(-2, -1, "decrease", "supported"), (1, 2, "decrease", "not supported"), (-1, 1, "decrease", "inconclusive"),
     (1, 2, "increase", "supported"), (float("nan"), 1, "increase", "inconclusive")],
)
def test_verdict(lo, hi, expected, out):
    assert verdict(lo, hi, expected) == out


def test_claim_pairs_by_seed():
    c = claim_from_seeds("f", "lower is better", "paper", "ece", [0.1, 0.2, 0.15], [0.3, 0.41, 0.35], "decrease")
    assert c.effect == pytest.approx(-0.203333, abs=1e-5) and c.verdict == "supported" and c.n_seeds == 3


def test_bootstrap_ci_contains_point_and_is_deterministic():
    x = np.random.default_rng(0).normal(size=200)
    a = bootstrap_ci(x, seed=3)
    assert a == bootstrap_ci(x, seed=3) and a[1] <= a[0] <= a[2]
