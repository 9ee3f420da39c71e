"""The stage's run: model checks, detector runs and their leakage guards, the best-of-group
choice (on synthetic statistics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trustlab.core.config import ConfigError
from trustlab.error_detection import run as detect
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.estimators import build_estimator
from trustlab.error_detection.synthetic import synthetic_stats

# -- models ---------------------------------------------------------------------------------------------


def _fake_model(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"format": "trustlab-gpt"}))


def test_check_models_names_the_stage_that_makes_a_missing_model(tmp_path, make_cfg):
    with pytest.raises(FileNotFoundError, match=r"'base_model' stage.*dvc repro base_model"):
        detect.check_models(make_cfg(), tmp_path)
    _fake_model(tmp_path / "models" / "base")
    assert detect.check_models(make_cfg(), tmp_path) == {"base": tmp_path / "models" / "base"}
    cfg = make_cfg(models=["models/noisefit/sft", "models/noisefit/noisefit_largest"])
    _fake_model(tmp_path / "models" / "noisefit" / "sft")
    with pytest.raises(FileNotFoundError, match=r"'models/noisefit/noisefit_largest'.*'noisefit' stage"):
        detect.check_models(cfg, tmp_path)
    _fake_model(tmp_path / "models" / "noisefit" / "noisefit_largest")
    assert list(detect.check_models(cfg, tmp_path)) == ["base", "sft", "noisefit_largest"]
    with pytest.raises(ConfigError, match="two models are named 'sft'"):
        detect.check_models(make_cfg(models=["models/noisefit/sft", "other/sft"]), tmp_path)


def test_config_rejects_repeated_source_split(make_cfg):
    with pytest.raises(ConfigError, match=r"sources.arithmetic = \['test', 'test'\] lists 'test' more than once"):
        make_cfg(sources={**ErrorDetectionConfig().sources, "arithmetic": ["test", "test"]})


def test_config_checks_detectors_through_the_registry(make_cfg):
    with pytest.raises(ConfigError, match=r"error_detection.detectors: unknown detector 'perplexty' \(did you mean "
                                          r"'perplexity'\?\)"):  # fmt: skip
        make_cfg(detectors=["msp", "perplexty"])
    with pytest.raises(ConfigError, match=r"error_detection.detector_params.rpc: detector 'rpc' has no parameter "
                                          r"'gamma'; allowed: prune, target, weight_bounds"):  # fmt: skip
        make_cfg(detector_params={"rpc": {"gamma": 1}})
    with pytest.raises(ConfigError, match="detector_params.rpc: .*no parameter 'span'"):  # the run sets the span
        make_cfg(detector_params={"rpc": {"span": "answer"}})
    with pytest.raises(ConfigError, match=r"detector_params.mahalanobis_lee: combine = 'x' is not allowed"):
        make_cfg(detector_params={"mahalanobis_lee": {"combine": "x"}})
    with pytest.raises(ConfigError, match=r"per_layer = \['msp'\]"):
        make_cfg(per_layer=["msp"])


# -- detectors and leakage -----------------------------------------------------------------------------


def test_run_detectors_scores_every_detector_and_span(cfg, dets, stats):
    fit, test = stats.fit_test()
    assert set(dets) == {f"{n}@{s}" for n in cfg.detectors for s in ("answer", "response")}
    for d in dets.values():
        assert d.ok, d.status
        assert d.u_test.shape == (test.n,) and d.u_fit.shape == (fit.n,)


def test_detectors_never_see_test_labels(cfg, stats, dets, make_cfg, with_labels):
    """Leakage: shuffling or removing the test split's labels changes no score; the fitted
    detectors do depend on the fit split's labels."""
    test_rows = stats.split == "test"
    labels = stats.is_error.copy()
    labels[test_rows] = np.random.default_rng(0).permutation(labels[test_rows])
    shuffled = detect.run_detectors(cfg, with_labels(stats, labels))
    for key, d in dets.items():  # every detector, the label-free ones included
        np.testing.assert_array_equal(shuffled[key].u_test, d.u_test, err_msg=key)
        np.testing.assert_array_equal(shuffled[key].u_fit, d.u_fit, err_msg=key)
    labels = stats.is_error.copy()
    fit_rows = ~test_rows
    labels[fit_rows] = np.random.default_rng(1).permutation(labels[fit_rows])
    refit = detect.run_detectors(
        make_cfg(detectors=["linear_probe", "mahalanobis_lee", "mahalanobis"]), with_labels(stats, labels)
    )
    assert not np.allclose(refit["linear_probe@answer"].u_test, dets["linear_probe@answer"].u_test)
    assert not np.allclose(refit["mahalanobis_lee@answer"].u_test, dets["mahalanobis_lee@answer"].u_test)
    # the single-centroid form (centroid_on = all) uses no labels at all
    np.testing.assert_array_equal(refit["mahalanobis@answer"].u_test, dets["mahalanobis@answer"].u_test)


