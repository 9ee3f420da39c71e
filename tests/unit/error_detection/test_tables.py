"""The stage's tables on synthetic statistics: every number checked against its formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trustlab.error_detection import metrics as M
from trustlab.error_detection import run as detect
from trustlab.error_detection import tables as T
from trustlab.error_detection.run import DetectorResult


def test_detector_table_matches_evaluate(cfg, stats, dets):
    table = T.detector_table(cfg, stats, dets)
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
    shown = T.display_table(table, "all", span="answer")
    assert len(shown) == len(cfg.detectors) and shown["AUROC [95% CI]"].str.match(r"0\.\d{3} \[").all()


def test_cost_table_formulas(stats, dets):
    timing = {"greedy_s": 2.0, "greedy_plain_s": 1.0, "sampling_s": 10.0, "n": 200}
    cost = T.cost_table(stats, dets, timing).set_index(["detector", "span"])
    n_test = int((stats.split == "test").sum())
    assert cost.loc[("msp", "answer"), "model_s_per_1k"] == pytest.approx(5.0)
    assert cost.loc[("rpc", "answer"), "model_s_per_1k"] == pytest.approx(55.0)
    assert cost.loc[("linear_probe", "answer"), "model_s_per_1k"] == pytest.approx(10.0)
    d = dets["linear_probe@answer"]
    r = cost.loc[("linear_probe", "answer")]
    assert r.total_s_per_1k == pytest.approx(10.0 + 1000 * (d.score_s + d.fit_s) / n_test)


def test_per_layer_and_curves(cfg, stats, dets):
    layers = T.per_layer_table(cfg, stats)
    assert sorted(set(layers.layer)) == [0, 1, 2, 3] and set(layers.span) == {"answer", "response"}
    # synthetic: deeper layers carry more of the error signal (layer 0 carries none)
    ans = layers[layers.span == "answer"].set_index("layer").auroc
    assert ans[3] > ans[0] + 0.1
    roc, pr, rej = T.curve_frames(stats, dets, ["perplexity@answer", "linear_probe@answer"])
    assert set(roc.detector) == {"perplexity@answer", "linear_probe@answer"}
    assert {"oracle", "random"} <= set(rej.detector)
    # the rejection curve's mean is the raw PRR
    test = stats.select(split="test")
    g = rej[rej.detector == "perplexity@answer"]
    assert g.accuracy_kept.mean() == pytest.approx(M.prr(dets["perplexity@answer"].u_test, test.labels()))


def test_within_task_table_uses_the_claims_tasks(cfg, stats, dets):
    table = T.detector_table(cfg, stats, dets)
    wt = T.within_task_table(table, "answer", 5).set_index("detector")
    test = stats.select(split="test")
    e = test.labels()
    u = dets["perplexity@answer"].u_test
    tasks = detect.aggregate_tasks(test, "task_mean", 5)
    assert wt.loc["perplexity", "auroc_within_task_mean"] == pytest.approx(
        np.mean([M.auroc(e[test.task == t], u[test.task == t]) for t in tasks]))  # fmt: skip
    assert wt.loc["perplexity", "auroc_pooled"] == pytest.approx(M.auroc(e, u))
    assert np.isnan(T.within_task_table(table, "answer", 10_000).auroc_within_task_mean).all()


def _run(name, stats, dets):
    return detect.ModelRun(name, "", stats, dets, {"greedy_s": 1.0, "sampling_s": 1.0, "n": stats.n})


def test_model_table_side_by_side_and_paired_difference(cfg, stats, dets):
    runs = [_run("base", stats, dets), _run("sft", stats, dets), _run("noisefit_largest", stats, dets)]
    t = T.model_table(cfg, runs)
    assert list(dict.fromkeys(t.model)) == ["base", "sft", "noisefit_largest"]
    a = t[(t.model == "base") & (t.detector == "perplexity")].iloc[0]
    b = t[(t.model == "sft") & (t.detector == "perplexity")].iloc[0]
    assert a.auroc == b.auroc and a.prr == b.prr
    c = t[(t.model == "noisefit_largest") & (t.detector == "perplexity")].iloc[0]
    assert c["auroc_minus_sft"] == 0.0 and c["auroc_minus_sft_lo"] == 0.0  # identical models: no difference


def test_an_empty_table_is_replaced_by_its_reason():
    assert T.or_reason(pd.DataFrame(), "nothing to corrupt").to_dict(orient="records") == [{"note": "nothing to corrupt"}]
    df = pd.DataFrame([{"a": 1}])
    assert T.or_reason(df, "unused") is df


# -- F1 at the base rate -----------------------------------------------------------------------------------


def test_f1_base_rate_check_known_table(make_cfg, stats):
    """A detector that is perfect on fit and test: its fit-chosen threshold separates the classes,
    so F1 = 1 and the gain over always-error is 1 - 2b/(1+b) on every resample: 'credits'."""
    cfg = make_cfg(claims_aggregate="pooled")
    fit, test = stats.fit_test()
    e, ef = test.labels(), fit.labels()
    dets = {"linear_probe@answer": DetectorResult("linear_probe", "answer", u_test=e * 1.0, u_fit=ef * 1.0),
            "msp@answer": DetectorResult("msp", "answer", u_test=-1.0 * e, u_fit=-1.0 * ef)}  # fmt: skip
    t = T.f1_base_rate_check(cfg, stats, dets)
    r = t.iloc[0]
    b = e.mean()
    assert r.detector == "linear_probe@answer"  # the best by fit-split AUROC
    assert r.f1 == pytest.approx(1.0) and r.always_error_f1 == pytest.approx(2 * b / (1 + b))
    assert r.f1_gain == pytest.approx(1 - 2 * b / (1 + b))
    W = detect.paired_resample_weights(cfg, test.n)
    bb = (W @ e) / W.sum(axis=1)
    lo, hi = np.percentile(1 - 2 * bb / (1 + bb), [2.5, 97.5])
    assert (r.f1_gain_lo, r.f1_gain_hi) == (pytest.approx(lo), pytest.approx(hi))
    assert (r.auroc, r.auroc_lo, r.auroc_hi) == (1.0, 1.0, 1.0)
    assert r.reading == "credits" and r.informative == 1 and r.informative_not_beating_always_error == 0


def test_f1_base_rate_check_matches_the_f1_formula_on_real_detectors(make_cfg, stats, dets):
    cfg = make_cfg(claims_aggregate="pooled")
    r = T.f1_base_rate_check(cfg, stats, dets).iloc[0]
    fit, test = stats.fit_test()
    e = test.labels()
    best = detect.best_of(stats, dets, cfg.detectors, "answer")
    assert r.detector == best
    thr = M.choose_threshold(dets[best].u_fit, fit.labels())
    b = e.mean()
    assert r.f1_gain == pytest.approx(M.precision_recall_f1(dets[best].u_test > thr, e)[2] - 2 * b / (1 + b))
    assert r.f1_gain_lo <= r.f1_gain <= r.f1_gain_hi
    expected = "credits" if r.f1_gain_lo > 0 else "misleading" if r.auroc_lo > 0.5 else "undecided"
    assert r.reading == expected


def test_f1_base_rate_check_without_detectors_says_why(cfg, stats):
    t = T.f1_base_rate_check(cfg, stats, {})
    assert t.to_dict(orient="records") == [{"note": "no detector gave a fit-split AUROC on the answer span"}]


def test_task_table_is_per_task_and_macro_averaged_with_pooled_secondary(cfg, stats, dets):
    table = T.detector_table(cfg, stats, dets)
    by_task = T.task_table(table, "answer", cfg.claims_min_per_class)
    row = by_task.set_index("detector").loc["msp"]
    per = [c for c in by_task.columns if c.startswith("auroc/")]
    assert per and row.auroc_macro == pytest.approx(np.mean([row[c] for c in per]))
    pooled = table[(table.detector == "msp") & (table.span == "answer") & (table.task == "all")].auroc.iloc[0]
    assert row["auroc_pooled (secondary)"] == pytest.approx(pooled)
    assert by_task.set_index("detector").loc["meta_ranking"].judge_calls_per_response == 5
    assert row.judge_calls_per_response == 0


def test_task_auroc_figure_draws_the_headline_view(cfg, stats, dets):
    import matplotlib

    matplotlib.use("Agg")
    from trustlab.error_detection import figures as F

    by_task = T.task_table(T.detector_table(cfg, stats, dets), "answer", cfg.claims_min_per_class)
    fig = F.plot_task_auroc(by_task)
    assert fig is not None and len(fig.axes[0].patches) == len(by_task)
    assert F.plot_task_auroc(by_task.iloc[:0]) is None
