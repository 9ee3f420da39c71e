"""The optional W&B Report: its blocks are built offline and never saved here."""

from __future__ import annotations

import json

import pytest

from _reports_fixtures import claim, make_stage
from trustlab.core.claims import RULE
from trustlab.reporting import frontpage
from trustlab.stages import STAGES
from trustlab.tracking import wandb_report


@pytest.fixture
def gathered(tmp_path):
    reports = tmp_path / "reports"
    make_stage(
        reports,
        "calibration",
        figures=("reliability_ce", "ece_vs_severity"),
        headline={"ce/ece": 0.08},
        claims=[claim("calibration", "supported", claim="focal | lowers ECE")],
    )
    make_stage(reports, "noisefit", claims=[claim("noisefit", "inconclusive", metric="halluc_rate")])
    stages = frontpage.collect_stages(reports)
    claims = frontpage.gather_claims(stages, reports)
    return reports, stages, claims


def test_spec_blocks(gathered):
    _, stages, claims = gathered
    spec = wandb_report.report_spec(claims, stages)
    kinds = [b["kind"] for b in spec["blocks"]]
    assert kinds[:4] == ["h1", "p", "markdown", "panel_grid"]
    table = spec["blocks"][2]["text"]
    assert "focal \\| lowers ECE" in table and "**supported**" in table and "**inconclusive**" in table
    assert "| calibration | focal \\| lowers ECE | Mukhoti et al. 2020 | ece | seeds | 3 | \u22120.012 [\u22120.017, \u22120.00703] | paired t-test | 0.00913 |" in table
    intro = spec["blocks"][1]["text"]
    assert intro.startswith("2 claims: 1 supported, 0 not supported, 1 inconclusive, 0 not evaluated") and RULE in intro
    front = spec["blocks"][3]
    assert front["runset"]["filters"] == "Group = 'report' and JobType = 'report'"
    headings = [b["text"] for b in spec["blocks"] if b["kind"] == "h1"]
    assert headings == ["Claims", *[s.title for s in STAGES if s.kind == "family"]]
    grids = {b["runset"]["name"]: b for b in spec["blocks"] if b["kind"] == "panel_grid"}
    cal = grids["calibration"]
    assert cal["runset"]["filters"] == "Group = 'calibration' and JobType = 'summary'"
    assert cal["panels"][0] == {"kind": "summary_table", "table": "claims"}
    assert cal["panels"][1]["keys"] == ["figures/ece_vs_severity", "figures/reliability_ce"]
    assert "entropy_attention" not in grids and "error_detection" not in grids
    assert {"kind": "p", "text": "error_detection: not run."} in spec["blocks"]
    assert any(b["kind"] == "markdown" and "`ce/ece` | 0.08" in b["text"] for b in spec["blocks"])
    json.dumps(spec)  # plain data


def test_runset_filter_parses_in_wandb_workspaces():
    expr = pytest.importorskip("wandb_workspaces.expr")
    parsed = expr.expr_to_filters(wandb_report.runset_filter("calibration", "summary"))
    leaves = {(f.key.name, f.value) for f in parsed.filters}
    assert leaves == {("group", "calibration"), ("jobType", "summary")}


def test_wandb_objects_are_built_without_the_network(gathered, monkeypatch):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from wandb_workspaces.reports.v2 import interface

    def no_api(*a, **k):
        raise AssertionError("the W&B API was called while building the report")

    monkeypatch.setattr(interface, "_get_api", no_api)
    _, stages, claims = gathered
    spec = wandb_report.report_spec(claims, stages)
    report = wandb_report.to_wandb_report(spec, entity="someone")
    assert isinstance(report, wr.Report) and report.entity == "someone" and report.project == "trustlab"
    assert report.title == wandb_report.TITLE
    types = [type(b).__name__ for b in report.blocks]
    assert types == [
        {"h1": "H1", "p": "P", "markdown": "MarkdownBlock", "panel_grid": "PanelGrid"}[b["kind"]]
        for b in spec["blocks"]
    ]
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    cal = next(g for g in grids if g.runsets[0].name == "calibration")
    assert (
        cal.runsets[0].entity == "someone" and cal.runsets[0].filters == "Group = 'calibration' and JobType = 'summary'"
    )
    assert isinstance(cal.panels[0], wr.WeavePanelSummaryTable) and cal.panels[0].table_name == "claims"
    assert isinstance(cal.panels[1], wr.MediaBrowser) and cal.panels[1].media_keys == [
        "figures/ece_vs_severity",
        "figures/reliability_ce",
    ]
    # text blocks convert to W&B's internal model offline
    assert report.blocks[2]._to_model().content == spec["blocks"][2]["text"]


def test_unknown_block_kind_is_rejected():
    pytest.importorskip("wandb_workspaces.reports.v2")
    with pytest.raises(ValueError, match="block kind 'chart' is not allowed"):
        wandb_report.to_wandb_report(
            {"project": "p", "title": "t", "description": "", "blocks": [{"kind": "chart"}]}, "e"
        )


def test_command_saves_nothing_unless_online(gathered, capsys, monkeypatch):
    reports, _, _ = gathered
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "offline")
    assert wandb_report.main(["--reports-dir", str(reports)]) == 0
    assert "nothing saved" in capsys.readouterr().out
    assert wandb_report.main(["--reports-dir", str(reports), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == wandb_report.TITLE
