"""The error-detection stage's library: model checks, detector runs and their leakage guards,
tables, claims, cost, model comparison and outputs (on synthetic statistics)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trustlab.reporting.html import write_summary_html
from trustlab.core.config import ConfigError
from trustlab.error_detection import experiment as ex
from trustlab.error_detection import metrics as M
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.statistics import GenerationStats
from trustlab.error_detection.synthetic import synthetic_stats

DETECTORS = ["msp", "perplexity", "mean_token_entropy", "zero_shot_z", "self_consistency", "rpc", "mahalanobis",
             "mahalanobis_lee", "linear_probe", "knn"]  # fmt: skip


def _cfg(**over):
    base = dict(detectors=DETECTORS, bootstrap_resamples=200, models=[],
                detector_params={"mahalanobis_lee": {"n_folds": 2}, "linear_probe": {"n_folds": 2}, "knn": {"k": 5}},
                per_layer=["linear_probe"])  # fmt: skip
    return ErrorDetectionConfig.from_dict({**base, **over})


@pytest.fixture(scope="module")
def stats():
    return synthetic_stats(n=160, K=4, n_layers=3, d=6, seed=3, signal=1.0)


@pytest.fixture(scope="module")
def cfg():
    return _cfg()


@pytest.fixture(scope="module")
def dets(cfg, stats):
    return ex.run_detectors(cfg, stats)


def _with_labels(stats, labels):
    return GenerationStats(**{**stats.__dict__, "is_error": labels})


# -- models ---------------------------------------------------------------------------------------------


def _fake_model(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"format": "trustlab-gpt"}))


def test_check_models_names_the_stage_that_makes_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'base_model' stage.*dvc repro base_model"):
        ex.check_models(_cfg(), tmp_path)
    _fake_model(tmp_path / "models" / "base")
    assert ex.check_models(_cfg(), tmp_path) == {"base": tmp_path / "models" / "base"}
    cfg = _cfg(models=["models/noisefit/sft", "models/noisefit/noisefit_largest"])
    _fake_model(tmp_path / "models" / "noisefit" / "sft")
    with pytest.raises(FileNotFoundError, match=r"'models/noisefit/noisefit_largest'.*'noisefit' stage"):
        ex.check_models(cfg, tmp_path)
    _fake_model(tmp_path / "models" / "noisefit" / "noisefit_largest")
    assert list(ex.check_models(cfg, tmp_path)) == ["base", "sft", "noisefit_largest"]
    with pytest.raises(ConfigError, match="two models are named 'sft'"):
        ex.check_models(_cfg(models=["models/noisefit/sft", "other/sft"]), tmp_path)


def test_config_rejects_repeated_source_split():
    with pytest.raises(ConfigError, match=r"sources.arithmetic = \['test', 'test'\] lists 'test' more than once"):
        _cfg(sources={**ErrorDetectionConfig().sources, "arithmetic": ["test", "test"]})


# -- detectors and leakage -----------------------------------------------------------------------------


def test_run_detectors_scores_every_detector_and_span(dets, stats):
    fit, test = stats.fit_test()
    assert set(dets) == {f"{n}@{s}" for n in DETECTORS for s in ("answer", "response")}
    for d in dets.values():
        assert d.ok, d.status
        assert d.u_test.shape == (test.n,) and d.u_fit.shape == (fit.n,)
    # unfitted detectors: fit-split scores are the plain scores
    np.testing.assert_array_equal(dets["msp@answer"].u_fit, ex.build_estimator("msp").score(fit))


def test_detectors_never_see_test_labels(cfg, stats, dets):
    """Leakage: shuffling or removing the test split's labels changes no score; the fitted
    detectors do depend on the fit split's labels."""
    test_rows = stats.split == "test"
    labels = stats.is_error.copy()
    labels[test_rows] = np.random.default_rng(0).permutation(labels[test_rows])
    shuffled = ex.run_detectors(cfg, _with_labels(stats, labels))
    for key, d in dets.items():  # every detector, the label-free ones included
        np.testing.assert_array_equal(shuffled[key].u_test, d.u_test, err_msg=key)
        np.testing.assert_array_equal(shuffled[key].u_fit, d.u_fit, err_msg=key)
    labels = stats.is_error.copy()
    fit_rows = ~test_rows
    labels[fit_rows] = np.random.default_rng(1).permutation(labels[fit_rows])
    refit = ex.run_detectors(
        _cfg(detectors=["linear_probe", "mahalanobis_lee", "mahalanobis"]), _with_labels(stats, labels)
    )
    assert not np.allclose(refit["linear_probe@answer"].u_test, dets["linear_probe@answer"].u_test)
    assert not np.allclose(refit["mahalanobis_lee@answer"].u_test, dets["mahalanobis_lee@answer"].u_test)
    # the single-centroid form (centroid_on = all) uses no labels at all
    np.testing.assert_array_equal(refit["mahalanobis@answer"].u_test, dets["mahalanobis@answer"].u_test)


