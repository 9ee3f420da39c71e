"""The calibration run functions end to end at a tiny size: table shapes, the on_run
callback, summaries, claims and the stage outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trustlab.calibration import claims as C
from trustlab.calibration import report as R
from trustlab.calibration import run as E
from trustlab.calibration import tables as T
from trustlab.calibration.config import CalibrationConfig
from trustlab.calibration.figures import reliability_diagram_from_bins
from trustlab.core import claims as engine

TINY = {
    "seeds": [0, 1],
    "losses": ["ce", "focal"],
    "n_train": 50,
    "epochs": 1,
    "hidden": 8,
    "shifts": ["noise", "blur"],
    "severities": [3],
    "ca": {"epochs": 2},
    "noise": {"losses": ["ce", "aldr_kl"], "kinds": ["uniform"], "rates": [0.4]},
    "annotators": {"n_annotators": 4, "labels_per_item": 3, "variants": ["majority", "aggregate"]},
    "anyloss": {"losses": ["bce", "anyloss_f1"], "epochs": 1},
    "enable_progress_bar": False,
}


@pytest.fixture(scope="module")
def tables():
    cfg = CalibrationConfig.from_dict(TINY)
    calls = []

    def on_run(name, seed, metrics):
        calls.append((name, seed, metrics))

    out = {
        "main": E.run_main_table(cfg, on_run=on_run),
        "robustness": E.run_robustness(cfg, on_run=on_run),
        "soft_labels": E.run_soft_labels(cfg, on_run=on_run),
        "anyloss": E.run_anyloss(cfg, on_run=on_run),
    }
    return out, calls


def test_main_table_shapes(tables):
    out, calls = tables
    mt = out["main"]
    assert len(mt.main) == 2 * 2 * 3  # loss x seed x {raw, ts, ca}
    assert set(mt.main["variant"]) == {"raw", "ts", "ca"}
    for col in ("id_acc", "id_ece", "id_ada_ece", "id_cw_ece", "id_brier", "id_aurc", "id_nll", "shift_ece"):
        assert col in mt.main and mt.main[col].notna().all()
    assert len(mt.per_shift) == 2 * 2 * 3 * 2  # ... x shift kinds x 1 severity
    # calibrators never change accuracy
    acc = mt.main.groupby(["loss", "seed"])["id_acc"].nunique()
    assert (acc == 1).all()
    bins = T.bins_for(mt.bins, "ce", "ts", "shift")
    assert bins["count"].sum() == 2 * 540
    fig = reliability_diagram_from_bins(bins)
    import matplotlib.pyplot as plt

    plt.close(fig)
    det = mt.detection
    assert len(det) == 2 * 2 * 3 and set(det["detector"]) == {"msp", "entropy", "spc"}  # loss x seed x detector
    assert det[["error_auroc", "shift_auroc"]].apply(lambda c: c.between(0, 1)).all().all()
    names = [c[0] for c in calls]
    assert names.count("ce") == 2 and "ce@uniform0.4" in names and "soft:aggregate" in names
    assert "raw/id_ece" in calls[0][2] and "ca/shift_acc" in calls[0][2] and "spc/error_auroc" in calls[0][2]


def test_other_tables(tables):
    out, _ = tables
    rob, soft, anyl = out["robustness"], out["soft_labels"], out["anyloss"]
    assert len(rob) == 2 * 2 * 2 and set(rob["variant"]) == {"raw", "ts"}
    assert "shift_ece" not in rob  # shifted sets only with noise.shifted
    assert set(soft["labels"]) == {"majority", "aggregate"}
    assert set(soft.loc[soft["labels"] == "aggregate", "loss"]) == {"soft_kl"}
    assert soft["shift_ece"].notna().all()
    assert len(anyl) == 4 and {"f1", "bacc", "gmean", "ece"} <= set(anyl.columns)


def _results(out) -> E.Results:
    return E.Results(out["main"], out["robustness"], out["soft_labels"], out["anyloss"], lm=None,
                     seconds={"main": 1.0}, cpu_seconds={"main": 1.5})


def test_summaries_and_claims(tables):
    out, _ = tables
    s = T.summarize(out["main"].main, ["loss", "variant"], ["id_ece"])
    assert len(s) == 6 and (s["n"] == 2).all()
    assert not any(c.startswith("train_seconds") for c in T.summarize(out["main"].main, ["loss", "variant"]).columns)
    f = T.format_summary(out["main"].main, ["loss", "variant"], ["id_acc"], scale=100)
    assert " ± " in f["id_acc"].iloc[0]
    rows = C.claim_rows(_results(out), noise_rates=[0.4])
    assert engine.audit(rows) == []
    by_id = {r["id"].split("/", 1)[1]: r for r in rows}
    assert list(by_id) == [c.spec.id for c in C.comparisons([0.4])]
    evaluated = ["ca_vs_ts_shift_ece", "focal_vs_ce_id_ece", "aldr_kl_vs_ce_acc_uniform_noise_40",
                 "aggregate_vs_majority_shift_ece", "anyloss_f1_vs_bce_f1", "spc_vs_msp_error_auroc",
                 "spc_vs_msp_shift_auroc"]
    for cid in evaluated:
        r = by_id[cid]
        assert r["n"] == 2 and np.isfinite(r["effect"])
        assert r["verdict"] in ("supported", "not supported", "inconclusive")
    # the effect is method - baseline, paired by seed, straight from the per-seed table
    main = out["main"].main
    ca = main.query("loss == 'ce' and variant == 'ca'").set_index("seed")["shift_ece"]
    ts = main.query("loss == 'ce' and variant == 'ts'").set_index("seed")["shift_ece"]
    assert by_id["ca_vs_ts_shift_ece"]["effect"] == pytest.approx(float((ca - ts).mean()))
    # variants not run stay in the table, not evaluated, with the reason
    assert by_id["aldr_kl_vs_ce_acc_flip_noise_40"]["verdict"] == "not evaluated"
    assert "'flip' in calibration.noise.kinds" in by_id["aldr_kl_vs_ce_acc_flip_noise_40"]["reason"]
    assert by_id["lm_ts_correctness_ece"]["verdict"] == "not evaluated"
    only_ce = E.Results(E.MainTables(main[main["loss"] == "ce"], out["main"].per_shift, out["main"].bins),
                        out["robustness"].iloc[0:0], out["soft_labels"], out["anyloss"])
    again = {r["id"].split("/", 1)[1]: r["verdict"] for r in C.claim_rows(only_ce)}
    assert again["focal_vs_ce_id_ece"] == "not evaluated" and again["ca_vs_ts_shift_ece"] != "not evaluated"


def test_stage_outputs_keep_wall_times_out_of_metrics(tables, tmp_path):
    from trustlab.reporting.outputs import write_outputs

    out, _ = tables
    res = _results(out)
    rows = C.claim_rows(res)
    metrics = write_outputs(tmp_path, R.stage_outputs(res, rows, {"seeds": [0, 1]}), profile="smoke")
    assert list(metrics)[:7] == ["headline", "claims", "tables", "lm", "tuning", "config", "run"]
    assert metrics["tuning"] is None  # these results were not tuned
    text = (tmp_path / "metrics.json").read_text() + (tmp_path / "headline.json").read_text()
    assert "seconds" not in text
    for csv in (tmp_path / "plots").glob("*.csv"):
        assert "seconds" not in csv.read_text().splitlines()[0], csv.name
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["part_seconds"] == {"main": 1.0}
    assert timing["part_cores_used"] == {"main": 1.5} and timing["parts_cpu_seconds"] == 1.5
    models = out["main"].main.drop_duplicates(["loss", "seed"])
    assert timing["main_train_seconds_total"] == pytest.approx(models["train_seconds"].sum())
    h = metrics["headline"]
    assert h["claims_not_evaluated"] == 5  # + the two waveform claims: that table is not in these results
    assert sum(h[f"claims_{v.replace(' ', '_')}"] for v in engine.VERDICTS) == len(rows)


def test_workers_give_the_tables_of_a_serial_run():
    """Two worker processes and one: the same rows in the same order, timings aside."""
    import pandas as pd

    tiny = {**TINY, "seeds": [0, 1], "annotators": {**TINY["annotators"], "variants": ["majority", "vote"]}}
    by_workers = {}
    for workers in (1, 2):
        cfg = CalibrationConfig.from_dict({**tiny, "workers": workers})
        mt = E.run_main_table(cfg)
        by_workers[workers] = [mt.main, mt.per_shift, mt.bins, mt.detection, E.run_soft_labels(cfg)]
    for serial, parallel in zip(by_workers[1], by_workers[2]):
        drop = [c for c in serial.columns if c in E.TIMING_COLUMNS]
        pd.testing.assert_frame_equal(serial.drop(columns=drop), parallel.drop(columns=drop))


def test_part_clock_counts_wall_and_cpu():
    clock = E.PartClock()
    with clock("busy"):
        sum(i * i for i in range(200_000))
    assert clock.wall["busy"] > 0 and clock.cpu["busy"] > 0


def test_waveform_table_and_its_claims():
    cfg = CalibrationConfig.from_dict({**TINY, "waveforms": {"n_samples": 300, "n_train": 60, "epochs": 1},
                                       "workers": 1})  # fmt: skip
    wt = E.run_main_table(cfg, dataset="waveforms")
    assert set(wt.main["variant"]) == {"raw", "ts"}  # CA needs image views: left out here
    assert len(wt.main) == 2 * 2 * 2 and "shift_ece" not in wt.main
    assert len(wt.detection) == 2 * 2 * 3 and wt.detection["shift_auroc"].isna().all()
    import pandas as pd

    res = E.Results(None, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), waveforms=wt)
    by_id = {r["id"].split("/", 1)[1]: r for r in C.claim_rows(res)}
    assert by_id["focal_vs_ce_id_ece_waveforms"]["n"] == 2
    assert by_id["spc_vs_msp_error_auroc_waveforms"]["verdict"] != "not evaluated"
    assert by_id["focal_vs_ce_id_ece"]["verdict"] == "not evaluated"
    out = R.stage_outputs(res, list(by_id.values()), {})
    assert "waveforms" in out.plots and "shift_auroc" not in out.plots["waveforms_detection"]
    assert "waveforms_focal_id_ece" in out.headline
