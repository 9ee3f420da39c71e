"""The notebook's tables, headline numbers and output files (trustlab.calibration.report), on
small hand-made per-seed tables whose summaries are known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from trustlab.reporting.html import write_summary_html
from trustlab.calibration import report as rp
from trustlab.calibration.experiment import MainTables
from trustlab.core.stats import Claim

METRICS = ("acc", "nll", "ece", "mce", "ada_ece", "cw_ece", "brier", "aurc")


def _main_tables() -> MainTables:
    """2 losses x 3 variants x 2 seeds; 2 shifts x 2 severities. id_ece = base + seed/100;
    per-shift ece = base + severity/10 + (0.01 for blur) + seed/100."""
    base = {("ce", "raw"): 0.10, ("ce", "ts"): 0.03, ("ce", "ca"): 0.04,
            ("focal", "raw"): 0.06, ("focal", "ts"): 0.02, ("focal", "ca"): 0.05}
    main, per_shift, bins = [], [], []
    for (loss, variant), b in base.items():
        for seed in (0, 1):
            row = {"loss": loss, "seed": seed, "variant": variant, "temperature": 1.5 if variant != "raw" else 1.0}
            for m in METRICS:
                row[f"id_{m}"] = b + seed / 100 if m == "ece" else 0.9 if m == "acc" else 0.2
            sh = []
            for shift in ("noise", "blur"):
                for sev in (1, 2):
                    e = b + sev / 10 + (0.01 if shift == "blur" else 0.0) + seed / 100
                    m = {k: (e if k == "ece" else 0.7 if k == "acc" else 0.3) for k in METRICS}
                    per_shift.append({"loss": loss, "seed": seed, "variant": variant, "shift": shift, "severity": sev,
                                      **m})
                    sh.append(m)
            row.update({f"shift_{k}": float(np.mean([d[k] for d in sh])) for k in METRICS})
            main.append(row)
        for split in ("id", "shift"):
            for i in range(3):
                bins.append({"loss": loss, "variant": variant, "split": split, "bin": i, "lo": i / 3, "hi": (i + 1) / 3,
                             "count": 10.0 * (i + 1), "acc": 0.2 + 0.3 * i, "conf": 0.15 + 0.3 * i})
    return MainTables(pd.DataFrame(main), pd.DataFrame(per_shift), pd.DataFrame(bins))


def _robustness() -> pd.DataFrame:
    rows = []
    for loss, acc in (("ce", 0.5), ("focal", 0.6)):
        for seed in (0, 1):
            for variant in ("raw", "ts"):
                rows.append({"loss": loss, "noise": "uniform", "rate": 0.4, "seed": seed, "variant": variant,
                             "id_acc": acc + seed / 10, "id_ece": 0.3 if variant == "raw" else 0.1})
    return pd.DataFrame(rows)


def _claim(verdict="inconclusive") -> Claim:
    return Claim("calibration", "X beats Y", "paper", "id_ece", "decrease", -0.01, -0.03, 0.01, 2, verdict, "note")


def test_main_table_is_mean_pm_std_per_loss_and_variant():
    t = rp.main_table(_main_tables().main, "id")
    assert list(t.columns[:2]) == ["loss", "variant"]
    assert {"Acc", "NLL", "ECE", "AdaECE", "cwECE", "Brier", "AURC", "T"} <= set(t.columns)
    row = t[(t["loss"] == "ce") & (t["variant"] == "raw")].iloc[0]
    sd = np.std([0.10, 0.11], ddof=1)
    assert row["ECE"] == f"{0.105:.3f} ± {sd:.3f}"
    assert set(t["variant"]) == {"raw", "+TS", "+CA"}


def test_severity_frame_has_clean_level_and_means_over_shift_kinds():
    sev = rp.severity_frame(_main_tables())
    ce_raw = sev[(sev["loss"] == "ce") & (sev["variant"] == "raw")].set_index("severity")
    assert list(ce_raw.index) == [0, 1, 2]
    assert ce_raw.loc[0, "ece"] == pytest.approx(0.105)
    # severity 1: mean over noise (0.2) and blur (0.21), then over seeds (+0.005)
    assert ce_raw.loc[1, "ece"] == pytest.approx(0.10 + 0.1 + 0.005 + 0.005)
    assert ce_raw.loc[2, "n"] == 2


def test_per_shift_table_pivots_shift_kinds():
    ps = _main_tables().per_shift
    t = rp.per_shift_table(ps, "ece")
    assert list(t.columns) == ["loss", "variant", "noise", "blur"] and len(t) == 6
    s = rp.per_shift_summary(ps)
    r = s[(s["loss"] == "focal") & (s["variant"] == "ts") & (s["shift"] == "blur")].iloc[0]
    assert r["ece_mean"] == pytest.approx(0.02 + 0.15 + 0.01 + 0.005)


def test_robustness_table_adds_the_clean_column_from_the_main_table():
    t = rp.robustness_table(_robustness(), _main_tables().main, "id_acc")
    assert list(t.columns) == ["loss", "clean", "uniform 40%"]
    assert t.set_index("loss").loc["focal", "uniform 40%"].startswith("0.650 ±")
    assert t.set_index("loss").loc["ce", "clean"].startswith("0.900 ±")


def test_headline_names_and_values():
    mt = _main_tables()
    h = rp.headline({"main": mt, "robustness": _robustness()}, [_claim("supported"), _claim()], stage_seconds=12.34)
    assert h["ce_id_acc"] == pytest.approx(0.9)
    assert h["ce_id_ece"] == pytest.approx(0.105)
    assert h["ce_ts_id_ece"] == pytest.approx(0.035)
    focal_ca = mt.main.query("loss == 'focal' and variant == 'ca'")
    assert h["focal_ca_shift_ece"] == pytest.approx(focal_ca["shift_ece"].mean())
    assert h["noise_uniform_40_focal_acc"] == pytest.approx(0.65)
    assert h["claims_supported"] == 1 and h["claims_inconclusive"] == 1 and h["stage_seconds"] == 12.3
    assert all(isinstance(v, float) for v in h.values())


def test_write_outputs_files(tmp_path):
    mt = _main_tables()
    claims = [_claim()]
    m = rp.write_outputs(tmp_path, {"main": mt, "robustness": _robustness()}, claims, config={"a": 1}, profile="smoke",
                         stage_seconds=3.0)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["headline"] == pytest.approx(m["headline"])
    assert on_disk["claims"][0]["claim"] == "X beats Y"
    assert {"main", "per_shift", "ece_vs_severity", "robustness"} <= set(on_disk["tables"])
    sev = pd.read_csv(tmp_path / "plots" / "ece_vs_severity.csv")
    assert {"loss", "variant", "severity", "ece", "ece_std"} <= set(sev.columns)
    rel = pd.read_csv(tmp_path / "plots" / "reliability.csv")
    assert {"loss", "variant", "split", "bin", "acc", "conf", "count"} <= set(rel.columns)
    assert (tmp_path / "plots" / "claims.csv").exists()


def test_reliability_grid_and_severity_plot_build():
    import matplotlib

    matplotlib.use("Agg")
    mt = _main_tables()
    fig = rp.plot_reliability_grid(mt.bins, "ce")
    assert len([a for a in fig.axes if a.get_visible()]) == 6
    fig2 = rp.plot_ece_vs_severity(rp.severity_frame(mt))
    assert len(fig2.axes) == 3


def test_summary_html_embeds_tables_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from trustlab.reporting.plotting import save_figure

    png = save_figure(rp.plot_reliability_grid(_main_tables().bins, "ce"), tmp_path / "f.png")
    out = write_summary_html(tmp_path / "s.html", "t <x>", [("Claims", rp.claims_frame([_claim()])),
                                                             ("fig", png), ("Notes", "a < b")])
    text = out.read_text()
    assert "<table" in text and "X beats Y" in text and "data:image/png;base64," in text
    assert "a &lt; b" in text and "t &lt;x&gt;" in text


def test_run_logger_names_runs_without_wandb():
    log = rp.RunLogger("main", enabled=False)
    log("ce", 3, {"acc": 0.5})
    assert log.names == ["main-ce-seed3"]


def test_hparams_table_blanks_missing_parameters():
    from trustlab.calibration.config import CalibrationConfig

    t = rp.hparams_table(CalibrationConfig.from_dict({"losses": ["ce", "focal"]}))
    assert t.loc["focal", "gamma"] == 3.0 and t.loc["ce", "gamma"] == ""