def test_fitted_detectors_fit_on_fit_rows_only(cfg, stats, dets):
    fit_ids = set(stats.select(split="fit").ids.tolist())
    for d in dets.values():
        if d.estimator.needs_fit:
            assert d.estimator.fit_ids_ == fit_ids, d.key


def test_supervised_detector_without_both_classes_is_reported_not_raised():
    s = synthetic_stats(n=40, K=3, n_layers=2, d=4, seed=0)
    labels = s.is_error.copy()
    labels[s.split == "fit"] = True
    out = ex.run_detectors(_cfg(detectors=["msp", "linear_probe"]), _with_labels(s, labels))
    assert out["msp@answer"].ok
    assert out["linear_probe@answer"].status.startswith("not applicable: linear_probe.fit() needs both")


def test_best_of_is_chosen_on_the_fit_split(stats, dets):
    key = ex.best_of(stats, dets, ex.LOGIT, "answer")
    fit_aucs = {n: ex.fit_auroc(stats, dets[f"{n}@answer"]) for n in ex.LOGIT}
    assert key == f"{max(fit_aucs, key=fit_aucs.get)}@answer"
    test_rows = stats.split == "test"
    labels = stats.is_error.copy()
    labels[test_rows] = ~labels[test_rows]  # flipping test labels cannot change the choice
    assert ex.best_of(_with_labels(stats, labels), dets, ex.LOGIT, "answer") == key


# -- tables -----------------------------------------------------------------------------------------------


def test_detector_table_matches_evaluate(cfg, stats, dets):
    table = ex.detector_table(cfg, stats, dets)
    assert set(table.task) == {"all", "arithmetic", "world_qa"}
    fit, test = stats.fit_test()
    d = dets["perplexity@answer"]
    row = table[(table.detector == "perplexity") & (table.span == "answer") & (table.task == "all")].iloc[0]
    ref = M.evaluate(d.u_test, test.labels(), d.u_fit, fit.labels(), n_resamples=200, seed=0)
    for k in ("auroc", "auroc_lo", "prr", "prr_hi", "auprc", "base_rate", "f1", "always_error_f1", "random_f1"):
        assert row[k] == pytest.approx(ref[k]), k
    # per task: the threshold comes from the same task's fit rows
    tm, fm = test.task == "world_qa", fit.task == "world_qa"
    row = table[(table.detector == "perplexity") & (table.span == "answer") & (table.task == "world_qa")].iloc[0]
    assert row["threshold"] == pytest.approx(M.choose_threshold(d.u_fit[fm], fit.labels()[fm]))
    assert row["auroc"] == pytest.approx(M.auroc(test.labels()[tm], d.u_test[tm]))
    shown = ex.display_table(table, "all", span="answer")
    assert len(shown) == len(DETECTORS) and shown["AUROC [95% CI]"].str.match(r"0\.\d{3} \[").all()


def test_cost_table_formulas(stats, dets):
    timing = {"greedy_s": 2.0, "greedy_plain_s": 1.0, "sampling_s": 10.0, "n": 200}
    cost = ex.cost_table(stats, dets, timing).set_index(["detector", "span"])
    n_test = int((stats.split == "test").sum())
    assert cost.loc[("msp", "answer"), "model_s_per_1k"] == pytest.approx(5.0)
    assert cost.loc[("rpc", "answer"), "model_s_per_1k"] == pytest.approx(55.0)
    assert cost.loc[("linear_probe", "answer"), "model_s_per_1k"] == pytest.approx(10.0)
    d = dets["linear_probe@answer"]
    r = cost.loc[("linear_probe", "answer")]
    assert r.total_s_per_1k == pytest.approx(10.0 + 1000 * (d.score_s + d.fit_s) / n_test)


