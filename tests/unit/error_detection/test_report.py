"""What the stage writes: metrics.json keeps its layout, wall times go to timing.json, empty
tables carry their reason, and the W&B runs are one per model plus a summary."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from trustlab.core.claims import audit
from trustlab.error_detection import claims as C
from trustlab.error_detection import metrics as M
from trustlab.error_detection import report as R
from trustlab.error_detection import run as detect
from trustlab.error_detection import tables as T
from trustlab.reporting.outputs import write_outputs


def _run(name, stats, dets):
    return detect.ModelRun(name, "", stats, dets, {"greedy_s": 1.0, "sampling_s": 2.0, "n": stats.n})


@pytest.fixture(scope="module")
def written(tmp_path_factory, cfg, stats, dets):
    run = _run("base", stats, dets)
    results = detect.Results(cfg, [run])
    table = T.detector_table(cfg, stats, dets)
    claims = C.claim_rows(cfg, stats, dets)
    tables = {"detectors": table, "cost": T.cost_table(stats, dets, run.timing), "claims": T.claims_frame(claims),
              "models": T.model_table(cfg, [run]), "injected": T.injected_table(cfg, stats, dets, detect.InjectedResult(
                  None, {}))}  # fmt: skip
    f1 = T.f1_base_rate_check(cfg, stats, dets)
    outputs = R.stage_outputs(results, tables, claims, f1, notes={"models": "none listed"})
    out = tmp_path_factory.mktemp("ed_report")
    write_outputs(out, outputs, profile="smoke", stage_seconds=1.5)
    return out, outputs


def test_metrics_keep_their_layout_and_hold_no_wall_time(written, stats, dets):
    out, outputs = written
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"headline", "claims", "tables", "stats", "injected_counts", "notes", "config", "run",
                      "provenance", "f1_base_rate_check"}  # fmt: skip
    assert m["run"] == {"profile": "smoke"}
    assert set(m["tables"]) == {"detectors", "claims", "models", "injected"}  # the cost table is timing
    assert "timing" not in m["stats"]["base"]
    h = json.loads((out / "headline.json").read_text())
    assert h == m["headline"]
    assert not [k for k in h if "s_per_1k" in k or k.endswith("_s") or k == "stage_seconds"]
    test = stats.select(split="test")
    per_task = [M.auroc(test.labels()[test.task == t], dets["perplexity@answer"].u_test[test.task == t])
                for t in sorted(set(test.task.tolist()))]  # fmt: skip
    assert h["perplexity/auroc_macro"] == pytest.approx(np.mean(per_task))
    assert h["perplexity/auroc/arithmetic"] == pytest.approx(per_task[0])
    assert h["meta_ranking/judge_calls_per_response"] == 5
    assert h["perplexity/auroc_pooled"] == pytest.approx(M.auroc(stats.select(split="test").labels(),
                                                          dets["perplexity@answer"].u_test))  # fmt: skip
    assert h["claims_total"] == len(C.CLAIMS) and h["f1_base_rate_check/reading"] == m["f1_base_rate_check"][0]["reading"]
    assert audit(m["claims"]) == []
    timing = json.loads((out / "timing.json").read_text())
    assert timing["stage_seconds"] == 1.5 and timing["generation_s"] == 3.0
    assert timing["msp/s_per_1k"] == pytest.approx(next(r for r in timing["cost"] if r["detector"] == "msp"
                                                        and r["span"] == "answer")["total_s_per_1k"])  # fmt: skip
    assert not (out / "plots" / "cost.csv").exists()
    assert (out / "plots" / "f1_base_rate_check.csv").exists() and (out / "plots" / "detectors.csv").exists()


def test_an_empty_table_is_written_with_its_reason(written):
    out, _ = written
    m = json.loads((out / "metrics.json").read_text())
    assert m["tables"]["injected"] == [{"note": R.TABLE_REASONS["injected"]}]
    with open(out / "plots" / "injected.csv") as fh:
        assert list(csv.DictReader(fh)) == [{"note": R.TABLE_REASONS["injected"]}]


def test_unknown_tables_are_refused(cfg, stats, dets):
    results = detect.Results(cfg, [_run("base", stats, dets)])
    with pytest.raises(ValueError, match="unknown tables"):
        R.stage_outputs(results, {"detectors": T.detector_table(cfg, stats, dets), "costs": None}, [], None)


def test_findings_quote_this_runs_numbers(cfg, stats, dets):
    table = T.detector_table(cfg, stats, dets)
    claims = C.claim_rows(cfg, stats, dets)
    f1 = T.f1_base_rate_check(cfg, stats, dets)
    text = R.findings(cfg, _run("base", stats, dets), table, claims, T.error_rate_table(stats), f1_check=f1)
    assert f"{claims[0]['effect']:+.3f}" in text and claims[0]["verdict"] in text
    assert f"gain {f1.f1_gain.iloc[0]:+.3f}" in text


def test_log_runs_one_run_per_model(cfg, stats, dets, monkeypatch):
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "disabled")
    results = detect.Results(cfg, [_run("base", stats, dets), _run("sft", stats, dets)])
    table = T.detector_table(cfg, stats, dets)
    names = R.log_runs(results, {"detectors": table}, {}, C.claim_rows(cfg, stats, dets), profile="smoke")
    assert names == ["base-seed0", "sft-seed0", "error_detection-summary"]
