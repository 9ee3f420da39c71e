"""The calibration experiment functions end to end at a tiny size: table shapes, the on_run
callback, summaries and claims."""

from __future__ import annotations

import numpy as np
import pytest

from trustlab.calibration import experiment as E
from trustlab.calibration.config import CalibrationConfig
from trustlab.calibration.metrics import reliability_diagram_from_bins
from trustlab.core.stats import Claim

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
    bins = E.bins_for(mt.bins, "ce", "ts", "shift")
    assert bins["count"].sum() == 2 * 540
    fig = reliability_diagram_from_bins(bins)
    import matplotlib.pyplot as plt

    plt.close(fig)
    names = [c[0] for c in calls]
    assert names.count("ce") == 2 and "ce@uniform0.4" in names and "soft:aggregate" in names
    assert "raw/id_ece" in calls[0][2] and "ca/shift_acc" in calls[0][2]


def test_other_tables(tables):
    out, _ = tables
    rob, soft, anyl = out["robustness"], out["soft_labels"], out["anyloss"]
    assert len(rob) == 2 * 2 * 2 and set(rob["variant"]) == {"raw", "ts"}
    assert "shift_ece" not in rob  # shifted sets only with noise.shifted
    assert set(soft["labels"]) == {"majority", "aggregate"}
    assert set(soft.loc[soft["labels"] == "aggregate", "loss"]) == {"soft_kl"}
    assert soft["shift_ece"].notna().all()
    assert len(anyl) == 4 and {"f1", "bacc", "gmean", "ece"} <= set(anyl.columns)


def test_summaries_and_claims(tables):
    out, _ = tables
    s = E.summarize(out["main"].main, ["loss", "variant"], ["id_ece"])
    assert len(s) == 6 and (s["n"] == 2).all()
    f = E.format_summary(out["main"].main, ["loss", "variant"], ["id_acc"], scale=100)
    assert " ± " in f["id_acc"].iloc[0]
    cl = E.claims(out)
    assert all(isinstance(c, Claim) for c in cl)
    names = {c.claim for c in cl}
    assert any("CA calibrator" in n for n in names) and any("Focal" in n for n in names)
    assert any("ALDR-KL" in n for n in names) and any("soft labels" in n for n in names)
    assert all(c.n_seeds == 2 and c.verdict in ("supported", "not supported", "inconclusive") for c in cl)
    # missing rows -> claim left out, not an error
    only_ce = out["main"].main[out["main"].main["loss"] == "ce"]
    assert [c.claim for c in E.claims({"main": only_ce})] == ["CA calibrator beats temperature scaling on shifted ECE"]
    assert np.isfinite(cl[0].effect)
