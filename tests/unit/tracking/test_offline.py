"""Offline W&B runs hold what the stages log: read back the local run files.

Fast tests drive :mod:`trustlab.tracking` with the families' pattern (per-seed runs plus one
summary run with tables, figures and HTML) and the front-page command; the e2e test reads the
runs that a real smoke notebook execution wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from _reports_fixtures import SMOKE_FAMILY, claim, make_stage, smoke_reports  # noqa: E402
from trustlab.tracking import runs as tracking  # noqa: E402
from trustlab.core.provenance import git_commit  # noqa: E402
from trustlab.tracking.offline import offline_runs, read_offline_run, read_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def _runs(root: Path) -> list[dict]:
    out = []
    for d in offline_runs(root):
        rec = read_offline_run(d)
        assert rec["complete"], f"{d} has no exit record"
        out.append({**rec, "dir": d})
    return out


def test_run_name_convention():
    assert tracking.run_name("focal", 1) == "focal-seed1"
    assert tracking.run_name("SM+G", 0, gamma=0.2) == "SM+G-gamma0.2-seed0"
    assert tracking.run_name("summary") == "summary"


def test_family_pattern_round_trips_through_offline_files(wandb_tmp):
    """Per-(variant, seed) runs and a summary run, as every family logs them."""
    config = {"losses": ["ce", "focal"], "seeds": [0, 1], "lr": 0.01, "profile": "smoke"}
    for variant in ("ce", "focal"):
        for seed in (0, 1):
            with tracking.start_run(
                "calibration", "train", tracking.run_name(variant, seed), config={**config, "seed": seed}
            ) as run:
                run.log({"loss": 1.0 / (seed + 1)}, step=0)
                run.summary({"ece": 0.1 + seed})
    claims = pd.DataFrame([claim("calibration", "supported")])
    main = pd.DataFrame({"loss": ["ce", "focal"], "ece": [0.08, 0.05]})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    html = wandb_tmp / "summary.html"
    html.write_text("<!DOCTYPE html><html><body><h1>calibration</h1></body></html>")
    with tracking.start_run("calibration", "summary", "summary", config=config) as run:
        run.log_table("claims", claims)
        run.log_table("main", main)
        run.log_image("reliability_ce", fig)
        run.log_html("report", html)
        run.summary({"claims_supported": 1, "stage_seconds": 12.0})
    plt.close(fig)

    runs = _runs(wandb_tmp)
    assert len(runs) == 5
    assert {r["group"] for r in runs} == {"calibration"}
    train = [r for r in runs if r["job_type"] == "train"]
    assert sorted(r["name"] for r in train) == ["ce-seed0", "ce-seed1", "focal-seed0", "focal-seed1"]
    for r in runs:
        assert f"commit:{git_commit()[:12]}" in r["tags"] and "family:calibration" in r["tags"]
        assert r["config"]["losses"] == ["ce", "focal"] and r["config"]["profile"] == "smoke"
    assert {r["config"]["seed"] for r in train} == {0, 1}

    (summary,) = [r for r in runs if r["job_type"] == "summary"]
    s = summary["summary"]
    assert s["claims_supported"] == 1 and s["stage_seconds"] == 12.0
    got = read_table(summary["dir"], s, "claims")
    assert got["columns"] == list(claims.columns) and got["data"][0][claims.columns.get_loc("verdict")] == "supported"
    assert read_table(summary["dir"], s, "main")["data"] == [["ce", 0.08], ["focal", 0.05]]
    assert s["figures/reliability_ce/_type"] == "image-file"
    assert (summary["dir"] / "files" / s["figures/reliability_ce/path"]).is_file()
    assert s["report/_type"] == "html-file"
    assert "<h1>calibration</h1>" in (summary["dir"] / "files" / s["report/path"]).read_text()
    assert {"name": "calibration-report", "type": "report", "files": ["summary.html"]} in summary["artifacts"]
    with pytest.raises(KeyError, match="not a logged table"):
        read_table(summary["dir"], s, "stage_seconds")


def test_log_report_makes_a_report_run_in_the_family_group(wandb_tmp):
    html = wandb_tmp / "index.html"
    html.write_text("<!DOCTYPE html><html><body><h1>noisefit report</h1></body></html>")
    tracking.log_report("noisefit", html, config={"profile": "smoke"})
    (run,) = _runs(wandb_tmp)
    assert (run["group"], run["job_type"], run["name"]) == ("noisefit", "report", "noisefit-report-html")
    assert run["summary"]["report/_type"] == "html-file"
    assert [a["type"] for a in run["artifacts"]] == ["report"] and run["artifacts"][0]["files"] == ["index.html"]


def test_front_page_is_logged_with_claims_table_and_artifact(wandb_tmp, tmp_path):
    sys.path.insert(0, str(ROOT / "pipelines"))
    import render_front_page

    reports = tmp_path / "reports"
    make_stage(
        reports,
        "calibration",
        claims=[
            claim("calibration", "supported"),
            claim("calibration", "inconclusive"),
        ],
    )
    assert (
        render_front_page.main(
            ["--reports-dir", str(reports), "--profile", "smoke", "--quiet", "--data-dir", str(tmp_path / "nodata")]
        )
        == 0
    )
    (run,) = _runs(wandb_tmp)
    assert (run["group"], run["job_type"], run["name"]) == ("report", "report", "front-page")
    s = run["summary"]
    assert s["claims_total"] == 2 and s["claims_supported"] == 1 and s["claims_inconclusive"] == 1
    assert read_table(run["dir"], s, "claims")["columns"][:2] == ["id", "family"]
    assert s["front-page/_type"] == "html-file"
    assert {"name": "report-front-page", "type": "report", "files": ["index.html"]} in run["artifacts"]
    # the page itself tells how to upload the offline runs
    assert '<pre id="wandb-sync">wandb sync --yes</pre>' in (reports / "index.html").read_text()


@pytest.mark.e2e
def test_smoke_notebook_offline_runs_hold_summary_and_tables(tmp_path_factory):
    smoke = smoke_reports(tmp_path_factory)
    runs = _runs(smoke.wandb_root)
    assert runs, "the smoke notebook wrote no offline run"
    assert {r["group"] for r in runs} == {SMOKE_FAMILY}
    train = [r for r in runs if r["job_type"] == "train"]
    assert train and all("seed" in r["name"] for r in train), [r["name"] for r in train]
    (summary,) = [r for r in runs if r["job_type"] == "summary"]
    assert summary["name"] == f"{SMOKE_FAMILY}-summary" and "summary" in summary["tags"]
    s = summary["summary"]
    for table in ("claims", "perplexity", "head_bins"):
        got = read_table(summary["dir"], s, table)
        assert got["columns"] and got["data"], f"table {table} is empty"
    claims = read_table(summary["dir"], s, "claims")
    assert {"claim", "effect", "verdict"} <= set(claims["columns"])
    figures = sorted(p.stem for p in (smoke.reports / SMOKE_FAMILY / "figures").glob("*.png"))
    assert figures and all(s.get(f"figures/{f}/_type") == "image-file" for f in figures), (
        "figures missing from the summary"
    )
    assert "stage_seconds" in s
    for r in runs:
        assert any(t.startswith("commit:") for t in r["tags"]) and r["config"], r["name"]
    # the runner logged the rendered report into the family's group
    (report,) = [r for r in runs if r["job_type"] == "report"]
    assert report["name"] == f"{SMOKE_FAMILY}-report-html" and report["summary"]["report/_type"] == "html-file"
    assert [a["type"] for a in report["artifacts"]] == ["report"] and report["config"]["profile"] == "smoke"
    # train runs log their per-seed summary metrics
    assert all("val_ppl" in r["summary"] for r in train if r["summary"].get("status") == "ok")


def test_write_metrics_also_writes_the_headline_for_dvc(tmp_path):
    import json

    metrics = {"headline": {"ce/ece": 0.08, "focal/ece": 0.05}, "claims": [], "config": {"lr": 0.1}}
    path = tracking.write_metrics("calibration", metrics, reports_dir=tmp_path)
    assert json.loads(path.read_text()) == metrics
    assert json.loads((tmp_path / "headline.json").read_text()) == {"ce/ece": 0.08, "focal/ece": 0.05}
    tracking.write_metrics("x", {"acc": 1.0}, reports_dir=tmp_path / "no_headline")
    assert not (tmp_path / "no_headline" / "headline.json").exists()