def test_per_layer_and_curves(cfg, stats, dets):
    layers = ex.per_layer_table(cfg, stats)
    assert sorted(set(layers.layer)) == [0, 1, 2, 3] and set(layers.span) == {"answer", "response"}
    # synthetic: deeper layers carry more of the error signal (layer 0 carries none)
    ans = layers[layers.span == "answer"].set_index("layer").auroc
    assert ans[3] > ans[0] + 0.1
    roc, pr, rej = ex.curve_frames(stats, dets, ["perplexity@answer", "linear_probe@answer"])
    assert set(roc.detector) == {"perplexity@answer", "linear_probe@answer"}
    assert {"oracle", "random"} <= set(rej.detector)
    # the rejection curve's mean is the raw PRR
    test = stats.select(split="test")
    g = rej[rej.detector == "perplexity@answer"]
    assert g.accuracy_kept.mean() == pytest.approx(M.prr(dets["perplexity@answer"].u_test, test.labels()))


# -- claims -------------------------------------------------------------------------------------------------


def test_claims_are_computed_from_the_chosen_detectors(stats, dets):
    cfg = _cfg(claims_aggregate="pooled")
    claims = ex.make_claims(cfg, stats, dets)
    assert len(claims) == 4 and all(c.family == "error_detection" for c in claims)
    e = stats.select(split="test").labels()
    auc = lambda k: M.auroc(e, dets[k].u_test)  # noqa: E731
    base = ex.best_of(stats, dets, ex.SINGLE_PASS_PROBABILITY, "answer")
    assert claims[0].effect == pytest.approx(auc("self_consistency@answer") - auc(base))
    assert claims[1].effect == pytest.approx(
        min(auc("rpc@answer") - auc("self_consistency@answer"), auc("rpc@answer") - auc("perplexity@answer"))
    )
    hk, lk = ex.best_of(stats, dets, ex.MAHALANOBIS_AND_PROBE, "answer"), ex.best_of(stats, dets, ex.LOGIT, "answer")
    assert claims[2].effect == pytest.approx(auc(hk) - auc(lk))
    b = e.mean()
    best = ex.best_of(stats, dets, DETECTORS, "answer")
    fit_e = stats.select(split="fit").labels()
    thr = M.choose_threshold(dets[best].u_fit, fit_e)
    f1 = M.precision_recall_f1(dets[best].u_test > thr, e)[2]
    assert claims[3].effect == pytest.approx(f1 - 2 * b / (1 + b))
    assert best in claims[3].note
    for c in claims:
        assert c.ci_low <= c.effect <= c.ci_high
        assert c.verdict in ("supported", "not supported", "inconclusive")
    again = ex.make_claims(cfg, stats, ex.run_detectors(cfg, stats))
    assert [c.as_dict() for c in again] == [c.as_dict() for c in claims]  # deterministic


def test_task_mean_claims_average_per_task_aurocs(stats, dets):
    cfg = _cfg(claims_aggregate="task_mean", claims_min_per_class=5)
    test = stats.select(split="test")
    e = test.labels()
    tasks = ex.aggregate_tasks(test, "task_mean", 5)
    assert tasks == ["arithmetic", "world_qa"]
    per_task = lambda k: np.mean([M.auroc(e[test.task == t], dets[k].u_test[test.task == t]) for t in tasks])  # noqa
    claims = ex.make_claims(cfg, stats, dets)
    hk = ex.best_of(stats, dets, ex.MAHALANOBIS_AND_PROBE, "answer", "task_mean", 5)
    lk = ex.best_of(stats, dets, ex.LOGIT, "answer", "task_mean", 5)
    assert claims[2].effect == pytest.approx(per_task(hk) - per_task(lk))
    assert claims[2].metric == "AUROC (mean over tasks)" and "pooled" in claims[2].note
    # a task with too few of one class is left out; none left -> pooled
    assert ex.aggregate_tasks(test, "task_mean", 10_000) is None
    assert ex.aggregate_tasks(test, "pooled") is None
    with pytest.raises(ConfigError, match="claims_aggregate"):
        _cfg(claims_aggregate="median")


