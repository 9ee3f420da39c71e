"""The notebook's tables, claims, headline numbers and output files (trustlab.calibration
tables / claims / figures / report), on small hand-made per-seed tables whose summaries,
effects, intervals, tests and verdicts are known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scipy import stats

from trustlab.calibration import claims as C
from trustlab.calibration import figures as fg
from trustlab.calibration import report as rp
from trustlab.calibration import tables as tb
from trustlab.calibration.run import MainTables, Results
from trustlab.core import claims as engine
from trustlab.reporting.html import write_summary_html
from trustlab.reporting.outputs import write_outputs

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


def _results() -> Results:
    return Results(_main_tables(), _robustness(), pd.DataFrame(), pd.DataFrame(), lm=None, seconds={"main": 2.0})


def _claims() -> list[dict]:
    return C.claim_rows(_results())


# -- claims on known tables ----------------------------------------------------------------------


def test_tied_seed_differences_use_the_exact_sign_flip_test():
    # ce + CA minus ce + TS on shifted ECE is 0.01 for both seeds (see _main_tables): no spread,
    # so the exact sign-flip test decides; with 2 seeds its smallest p is 0.5 -> inconclusive
    row = {r["id"]: r for r in _claims()}["calibration/ca_vs_ts_shift_ece"]
    assert row["effect"] == pytest.approx(0.01)
    assert row["ci_low"] == pytest.approx(0.01) and row["ci_high"] == pytest.approx(0.01)
    assert row["test"] == engine.TEST_SIGN_FLIP and row["p_value"] == pytest.approx(0.5)
    assert row["n"] == 2 and row["verdict"] == "inconclusive" and row["range"] == [0.0, 1.0]
    assert "at least 6 seeds" in row["reason"]


def _main_three_seeds(focal_minus_ce=(-0.04, -0.05, -0.06)) -> MainTables:
    rows = []
    for seed, d in enumerate(focal_minus_ce):
        ce = 0.10 + 0.02 * seed
        rows += [{"loss": "ce", "seed": seed, "variant": "raw", "id_ece": ce, "id_acc": 0.9},
                 {"loss": "focal", "seed": seed, "variant": "raw", "id_ece": ce + d, "id_acc": 0.9}]
    return MainTables(pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())


def test_focal_claim_effect_interval_t_test_and_verdict():
    res = Results(_main_three_seeds(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    row = {r["id"]: r for r in C.claim_rows(res)}["calibration/focal_vs_ce_id_ece"]
    # differences -0.04, -0.05, -0.06: mean -0.05, sd 0.01, t = -0.05 / (0.01 / sqrt 3) = -8.66 on 2 df
    half = stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3)
    assert row["effect"] == pytest.approx(-0.05)
    assert row["ci_low"] == pytest.approx(-0.05 - half) and row["ci_high"] == pytest.approx(-0.05 + half)
    assert row["test"] == engine.TEST_T
    assert row["p_value"] == pytest.approx(2 * stats.t.cdf(-0.05 / (0.01 / np.sqrt(3)), 2))
    assert row["p_value"] == pytest.approx(0.01307, abs=1e-4)
    assert row["verdict"] == "supported" and row["expected"] == "decrease" and row["n"] == 3
    # the same differences with the opposite sign: significant against the expected direction
    worse = Results(_main_three_seeds((0.04, 0.05, 0.06)), pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    row = {r["id"]: r for r in C.claim_rows(worse)}["calibration/focal_vs_ce_id_ece"]
    assert row["effect"] == pytest.approx(0.05) and row["verdict"] == "not supported"
    # a spread that swamps the mean: inconclusive
    noisy = Results(_main_three_seeds((-0.05, 0.04, -0.02)), pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    row = {r["id"]: r for r in C.claim_rows(noisy)}["calibration/focal_vs_ce_id_ece"]
    assert row["effect"] == pytest.approx(-0.01) and row["ci_low"] < 0 < row["ci_high"]
    assert row["verdict"] == "inconclusive" and row["p_value"] > 0.05


def test_claims_table_keeps_every_claim_and_passes_the_audit():
    rows = _claims()
    assert engine.audit(rows) == []
    assert [r["id"] for r in rows] == [f"calibration/{s.id}" for s in C.CLAIMS]
    assert len({r["claim"] for r in rows}) == len(rows)
    by_id = {r["id"].split("/")[1]: r for r in rows}
    # robustness: focal and ce were run, aldr_kl was not
    assert by_id["aldr_kl_vs_ce_acc_uniform_noise_40"]["verdict"] == "not evaluated"
    assert "'aldr_kl' and 'ce' in calibration.noise.losses" in by_id["aldr_kl_vs_ce_acc_uniform_noise_40"]["reason"]
    assert by_id["anyloss_f1_vs_bce_f1"]["verdict"] == "not evaluated"
    assert "calibration.lm.enabled: true" in by_id["lm_ts_gold_nll_ece"]["reason"]
    assert engine.count_verdicts(rows) == {"supported": 0, "not supported": 0, "inconclusive": 2, "not evaluated": 10}
    # label-noise claims follow the configured rates
    ids = [c.spec.id for c in C.comparisons([0.2, 0.4])]
    assert "aldr_kl_vs_ce_acc_flip_noise_20" in ids and "aldr_kl_vs_ce_acc_flip_noise_40" in ids


def test_lm_claim_pairs_split_seeds_on_the_pooled_items():
    from types import SimpleNamespace

    table = pd.DataFrame([
        {"seed": s, "pool": pool, "method": m, "ece": e}
        for s, (raw, ts) in enumerate([(0.30, 0.10), (0.28, 0.12), (0.35, 0.11)])
        for m, e in (("raw", raw), ("ts_correctness", ts))
        for pool, e in (("all", e), ("world_qa/qa_train", 0.9))  # per-pool rows must not enter the claim
    ])  # fmt: skip
    res = Results(MainTables(pd.DataFrame(), pd.DataFrame(), pd.DataFrame()), pd.DataFrame(), pd.DataFrame(),
                  pd.DataFrame(), lm=SimpleNamespace(table=table))
    rows = {r["id"].split("/")[1]: r for r in C.claim_rows(res)}
    row = rows["lm_ts_correctness_ece"]
    d = np.array([0.10 - 0.30, 0.12 - 0.28, 0.11 - 0.35])
    assert row["effect"] == pytest.approx(d.mean()) and row["n"] == 3 and row["test"] == engine.TEST_T
    assert row["p_value"] == pytest.approx(stats.ttest_rel([0.10, 0.12, 0.11], [0.30, 0.28, 0.35]).pvalue)
    assert row["verdict"] == "supported" and row["metric"] == "lm_ece"
    assert rows["lm_ts_gold_nll_ece"]["verdict"] == "not evaluated"


def test_main_table_is_mean_pm_std_per_loss_and_variant():
    t = tb.main_table(_main_tables().main, "id")
    assert list(t.columns[:2]) == ["loss", "variant"]
    assert {"Acc", "NLL", "ECE", "AdaECE", "cwECE", "Brier", "AURC", "T"} <= set(t.columns)
    row = t[(t["loss"] == "ce") & (t["variant"] == "raw")].iloc[0]
    sd = np.std([0.10, 0.11], ddof=1)
    assert row["ECE"] == f"{0.105:.3f} ± {sd:.3f}"
    assert set(t["variant"]) == {"raw", "+TS", "+CA"}


def test_severity_frame_has_clean_level_and_means_over_shift_kinds():
    sev = tb.severity_frame(_main_tables())
    ce_raw = sev[(sev["loss"] == "ce") & (sev["variant"] == "raw")].set_index("severity")
    assert list(ce_raw.index) == [0, 1, 2]
    assert ce_raw.loc[0, "ece"] == pytest.approx(0.105)
    # severity 1: mean over noise (0.2) and blur (0.21), then over seeds (+0.005)
    assert ce_raw.loc[1, "ece"] == pytest.approx(0.10 + 0.1 + 0.005 + 0.005)
    assert ce_raw.loc[2, "n"] == 2


def test_per_shift_table_pivots_shift_kinds():
    ps = _main_tables().per_shift
    t = tb.per_shift_table(ps, "ece")
    assert list(t.columns) == ["loss", "variant", "noise", "blur"] and len(t) == 6
    s = tb.per_shift_summary(ps)
    r = s[(s["loss"] == "focal") & (s["variant"] == "ts") & (s["shift"] == "blur")].iloc[0]
    assert r["ece_mean"] == pytest.approx(0.02 + 0.15 + 0.01 + 0.005)


def test_robustness_table_adds_the_clean_column_from_the_main_table():
    t = tb.robustness_table(_robustness(), _main_tables().main, "id_acc")
    assert list(t.columns) == ["loss", "clean", "uniform 40%"]
    assert t.set_index("loss").loc["focal", "uniform 40%"].startswith("0.650 ±")
    assert t.set_index("loss").loc["ce", "clean"].startswith("0.900 ±")


def test_headline_names_and_values():
    mt = _main_tables()
    h = rp.headline(_results(), _claims())
    assert h["ce_id_acc"] == pytest.approx(0.9)
    assert h["ce_id_ece"] == pytest.approx(0.105)
    assert h["ce_ts_id_ece"] == pytest.approx(0.035)
    focal_ca = mt.main.query("loss == 'focal' and variant == 'ca'")
    assert h["focal_ca_shift_ece"] == pytest.approx(focal_ca["shift_ece"].mean())
    assert h["noise_uniform_40_focal_acc"] == pytest.approx(0.65)
    assert h["claims_supported"] == 0 and h["claims_inconclusive"] == 2 and h["claims_not_evaluated"] == 10
    assert "stage_seconds" not in h and not any("seconds" in k for k in h)
    assert all(isinstance(v, float) for v in h.values())


def test_write_outputs_files(tmp_path):
    res = _results()
    m = write_outputs(tmp_path, rp.stage_outputs(res, _claims(), {"a": 1}), profile="smoke", stage_seconds=3.0)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["headline"] == pytest.approx(m["headline"])
    assert on_disk["claims"][0]["claim"] == "CA calibrator beats temperature scaling on shifted ECE"
    assert {"main", "per_shift", "ece_vs_severity", "robustness"} <= set(on_disk["tables"])
    assert on_disk["config"] == {"a": 1} and on_disk["lm"] is None and on_disk["run"]["profile"] == "smoke"
    assert json.loads((tmp_path / "timing.json").read_text())["stage_seconds"] == 3.0
    sev = pd.read_csv(tmp_path / "plots" / "ece_vs_severity.csv")
    assert {"loss", "variant", "severity", "ece", "ece_std"} <= set(sev.columns)
    rel = pd.read_csv(tmp_path / "plots" / "reliability.csv")
    assert {"loss", "variant", "split", "bin", "acc", "conf", "count"} <= set(rel.columns)
    claims_csv = pd.read_csv(tmp_path / "plots" / "claims.csv")
    assert list(claims_csv["verdict"]) == [r["verdict"] for r in _claims()]


def test_findings_quote_this_runs_numbers():
    text = rp.findings(_results(), _claims())
    assert "effect +0.0100 [+0.0100, +0.0100] over 2 seeds" in text
    assert "*not evaluated*" in text
    # lowest shifted ECE +TS: focal (0.02 + 0.15 + 0.005 + 0.005 = 0.180)
    assert "Lowest shifted ECE +TS: focal (0.180)" in text
    assert "ranges 0.900 (ce) to 0.900" in text


def test_reliability_grid_and_severity_plot_build():
    import matplotlib

    matplotlib.use("Agg")
    mt = _main_tables()
    fig = fg.plot_reliability_grid(mt.bins, "ce")
    assert len([a for a in fig.axes if a.get_visible()]) == 6
    fig2 = fg.plot_ece_vs_severity(tb.severity_frame(mt))
    assert len(fig2.axes) == 3


def test_summary_html_embeds_tables_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from trustlab.reporting.plotting import save_figure

    png = save_figure(fg.plot_reliability_grid(_main_tables().bins, "ce"), tmp_path / "f.png")
    out = write_summary_html(tmp_path / "s.html", "t <x>", [("Claims", tb.claims_frame(_claims())),
                                                             ("fig", png), ("Notes", "a < b")])
    text = out.read_text()
    assert "<table" in text and "CA calibrator beats" in text and "data:image/png;base64," in text
    assert "a &lt; b" in text and "t &lt;x&gt;" in text


def test_run_logger_names_runs_without_wandb():
    log = rp.RunLogger("main", enabled=False)
    log("ce", 3, {"acc": 0.5})
    assert log.names == ["main-ce-seed3"]


def test_hparams_table_blanks_missing_parameters():
    from trustlab.calibration.config import CalibrationConfig

    t = tb.hparams_table(CalibrationConfig.from_dict({"losses": ["ce", "focal"]}))
    assert t.loc["focal", "gamma"] == 3.0 and t.loc["ce", "gamma"] == ""
