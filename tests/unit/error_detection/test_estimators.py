"""Error detectors on synthetic statistics: formulas, RPC, Mahalanobis, leakage guards, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import weibull_min

from trustlab.error_detection import estimators as E
from trustlab.error_detection.metrics import auroc
from trustlab.error_detection.statistics import GenerationStats, LabelAccessError, token_statistics
from trustlab.error_detection.synthetic import synthetic_stats


@pytest.fixture(scope="module")
def stats():
    return synthetic_stats(n=160, K=6, n_layers=3, d=6, seed=0)


@pytest.fixture(scope="module")
def fit_test(stats):
    return stats.fit_test()


def _tiny(**over):
    """Two prompts with hand-written token statistics."""
    kw = dict(
        ids=["a", "b"], task=["arithmetic", "arithmetic"], split=["test", "test"],
        response=["12 .", "7"], answer=["12", "7"], is_error=[False, True],
        token_logprobs=[np.log([0.5, 0.25, 0.8]), np.log([0.1])],
        token_entropies=[np.array([0.7, 1.2, 0.3]), np.array([2.0])],
        token_entropy_vars=[np.array([0.1, 0.2, 0.05]), np.array([0.4])],
        answer_mask=[np.array([True, True, False]), np.array([False])],
        sample_texts=[["12 .", "12 .", "13 .", "12"], ["7", "8", "9", "8"]],
        sample_answers=[["12", "12", "13", "12"], ["7", "8", "9", "8"]],
        sample_mean_logprobs=np.log([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.6]]),
        sample_sum_logprobs=np.log([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.6]]) * 2,
    )
    kw.update(over)
    return GenerationStats(**kw)


# -- token-level formulas -----------------------------------------------------------------------


def test_msp_perplexity_entropy_on_constructed_logprobs():
    s = _tiny()
    u = E.build_estimator("msp", span="response").score(s)
    assert u == pytest.approx([-(math.log(0.5) + math.log(0.25) + math.log(0.8)), -math.log(0.1)])
    u = E.build_estimator("msp", span="answer").score(s)
    # row 0: answer = first two tokens; row 1: empty answer mask -> whole response
    assert u == pytest.approx([-(math.log(0.5) + math.log(0.25)), -math.log(0.1)])
    u = E.build_estimator("perplexity", span="answer").score(s)
    assert u == pytest.approx([-(math.log(0.5) + math.log(0.25)) / 2, -math.log(0.1)])
    u = E.build_estimator("perplexity", span="response").score(s)
    assert u[0] == pytest.approx(-(math.log(0.5) + math.log(0.25) + math.log(0.8)) / 3)
    u = E.build_estimator("mean_token_entropy", span="answer").score(s)
    assert u == pytest.approx([0.95, 2.0])
    u = E.build_estimator("mean_token_entropy", span="response").score(s)
    assert u == pytest.approx([(0.7 + 1.2 + 0.3) / 3, 2.0])


def test_token_statistics_on_a_known_distribution():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    lp, h, var = token_statistics(np.log(p)[None, :], [1])
    assert lp[0] == pytest.approx(math.log(0.25))
    assert h[0] == pytest.approx(-(p * np.log(p)).sum())
    assert var[0] == pytest.approx((p * np.log(p) ** 2).sum() - h[0] ** 2)
    assert var[0] == pytest.approx((p * (-np.log(p) - h[0]) ** 2).sum())  # variance of the surprisal


def test_zero_shot_z_formula_and_calibration_under_the_model():
    gen = np.random.default_rng(0)
    T, V = 12, 6
    logits = gen.normal(size=(T, V)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    tokens = gen.integers(0, V, T)
    lp, h, var = token_statistics(logits, tokens)
    l_bar, h_bar = -lp.mean(), h.mean()
    expected = T * (l_bar - h_bar) / math.sqrt(var.sum())
    assert E.zero_shot_z(lp, h, var) == pytest.approx(expected)
    # known distribution: tokens drawn from p itself -> z has mean 0 and variance 1 (CLT)
    draws = np.stack([[gen.choice(V, p=p[t]) for t in range(T)] for _ in range(3000)])
    lps = np.log(p[np.arange(T), draws])
    z = (-lps - h).sum(1) / math.sqrt(var.sum())
    assert abs(z.mean()) < 0.06 and abs(z.std() - 1.0) < 0.06
    # tokens drawn from a flatter distribution than the model's -> large positive z
    flat = gen.integers(0, V, (500, T))
    z_flat = (-np.log(p[np.arange(T), flat]) - h).sum(1) / math.sqrt(var.sum())
    assert z_flat.mean() > 1.0
    # the estimator uses the same formula over its span
    s = _tiny()
    u = E.build_estimator("zero_shot_z", span="response").score(s)
    lp0 = np.log([0.5, 0.25, 0.8])
    assert u[0] == pytest.approx((-lp0 - np.array([0.7, 1.2, 0.3])).sum() / math.sqrt(0.35))


def test_self_consistency():
    s = _tiny()
    assert E.build_estimator("self_consistency", span="answer").score(s) == pytest.approx([1 - 3 / 4, 1 - 1 / 4])
    assert E.build_estimator("self_consistency", span="response").score(s) == pytest.approx([1 - 2 / 4, 1 - 1 / 4])


# -- RPC --------------------------------------------------------------------------------------


def test_rpc_deduplicates_identical_paths():
    texts = ["x", "x", "y", "z"]
    answers = ["1", "1", "2", "1"]
    lp = np.log([0.5, 0.5, 0.3, 0.2])
    conf, keep = E.rpc_answer_scores(texts, answers, lp, prune=False)
    # "x" counted once: score(1) = 0.5 + 0.2, score(2) = 0.3
    assert conf == pytest.approx({"1": 0.7, "2": 0.3})
    assert keep.all()
    s = _tiny()
    u = E.build_estimator("rpc", span="response", prune=False).score(s)
    # row 0: unique paths "12 ." (0.5), "13 ." (0.2), "12" (0.4): conf(12) = 0.9 / 1.1
    # row 1: "7" 0.3, "8" 0.6 (twice, counted once), "9" 0.1: conf(7) = 0.3 / 1.0
    assert u == pytest.approx([1 - 0.9 / 1.1, 1 - 0.3])
    u_arg = E.build_estimator("rpc", span="response", prune=False, target="argmax").score(s)
    assert u_arg == pytest.approx([1 - 0.9 / 1.1, 1 - 0.6])


def test_rpc_pruning_rule_needs_low_component_and_below_mean():
    mix = E.WeibullMixture(weight_low=0.5, shape_low=2.0, scale_low=0.2, shape_high=8.0, scale_high=0.8)
    p = np.array([0.05, 0.15, 0.3, 0.5, 0.75, 0.8, 0.85, 0.9])
    resp = mix.responsibilities(np.log(p))
    low = resp[:, 0] > resp[:, 1]
    below = p < p.mean()
    keep = E.rpc_prune_mask(p, mix)
    assert np.array_equal(keep, ~(low & below))
    # the fixture exercises all three cases: pruned, low-but-above-mean kept, below-mean-but-high kept
    assert (~keep).sum() >= 1
    p2 = np.array([0.05, 0.1, 0.12, 0.15, 0.2, 0.25, 0.33])  # all low-component; mean ~0.17
    keep2 = E.rpc_prune_mask(p2, mix)
    assert (mix.responsibilities(np.log(p2))[:, 0] > 0.5).all()
    assert np.array_equal(keep2, p2 >= p2.mean())
    mix_high = E.WeibullMixture(0.5, 2.0, 0.02, 3.0, 0.1)  # every point is high-component
    p3 = np.array([0.08, 0.1, 0.12, 0.3])
    assert E.rpc_prune_mask(p3, mix_high).all()  # below the mean but high-component -> kept
    assert E.rpc_prune_mask(p3, None).all()


def test_weibull_mixture_em_recovers_a_known_mixture():
    gen = np.random.default_rng(0)
    n = 1500
    low = weibull_min.rvs(2.0, scale=0.15, size=int(0.4 * n), random_state=gen)
    high = weibull_min.rvs(9.0, scale=0.8, size=n - low.size, random_state=gen)
    x = np.r_[low, high]
    m = E.fit_weibull_mixture(x)
    assert m is not None and m.mean_low < m.mean_high
    assert m.weight_low == pytest.approx(0.4, abs=0.05)
    assert m.shape_low == pytest.approx(2.0, rel=0.2) and m.scale_low == pytest.approx(0.15, rel=0.1)
    assert m.shape_high == pytest.approx(9.0, rel=0.2) and m.scale_high == pytest.approx(0.8, rel=0.05)
    # densities agree with scipy
    ref = np.log(
        m.weight_low * weibull_min.pdf(x, m.shape_low, scale=m.scale_low)
        + (1 - m.weight_low) * weibull_min.pdf(x, m.shape_high, scale=m.scale_high)
    ).sum()
    assert m.loglikelihood(np.log(x)) == pytest.approx(ref, rel=1e-9)
    assert m.loglik == pytest.approx(ref, rel=1e-6)
    # not identifiable -> None (nothing pruned)
    assert E.fit_weibull_mixture(np.array([0.3, 0.3, 0.3])) is None
    assert E.fit_weibull_mixture(np.array([0.3, 0.5])) is None


def test_rpc_prunes_low_paths_end_to_end():
    texts = [f"t{i}" for i in range(16)]
    answers = ["good"] * 10 + ["bad"] * 6
    w = np.r_[np.linspace(0.7, 0.9, 10), np.linspace(0.02, 0.06, 6)]
    conf, keep = E.rpc_answer_scores(texts, answers, np.log(w), prune=True)
    assert keep[:10].all() and not keep[10:].any()
    assert conf == pytest.approx({"good": 1.0})


# -- hidden-state detectors ---------------------------------------------------------------------


def test_mahalanobis_single_centroid_matches_numpy(fit_test):
    fit, test = fit_test
    est = E.build_estimator("mahalanobis", span="response").fit(fit)
    x = fit.hidden_response[:, -1, :].astype(np.float64)
    mu = x.mean(0)
    cov = np.cov(x, rowvar=False)
    jitter = next(j for j in E.JITTERS if np.linalg.eigvalsh(cov + j * np.eye(len(cov))).min() > 0)
    prec = np.linalg.inv(cov + jitter * np.eye(len(cov)))
    d = test.hidden_response[:, -1, :].astype(np.float64) - mu
    ref = np.sqrt(np.array([r @ prec @ r for r in d]))
    assert est.score(test) == pytest.approx(ref, rel=1e-8)
    assert est.jitter_ == jitter


def test_mahalanobis_lee_layer_scores_match_numpy(fit_test):
    fit, test = fit_test
    est = E.build_estimator("mahalanobis_lee", span="answer", n_folds=2).fit(fit)
    y = fit.is_error
    l = 2
    x = fit.hidden_answer[:, l, :].astype(np.float64)
    mus = [x[~y].mean(0), x[y].mean(0)]
    centred = np.where(y[:, None], x - mus[1], x - mus[0])
    prec = np.linalg.pinv(centred.T @ centred / len(x))
    f = test.hidden_answer[:, l, :].astype(np.float64)
    ref = np.max([[-0.5 * (r - m) @ prec @ (r - m) for m in mus] for r in f], axis=1)
    assert est.layer_scores(test)[:, l] == pytest.approx(ref, rel=1e-6)
    u = est.score(test)
    assert np.isfinite(u).all() and u.shape == (test.n,)


def test_supervised_detectors_learn_the_synthetic_signal(fit_test):
    fit, test = fit_test
    for name in ("linear_probe", "knn", "sdm_adaptation"):
        u = E.build_estimator(name, span="answer").fit(fit).score(test)
        assert auroc(test.is_error, u) > 0.75, name
    u = E.build_estimator("mahalanobis_lee", combine="per_class").fit(fit).score(test)
    assert auroc(test.is_error, u) > 0.75


# -- leakage guards ----------------------------------------------------------------------------

FITTED = ["mahalanobis", "mahalanobis_lee", "linear_probe", "knn", "sdm_adaptation", "spc_uq", "meta_ranking"]


@pytest.mark.parametrize("name", FITTED)
def test_fitted_detectors_ignore_test_labels(fit_test, name):
    fit, test = fit_test
    est = E.build_estimator(name).fit(fit)
    u = est.score(test)
    perm = np.random.default_rng(0).permutation(test.n)
    for labels in (test.is_error[perm], ~test.is_error, None):
        shuffled = GenerationStats(**{**test.__dict__, "is_error": labels})
        assert np.array_equal(est.score(shuffled), u)


@pytest.mark.parametrize("name", ["linear_probe", "mahalanobis_lee", "spc_uq", "meta_ranking"])
def test_fitted_detectors_do_use_fit_labels(fit_test, name):
    fit, test = fit_test
    u = E.build_estimator(name).fit(fit).score(test)
    flipped = GenerationStats(**{**fit.__dict__, "is_error": np.random.default_rng(1).permutation(fit.is_error)})
    assert not np.allclose(E.build_estimator(name).fit(flipped).score(test), u)


def test_fit_refuses_test_rows_and_score_refuses_fit_rows(stats, fit_test):
    fit, test = fit_test
    with pytest.raises(ValueError, match="split is not 'fit'"):
        E.build_estimator("linear_probe").fit(stats)
    est = E.build_estimator("knn").fit(fit)
    with pytest.raises(ValueError, match="overlap in"):
        est.score(fit)
    u_in = est.score(fit, in_sample=True)  # allowed when asked; a row is never its own neighbour
    assert u_in.shape == (fit.n,)
    with pytest.raises(RuntimeError, match="call fit"):
        E.build_estimator("linear_probe").score(test)


def test_score_cannot_read_labels(fit_test):
    _, test = fit_test

    class Cheat(E.Estimator):
        name = "cheat"

        def _score(self, stats, in_sample):
            return np.asarray(stats.is_error, dtype=float)

    with pytest.raises(LabelAccessError):
        Cheat().score(test)
    hidden = test.without_labels()
    with pytest.raises(LabelAccessError):
        hidden.labels()
    assert test.labels() is test.is_error  # the original is untouched


def test_out_of_fold_scores_and_per_layer_auroc(fit_test, monkeypatch):
    fit, test = fit_test
    u = E.out_of_fold_scores("linear_probe", fit, oof_folds=3)
    assert u.shape == (fit.n,) and np.isfinite(u).all()
    # the estimator's own n_folds / seed (configured in detector_params) reach every refit
    seen, real = [], E.build_estimator
    monkeypatch.setattr(E, "build_estimator", lambda name, **kw: seen.append(kw) or real(name, **kw))
    E.out_of_fold_scores("linear_probe", fit, oof_folds=2, n_folds=4, seed=3)
    assert len(seen) == 3 and all(kw["n_folds"] == 4 and kw["seed"] == 3 for kw in seen)
    monkeypatch.undo()
    assert np.array_equal(E.out_of_fold_scores("msp", fit), E.build_estimator("msp").score(fit))
    rows = E.per_layer_auroc(fit, test, method="linear_probe")
    assert [r["layer"] for r in rows] == list(range(fit.n_layers))
    assert rows[-1]["auroc"] > rows[0]["auroc"]  # the synthetic signal grows with depth
    assert len(E.per_layer_auroc(fit, test, method="mahalanobis_lee", n_folds=2)) == fit.n_layers
    with pytest.raises(ValueError, match="no layer parameter"):
        E.per_layer_auroc(fit, test, method="msp")


# -- registry -------------------------------------------------------------------------------------


def test_registry_builds_and_runs_every_detector_on_both_spans(fit_test):
    fit, test = fit_test
    for name in E.estimator_names():
        for span in ("answer", "response"):
            u = E.build_estimator(name, span=span).fit(fit).score(test)
            assert u.shape == (test.n,) and np.isfinite(u).all(), (name, span)
    assert [r["name"] for r in E.describe_estimators()] == E.DETECTORS.names() == [
        "msp", "perplexity", "mean_token_entropy", "zero_shot_z", "self_consistency", "rpc", "mahalanobis",
        "mahalanobis_lee", "linear_probe", "knn", "sdm_adaptation", "meta_ranking", "spc_uq"]  # fmt: skip
    assert all(E.DETECTORS.get(n).name == n for n in E.DETECTORS)  # the decorator names the class
    assert "adaptation" in E.DETECTORS.get("sdm_adaptation").label
    assert "adaptation" in E.DETECTORS.get("sdm_adaptation").__doc__
    assert "reused as a signal" in E.DETECTORS.get("zero_shot_z").label
    assert E.layered_detectors() == ["mahalanobis", "mahalanobis_lee", "linear_probe", "knn", "sdm_adaptation",
                                     "spc_uq"]  # fmt: skip


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown detector 'semantic_entropy' .*; registered: msp, .*rpc"):
        E.build_estimator("semantic_entropy")
    with pytest.raises(ValueError, match=r"detector 'rpc' has no parameter 'gamma'; allowed: prune"):
        E.build_estimator("rpc", gamma=1)
    with pytest.raises(ValueError, match="span = 'tokens'"):
        E.build_estimator("msp", span="tokens")
    with pytest.raises(ValueError, match="layer = 9 is out of range"):
        E.build_estimator("linear_probe", layer=9).fit(synthetic_stats(40, 3, seed=1).select(split="fit"))


def test_answer_span_on_samples_needs_token_level_samples():
    s = synthetic_stats(20, 3, seed=2, sample_tokens=False)
    E.build_estimator("rpc", span="response").score(s)
    with pytest.raises(ValueError, match="sample_token_logprobs and sample_answer_masks"):
        E.build_estimator("rpc", span="answer").score(s)