def test_claims_without_signal_are_not_supported_by_chance():
    s = synthetic_stats(n=160, K=4, n_layers=2, d=4, seed=5, signal=0.0)
    cfg = _cfg(
        detectors=[
            "msp",
            "perplexity",
            "mean_token_entropy",
            "zero_shot_z",
            "self_consistency",
            "rpc",
            "mahalanobis",
            "linear_probe",
        ]
    )
    claims = ex.make_claims(cfg, s, ex.run_detectors(cfg, s))
    assert claims[2].verdict != "supported"


# -- part 4 and outputs ---------------------------------------------------------------------------------


def _run(name, stats, dets):
    return ex.ModelRun(name, "", stats, dets, {"greedy_s": 1.0, "sampling_s": 1.0, "n": stats.n})


def test_model_table_side_by_side_and_paired_difference(cfg, stats, dets):
    runs = [_run("base", stats, dets), _run("sft", stats, dets), _run("noisefit_largest", stats, dets)]
    t = ex.model_table(cfg, runs)
    assert list(dict.fromkeys(t.model)) == ["base", "sft", "noisefit_largest"]
    a = t[(t.model == "base") & (t.detector == "perplexity")].iloc[0]
    b = t[(t.model == "sft") & (t.detector == "perplexity")].iloc[0]
    assert a.auroc == b.auroc and a.prr == b.prr
    c = t[(t.model == "noisefit_largest") & (t.detector == "perplexity")].iloc[0]
    assert c["auroc_minus_sft"] == 0.0 and c["auroc_minus_sft_lo"] == 0.0  # identical models: no difference


def test_write_outputs(tmp_path, cfg, stats, dets):
    run = _run("base", stats, dets)
    table = ex.detector_table(cfg, stats, dets)
    claims = ex.make_claims(cfg, stats, dets)
    cost = ex.cost_table(stats, dets, run.timing)
    tables = {"detectors": table, "cost": cost, "claims": ex.claims_frame(claims), "models": ex.model_table(cfg, [run])}
    m = ex.write_outputs(tmp_path, cfg, [run], tables, claims, profile="smoke", stage_seconds=1.5)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["run"] == {"profile": "smoke", "stage_seconds": 1.5}
    assert len(saved["claims"]) == 4
    h = m["headline"]
    assert h["perplexity/auroc"] == pytest.approx(
        M.auroc(stats.select(split="test").labels(), dets["perplexity@answer"].u_test)
    )
    assert h["claims_total"] == 4
    for name in ("detectors", "cost", "claims"):
        assert (tmp_path / "plots" / f"{name}.csv").exists()
    html = write_summary_html(tmp_path / "s.html", "t", [("Claims", tables["claims"]), ("Text", "a <b>")])
    assert "&lt;b&gt;" in html.read_text()


def test_log_runs_one_run_per_model(cfg, stats, dets, monkeypatch):
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "disabled")
    runs = [_run("base", stats, dets), _run("sft", stats, dets)]
    table = ex.detector_table(cfg, stats, dets)
    claims = ex.make_claims(cfg, stats, dets)
    names = ex.log_runs(cfg, runs, {"detectors": table}, {}, claims, profile="smoke")
    assert names == ["base-seed0", "sft-seed0", "error_detection-summary"]


def test_within_task_table_uses_the_claims_tasks(cfg, stats, dets):
    table = ex.detector_table(cfg, stats, dets)
    wt = ex.within_task_table(table, "answer", 5).set_index("detector")
    test = stats.select(split="test")
    e = test.labels()
    u = dets["perplexity@answer"].u_test
    tasks = ex.aggregate_tasks(test, "task_mean", 5)
    assert wt.loc["perplexity", "auroc_within_task_mean"] == pytest.approx(
        np.mean([M.auroc(e[test.task == t], u[test.task == t]) for t in tasks]))
    assert wt.loc["perplexity", "auroc_pooled"] == pytest.approx(M.auroc(e, u))
    assert np.isnan(ex.within_task_table(table, "answer", 10_000).auroc_within_task_mean).all()