def test_fitted_detectors_fit_on_fit_rows_only(stats, dets):
    fit_ids = set(stats.select(split="fit").ids.tolist())
    for d in dets.values():
        if d.estimator.needs_fit:
            assert d.estimator.fit_ids_ == fit_ids, d.key


def test_supervised_detector_without_both_classes_is_reported_not_raised(make_cfg, with_labels):
    s = synthetic_stats(n=40, K=3, n_layers=2, d=4, seed=0)
    labels = s.is_error.copy()
    labels[s.split == "fit"] = True
    out = detect.run_detectors(make_cfg(detectors=["msp", "linear_probe"]), with_labels(s, labels))
    assert out["msp@answer"].ok
    assert out["linear_probe@answer"].status.startswith("not applicable: linear_probe.fit() needs both")


def test_best_of_is_chosen_on_the_fit_split(stats, dets, with_labels):
    key = detect.best_of(stats, dets, detect.LOGIT, "answer")
    fit_aucs = {n: detect.fit_auroc(stats, dets[f"{n}@answer"]) for n in detect.LOGIT}
    assert key == f"{max(fit_aucs, key=fit_aucs.get)}@answer"
    test_rows = stats.split == "test"
    labels = stats.is_error.copy()
    labels[test_rows] = ~labels[test_rows]  # flipping test labels cannot change the choice
    assert detect.best_of(with_labels(stats, labels), dets, detect.LOGIT, "answer") == key


def test_task_mean_aggregate_averages_per_task_aurocs(stats, dets):
    test = stats.select(split="test")
    e = test.labels()
    tasks = detect.aggregate_tasks(test, "task_mean", 5)
    assert tasks == ["arithmetic", "world_qa"]
    u = dets["perplexity@answer"].u_test
    point, _ = detect.aggregate_auroc(u, e, test.task, tasks)
    from trustlab.error_detection import metrics as M

    assert point == pytest.approx(np.mean([M.auroc(e[test.task == t], u[test.task == t]) for t in tasks]))
    # a task with too few of one class is left out; none left -> pooled
    assert detect.aggregate_tasks(test, "task_mean", 10_000) is None
    assert detect.aggregate_tasks(test, "pooled") is None


def test_paired_resample_weights_are_evaluates_resamples(cfg):
    from trustlab.error_detection import metrics as M

    W = detect.paired_resample_weights(cfg, 30)
    idx = M.resample_indices(30, cfg.bootstrap_resamples, cfg.seed)
    assert W.shape == (cfg.bootstrap_resamples, 30)
    np.testing.assert_array_equal(W[5], np.bincount(idx[5], minlength=30))


def test_unfitted_detectors_fit_split_scores_are_plain_scores(dets, stats):
    fit = stats.select(split="fit")
    np.testing.assert_array_equal(dets["msp@answer"].u_fit, build_estimator("msp").score(fit))


def test_run_claims_and_tables_need_no_plotting_or_tracking_stack():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import trustlab.error_detection.run, trustlab.error_detection.claims, "
            "trustlab.error_detection.tables; "
            "print(sorted(m for m in ('matplotlib', 'wandb') if m in sys.modules))")  # fmt: skip
    lib = Path(__file__).resolve().parents[3] / "lib"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(lib), "PATH": ""})  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_workers_two_and_one_give_identical_detector_scores(make_cfg, stats):
    small = stats.subset(np.arange(80))
    names = ["msp", "self_consistency", "linear_probe", "spc_uq", "meta_ranking"]
    serial = detect.run_detectors(make_cfg(detectors=names, workers=1), small)
    pooled = detect.run_detectors(make_cfg(detectors=names, workers=2), small)
    assert list(serial) == list(pooled)
    for key, det in serial.items():
        assert det.status == pooled[key].status
        if det.ok:
            assert np.array_equal(det.u_test, pooled[key].u_test) and np.array_equal(det.u_fit, pooled[key].u_fit)


def test_statistics_live_under_the_data_directory(make_cfg, tmp_path):
    assert detect.stats_root(make_cfg(), tmp_path) == tmp_path / "detection_stats"
    assert detect.stats_root(make_cfg(stats_dir="/elsewhere/stats"), tmp_path) == Path("/elsewhere/stats")
