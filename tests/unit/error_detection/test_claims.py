"""The family's claims: declared as data, evaluated by the claims engine on known tables."""

from __future__ import annotations

import numpy as np
import pytest

from trustlab.core import claims as engine
from trustlab.error_detection import claims as C
from trustlab.error_detection import metrics as M
from trustlab.error_detection import run as detect
from trustlab.error_detection.run import DetectorResult


def _det(name, u_test, u_fit):
    return DetectorResult(name, "answer", u_test=np.asarray(u_test, float), u_fit=np.asarray(u_fit, float))


def _ids(rows):
    return [r["id"].split("/", 1)[1] for r in rows]


def test_claims_are_data_with_stable_ids_and_distinct_texts():
    assert _ids([{"id": f"x/{s.id}"} for s in C.CLAIMS]) == [
        "sampling_beats_single_pass", "rpc_beats_consistency_and_perplexity", "hidden_state_beats_logit",
        "spc_beats_msp", "meta_ranking_beats_msp"]  # fmt: skip
    assert len({s.claim for s in C.CLAIMS}) == len(C.CLAIMS)
    assert all(s.unit == "items" and s.range == (0.0, 1.0) for s in C.CLAIMS)
    assert not any("F1" in s.claim for s in C.CLAIMS)  # the F1 base-rate check is a table, not a claim


def test_known_table_gives_each_verdict(make_cfg, stats):
    """Perfect and inverted detectors: every bootstrap replicate of the AUROC difference equals the
    point effect, so the interval is that point and p is the smallest the 200 resamples allow."""
    cfg = make_cfg(claims_aggregate="pooled")
    fit, test = stats.fit_test()
    e, ef = test.labels() * 1.0, fit.labels() * 1.0
    dets = {
        "self_consistency@answer": _det("self_consistency", e, ef),  # test AUROC 1
        "perplexity@answer": _det("perplexity", -e, ef),  # fit AUROC 1 (chosen), test AUROC 0
        "msp@answer": _det("msp", e, -ef),  # test AUROC 1 but fit AUROC 0: never chosen
        "rpc@answer": _det("rpc", -e, ef),  # test AUROC 0
        "linear_probe@answer": _det("linear_probe", 0 * e, ef),  # test AUROC 0.5 (all tied)
    }
    rows = C.claim_rows(cfg, stats, dets)
    assert engine.audit(rows) == []
    by = dict(zip(_ids(rows), rows))
    one = by["sampling_beats_single_pass"]  # 1 - 0
    assert (one["effect"], one["ci_low"], one["ci_high"]) == (1.0, 1.0, 1.0)
    assert one["test"] == engine.TEST_BOOTSTRAP and one["p_value"] == pytest.approx(1 / 200)
    assert one["verdict"] == "supported" and one["n"] == test.n and one["metric"] == "AUROC (pooled)"
    assert "perplexity@answer" in one["note"]
    two = by["rpc_beats_consistency_and_perplexity"]  # min(0 - 1, 0 - 0)
    assert (two["effect"], two["ci_low"], two["ci_high"]) == (-1.0, -1.0, -1.0)
    assert two["verdict"] == "not supported"
    three = by["hidden_state_beats_logit"]  # 0.5 - 0 against perplexity, the logit group's best on fit
    assert three["effect"] == 0.5 and three["verdict"] == "supported"
    dets["linear_probe@answer"] = _det("linear_probe", -e, ef)  # now 0 - 0: no effect at all
    tie = dict(zip(_ids(rows := C.claim_rows(cfg, stats, dets)), rows))["hidden_state_beats_logit"]
    assert (tie["effect"], tie["p_value"], tie["verdict"]) == (0.0, 1.0, "inconclusive")


def test_interval_and_p_value_come_from_the_paired_resamples(make_cfg, stats, dets):
    cfg = make_cfg(claims_aggregate="pooled")
    test = stats.select(split="test")
    e = test.labels()
    W = detect.paired_resample_weights(cfg, test.n)
    single = detect.best_of(stats, dets, detect.SINGLE_PASS_PROBABILITY, "answer")
    sc = dets["self_consistency@answer"].u_test
    reps = M.auroc_w(sc, e, W) - M.auroc_w(dets[single].u_test, e, W)
    row = C.claim_rows(cfg, stats, dets)[0]
    assert row["effect"] == pytest.approx(M.auroc(e, sc) - M.auroc(e, dets[single].u_test))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    tail = min(np.mean(reps <= 0), np.mean(reps >= 0))
    assert row["p_value"] == pytest.approx(min(1.0, max(2 * tail, 1 / reps.size)))
    assert row["verdict"] == engine.decide(row["effect"], row["p_value"], "increase")
    again = C.claim_rows(cfg, stats, detect.run_detectors(cfg, stats))
    assert again == C.claim_rows(cfg, stats, dets)  # deterministic


def test_task_mean_claims_average_per_task_aurocs(make_cfg, stats, dets):
    cfg = make_cfg(claims_aggregate="task_mean", claims_min_per_class=5)
    test = stats.select(split="test")
    e = test.labels()
    tasks = detect.aggregate_tasks(test, "task_mean", 5)
    per_task = lambda k: np.mean([M.auroc(e[test.task == t], dets[k].u_test[test.task == t]) for t in tasks])  # noqa
    row = C.claim_rows(cfg, stats, dets)[2]
    hk = detect.best_of(stats, dets, detect.MAHALANOBIS_AND_PROBE, "answer", "task_mean", 5)
    lk = detect.best_of(stats, dets, detect.LOGIT, "answer", "task_mean", 5)
    assert row["effect"] == pytest.approx(per_task(hk) - per_task(lk))
    assert row["metric"] == "AUROC (mean over tasks)" and "pooled" in row["note"]


def test_claims_that_cannot_be_evaluated_say_why(make_cfg, stats, dets, with_labels):
    cfg = make_cfg(claims_aggregate="pooled")
    some = {k: d for k, d in dets.items() if not k.startswith("rpc@")}
    rows = C.claim_rows(cfg, stats, some)
    assert rows[0]["verdict"] != "not evaluated" and rows[2]["verdict"] != "not evaluated"
    assert rows[1]["reason"] == "rpc did not run on the answer span" and rows[1]["test"] == "none"
    labels = stats.is_error.copy()
    labels[stats.split == "test"] = True
    rows = C.claim_rows(cfg, with_labels(stats, labels), dets)
    assert {r["verdict"] for r in rows} == {"not evaluated"}
    assert rows[0]["reason"].startswith("the test split has only one class")
    assert engine.audit(rows) == []
    few = C.claim_rows(make_cfg(claims_aggregate="pooled", bootstrap_resamples=50), stats, dets)
    assert {r["reason"] for r in few} == {"only 50 usable bootstrap resamples"}


def test_claims_without_signal_are_not_supported_by_chance(make_cfg):
    from trustlab.error_detection.synthetic import synthetic_stats

    s = synthetic_stats(n=160, K=4, n_layers=2, d=4, seed=5, signal=0.0)
    cfg = make_cfg(detectors=["msp", "perplexity", "mean_token_entropy", "zero_shot_z", "self_consistency", "rpc",
                              "mahalanobis", "linear_probe"])  # fmt: skip
    rows = C.claim_rows(cfg, s, detect.run_detectors(cfg, s))
    assert rows[2]["verdict"] != "supported"
