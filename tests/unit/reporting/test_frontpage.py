"""The results front page: gathering claims, loud failures, provenance, missing stages, and the CLI."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markupsafe import escape

from _reports_fixtures import claim, make_stage
from trustlab.core.claims import COLUMNS, RULE
from trustlab.reporting import frontpage
from trustlab.reporting.html import remote_references

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "pipelines"))

import render_front_page  # noqa: E402


def _params(profile: str = "smoke") -> dict:
    from trustlab.core.config import load_params

    return load_params(profile=profile)


def _page(tmp_path, wandb=None, **kw) -> frontpage.FrontPage:
    return frontpage.build_front_page(
        tmp_path / "reports",
        _params(),
        lock_path=kw.get("lock", tmp_path / "no.lock"),
        data_dir=kw.get("data", tmp_path / "nodata"),
        wandb=wandb or frontpage.WandbInfo(mode="disabled"),
    )


@pytest.fixture
def reports(tmp_path):
    """Two families run (calibration with every verdict kind, entropy_attention with a named
    headline figure), the data report run, the rest missing."""
    r = tmp_path / "reports"
    make_stage(
        r,
        "calibration",
        figures=("reliability_ce", "ece_vs_severity"),
        claims=[
            claim("calibration", "supported", claim="focal loss lowers ECE", paper_effect=-0.02),
            claim("calibration", "not supported", metric="nll", claim="label smoothing lowers NLL"),
            claim("calibration", "not evaluated", metric="brier", note="one seed"),
        ],
        wall_time_s=61.0,
    )
    make_stage(
        r,
        "entropy_attention",
        figures=("a_first", "perplexity"),
        headline_figure="figures/perplexity.png",
        claims=[
            claim(
                "entropy_attention",
                "inconclusive",
                metric="early_overloaded",
                expected="increase",
                paper="Jha & Reagen 2025",
                unit="items",
            )
        ],
        wall_time_s=130.0,
    )
    make_stage(r, "00_data", figures=(), wall_time_s=3.0)
    return r


def test_missing_stages_are_listed_as_not_run(reports, tmp_path):
    page = _page(tmp_path)
    status = {s.name: s.status for s in page.stages}
    assert status == {
        "00_data": "ok",
        "01_base_model": "not run",
        "calibration": "ok",
        "noisefit": "not run",
        "entropy_attention": "ok",
        "error_detection": "not run",
    }
    html = page.html_path.read_text()
    reports_table = html[html.index('id="reports-table"') : html.index("</table>", html.index('id="reports-table"'))]
    assert reports_table.count("not run") == 3
    # the link is there for a stage with a report and absent for one without
    assert 'href="calibration/index.html"' in html and 'href="noisefit/index.html"' not in html
    assert '<div class="not-run">not run</div>' in html  # noisefit's and error_detection's figure slots


def test_nothing_run_at_all_renders(tmp_path):
    (tmp_path / "reports").mkdir()
    page = _page(tmp_path)
    assert page.claims == [] and all(s.status == "not run" for s in page.stages)
    assert "no claims: no family has been run yet" in page.html_path.read_text()
    assert json.loads(page.claims_json.read_text()) == []
    assert page.claims_csv.read_text().strip() == ",".join(COLUMNS)


def test_claims_gathered_in_page_order_and_written_as_json_and_csv(reports, tmp_path):
    page = _page(tmp_path)
    assert [(r["family"], r["verdict"]) for r in page.claims] == [
        ("calibration", "supported"),
        ("calibration", "not supported"),
        ("calibration", "not evaluated"),
        ("entropy_attention", "inconclusive"),
    ]
    rows = json.loads(page.claims_json.read_text())
    assert rows == page.claims and all(list(r) == list(COLUMNS) for r in rows)
    assert rows[2]["effect"] is None and rows[2]["ci_low"] is None  # NaN -> null, never "NaN" in JSON
    assert rows[0]["id"] == "calibration/ece-supported" and rows[3]["unit"] == "items"
    with page.claims_csv.open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["claim"] for r in csv_rows] == [r["claim"] for r in rows]
    assert float(csv_rows[0]["effect"]) == pytest.approx(-0.012) and csv_rows[0]["n"] == "3"
    assert json.loads(csv_rows[0]["range"]) == [0.0, 1.0] and csv_rows[0]["test"] == "paired t-test"


def test_claims_table_cells_verdict_colours_and_sort_keys(reports, tmp_path):
    html = _page(tmp_path).html_path.read_text()
    table = html[html.index('<table id="claims-table" class="sortable">') :]
    table = table[: table.index("</table>")]
    headers = re.findall(r"<th data-type=\"\w+\">(.*?)</th>", table)
    assert headers == ["Family", "Claim", "Source paper", "Metric", "Unit", "n", "Effect [95% CI]", "Test", "p",
                       "MDE", "Paper effect", "Power", "Verdict", "Base-model seed"]  # fmt: skip
    rows = re.findall(r"<tr data-family=(.*?)</tr>", table, re.S)
    assert len(rows) == 4
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    first = cells[0]
    assert "focal loss lowers ECE" in first[1] and first[2] == "Mukhoti et al. 2020" and "<code>ece</code>" in first[3]
    assert first[4] == "seeds" and first[5] == "3" and first[7] == "paired t-test"
    assert first[6] == "\u22120.012 [\u22120.017, \u22120.00703]"  # effect [95% CI], true minus signs
    assert re.match(r"0\.0\d+$", first[8]) and re.match(r"0\.0\d+$", first[9])  # p and MDE
    assert first[10].startswith("\u22120.02") and "Table 1" in first[10] and first[11] == "powered"
    assert '"calibration" data-verdict="supported" data-id="calibration/ece-supported"' in rows[0]
    assert re.search(r'data-sort="-0\.01\d+"', rows[0]) and 'data-sort="3"' in rows[0]
    assert 'class="verdict v-supported" data-sort="0"' in rows[0]
    assert 'class="verdict v-not" data-sort="1"' in rows[1]
    assert 'class="verdict v-none" data-sort="3"' in rows[2] and "n/a [no CI]" in rows[2]
    assert "the variant was not run" in rows[2] and cells[2][7] == "none"
    assert cells[3][4] == "items" and cells[3][7] == "paired bootstrap over items" and cells[3][5] == "400"
    assert 'class="verdict v-inconclusive" data-sort="2"' in rows[3]
    # the rule in one sentence, the verdict counts, the filters
    assert str(escape(RULE)) in html
    assert "4 claims from 2 of 4 families: 1 supported, 1 not supported, 1 inconclusive, 1 not evaluated" in html
    assert '<select id="filter-family" data-filter="family" data-table="claims-table">' in html
    assert '<option value="entropy_attention">' in html and '<option value="not evaluated">' in html
    # sortable and filterable by an inline script, no library
    assert "table.sortable" in html and "select[data-filter]" in html and "<script src" not in html


def test_reports_table_counts_verdicts_by_claim(reports, tmp_path):
    html = _page(tmp_path).html_path.read_text()
    table = html[html.index('id="reports-table"') : html.index("</table>", html.index('id="reports-table"'))]
    assert "1 of 3 supported" in table and "0 of 1 supported" in table


def test_headline_figure_choice_and_embedding(reports, tmp_path):
    page = _page(tmp_path)
    figs = {s.name: s.figure for s in page.stages}
    assert figs["calibration"].name == "reliability_ce.png"  # preferred name over alphabetical order
    assert figs["entropy_attention"].name == "perplexity.png"  # named in metrics.json
    html = page.html_path.read_text()
    embedded = re.search(r'<figure id="figure-calibration"><img src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(embedded) == (reports / "calibration" / "figures" / "reliability_ce.png").read_bytes()
    assert frontpage.pick_figure(reports / "calibration", "unknown_family", {}).name == "ece_vs_severity.png"


def test_page_loads_nothing_remote(reports, tmp_path):
    html = _page(
        tmp_path, wandb=frontpage.WandbInfo(mode="online", project_url="https://wandb.ai/me/trustlab")
    ).html_path.read_text()
    assert remote_references(html) == []
    assert '<a href="https://wandb.ai/me/trustlab">' in html  # a link to click is fine


def test_malformed_metrics_fail_naming_the_file(reports, tmp_path):
    (reports / "noisefit").mkdir()
    (reports / "noisefit" / "metrics.json").write_text("{not json")
    with pytest.raises(frontpage.FrontPageError, match=r"noisefit/metrics.json is not valid JSON"):
        _page(tmp_path)
    (reports / "noisefit" / "metrics.json").write_text("[1, 2]")
    with pytest.raises(frontpage.FrontPageError, match=r"noisefit/metrics.json must hold a JSON object"):
        _page(tmp_path)
    (reports / "noisefit" / "metrics.json").write_text(json.dumps({"claims": {"a": 1}}))
    with pytest.raises(frontpage.FrontPageError, match=r"'claims' must be a list"):
        _page(tmp_path)
    assert not (reports / "index.html").exists() and not (reports / "claims.json").exists()


def test_a_stage_with_outputs_but_no_metrics_fails(reports, tmp_path):
    (reports / "error_detection" / "figures").mkdir(parents=True)
    (reports / "error_detection" / "index.html").write_text("<html></html>")
    with pytest.raises(frontpage.FrontPageError, match=r"error_detection/metrics.json is missing"):
        _page(tmp_path)


def test_rows_that_fail_the_audit_fail_naming_row_and_problem(reports, tmp_path):
    good = claim("error_detection", "supported", metric="auroc", expected="increase")
    contradicting = {**good, "id": "error_detection/x", "verdict": "inconclusive"}
    old_format = {"family": "error_detection", "claim": "old row", "verdict": "supported"}
    make_stage(reports, "error_detection", claims=[good, contradicting, old_format, "junk"])
    with pytest.raises(frontpage.FrontPageError) as err:
        _page(tmp_path)
    text = str(err.value)
    assert "error_detection/metrics.json: claims[1] error_detection/x: verdict 'inconclusive' but the rule gives" in text
    assert "claims[2]" in text and "missing columns id" in text
    assert "claims[3] is not a claim row but str" in text
    assert "claims[0]" not in text


def test_duplicate_claim_ids_fail(reports, tmp_path):
    row = claim("error_detection", "supported", metric="auroc", expected="increase")
    make_stage(reports, "error_detection", claims=[row, row])
    with pytest.raises(frontpage.FrontPageError, match="error_detection/auroc-supported: duplicate id"):
        _page(tmp_path)


def test_cli_fails_loudly_on_a_bad_stage(reports, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "disabled")
    (reports / "noisefit").mkdir()
    (reports / "noisefit" / "metrics.json").write_text("{not json")
    rc = render_front_page.main(["--reports-dir", str(reports), "--data-dir", str(tmp_path / "nodata"),
                                 "--profile", "smoke"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "the front page was not written" in err and "noisefit/metrics.json" in err
    assert not (reports / "index.html").exists()


def test_profile_mismatch_is_flagged(reports, tmp_path):
    make_stage(reports, "noisefit", profile="cpu")
    html = _page(tmp_path).html_path.read_text()
    assert "noisefit was run with profile &#39;cpu&#39;, this page with &#39;smoke&#39;" in html


def test_provenance_lock_params_manifests_versions_and_wall_times(reports, tmp_path):
    make_stage(reports, "01_base_model", figures=(), wall_time_s=9.0, headline={"stage_seconds": 219.0})
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  data:\n    cmd: python gen.py\n    deps:\n    - path: gen.py\n      md5: aaa\n"
        "    outs:\n    - path: data/generated\n      hash: md5\n      md5: 0123abcd.dir\n"
        "  calibration:\n    cmd: python run.py\n    outs:\n"
        "    - path: reports/calibration/metrics.json\n      md5: beef\n"
    )
    data = tmp_path / "data"
    from trustlab.core.io import write_manifest

    (data / "generated" / "world").mkdir(parents=True)
    (data / "generated" / "world" / "people.json").write_text("[]")
    world = write_manifest(data / "generated" / "world", {"seed": 0}, {"people": 0}, generator="world")
    page = _page(tmp_path, lock=lock, data=data)
    html = page.html_path.read_text()
    lock_rows = frontpage.dvc_lock_stages(lock)
    assert [s["stage"] for s in lock_rows] == ["data", "calibration"]
    assert lock_rows[0]["outs"] == [{"path": "data/generated", "md5": "0123abcd.dir"}] and lock_rows[0]["n_deps"] == 1
    assert lock_rows[0]["digest"] in html and "0123abcd.dir" in html
    assert world["fingerprint"] in html and "generated/world" in html
    for pkg in ("python", "torch", "lightning", "wandb", "dvc", "papermill"):
        assert f"<td>{pkg}</td>" in html
    assert "CPU count" in html and "git commit" in html and "working tree" in html and "CPU model" in html
    code = html[html.index('id="code-table"') : html.index("</table>", html.index('id="code-table"'))]
    assert code.index("working tree") < code.index("machine") < code.index("threads")
    assert "OMP_NUM_THREADS = " in code and "MKL_NUM_THREADS = " in code and "torch = " in code
    assert frontpage.params_digests(_params())["all"] in html
    wall = html[html.index('id="wall-times-table"') :]
    wall = wall[: wall.index("</table>")]
    assert "61.0 s" in wall and "2.2 min" in wall and "3.0 s" in wall and "9.0 s" in wall
    assert "base_model (pretraining)" in wall and "3.6 min" in wall  # the pretraining, from its report
    assert "7.0 min" in wall  # total 61 + 130 + 3 + 9 + 219 = 422 s


def test_wall_time_from_timing_json_wins(reports, tmp_path):
    (reports / "calibration" / "timing.json").write_text(json.dumps({"runner_wall_s": 300.0, "stage_seconds": 250.0}))
    (reports / "01_base_model").mkdir()
    (reports / "01_base_model" / "metrics.json").write_text(json.dumps({"run": {"profile": "smoke"}}))
    (reports / "base_model").mkdir()  # the pretraining stage's timing, not a report
    (reports / "base_model" / "timing.json").write_text(json.dumps({"stage_seconds": 60.0, "train_seconds": 50.0}))
    html = _page(tmp_path).html_path.read_text()
    wall = html[html.index('id="wall-times-table"') : html.index("</table>", html.index('id="wall-times-table"'))]
    assert "5.0 min" in wall and "61.0 s" not in wall and "base_model (pretraining)" in wall and "60.0 s" in wall


def test_machine_provenance_records_cpu_and_threads(monkeypatch):
    from trustlab.core import provenance

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    m = provenance.machine()
    assert m["cpu_count"] >= 1 and isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert m["threads"]["OMP_NUM_THREADS"] == "3" and m["threads"]["MKL_NUM_THREADS"] is None
    text = frontpage.threads_text(m)
    assert "OMP_NUM_THREADS = 3" in text and "MKL_NUM_THREADS = unset" in text


def test_lock_digest_and_params_digest_track_changes(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("stages:\n  a:\n    cmd: x\n    outs:\n    - path: o\n      md5: '1'\n")
    before = frontpage.dvc_lock_stages(lock)[0]["digest"]
    lock.write_text("stages:\n  a:\n    cmd: x\n    outs:\n    - path: o\n      md5: '2'\n")
    assert frontpage.dvc_lock_stages(lock)[0]["digest"] != before
    p = _params()
    q = json.loads(json.dumps(p))
    q["calibration"]["seeds"] = [123]
    dp, dq = frontpage.params_digests(p), frontpage.params_digests(q)
    assert dp["all"] != dq["all"] and dp["calibration"] != dq["calibration"] and dp["data"] == dq["data"]


@pytest.mark.parametrize(
    "info, expected, absent",
    [
        (
            frontpage.WandbInfo("online", project_url="https://wandb.ai/team/trustlab"),
            '<a href="https://wandb.ai/team/trustlab">',
            "wandb sync",
        ),
        (
            frontpage.WandbInfo("offline", offline_runs=7),
            '<pre id="wandb-sync">wandb sync --yes</pre>',
            '<a href="https://wandb',
        ),
        (frontpage.WandbInfo("offline", entity="team"), 'into <a href="https://wandb.ai/team/trustlab">', "online"),
        (frontpage.WandbInfo("disabled"), "<strong>disabled</strong>", "wandb sync"),
    ],
)
def test_wandb_section(info, expected, absent):
    html = frontpage.render_wandb_section(info)
    assert expected in html and absent not in html


def test_offline_run_count(tmp_path):
    for name in ("offline-run-1-a", "offline-run-2-b", "run-3-c"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    assert frontpage.count_offline_runs(tmp_path) == 2


def test_number_formatting():
    assert frontpage.fmt_number(None) == "n/a" and frontpage.fmt_number(0.0) == "0"
    assert frontpage.fmt_number(-0.012345) == "\u22120.0123" and frontpage.fmt_number(4.84e-05) == "4.84e\u221205"
    assert frontpage.fmt_effect({"effect": 0.5, "ci_low": 0.25, "ci_high": 0.75}) == "0.5 [0.25, 0.75]"
    assert frontpage.fmt_seconds(59.94) == "59.9 s" and frontpage.fmt_seconds(150) == "2.5 min"


def test_claims_text_table(reports, tmp_path):
    text = frontpage.claims_as_text(_page(tmp_path).claims)
    lines = text.splitlines()
    assert lines[0].split() == ["family", "claim", "unit", "n", "effect", "[95%", "CI]", "p", "verdict"]
    assert "-0.012 [-0.017, -0.00703]" in lines[1] and lines[1].endswith("supported")


def test_rendering_is_deterministic_for_claims_files(reports, tmp_path):
    first = _page(tmp_path)
    a, b = first.claims_json.read_bytes(), first.claims_csv.read_bytes()
    second = _page(tmp_path)
    assert second.claims_json.read_bytes() == a and second.claims_csv.read_bytes() == b


def test_cli_renders_with_wandb_disabled(reports, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "disabled")
    rc = render_front_page.main(
        [
            "--reports-dir",
            str(reports),
            "--data-dir",
            str(tmp_path / "nodata"),
            "--profile",
            "smoke",
            "--dvc-lock",
            str(ROOT / "dvc.lock"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "4 claims; not run: 01_base_model, noisefit, error_detection" in out
    assert "focal loss lowers ECE" in out
    assert (
        (reports / "index.html").exists() and (reports / "claims.json").exists() and (reports / "claims.csv").exists()
    )


def test_cli_rejects_a_bad_profile(tmp_path, capsys):
    rc = render_front_page.main(["--reports-dir", str(tmp_path), "--profile", "nope"])
    assert rc == 2 and "profile = 'nope' is not allowed" in capsys.readouterr().err


def test_cli_rejects_a_bad_tracking_mode(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "sometimes")
    rc = render_front_page.main(["--reports-dir", str(tmp_path), "--profile", "smoke"])
    assert rc == 2 and "tracking mode = 'sometimes' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "index.html").exists()


def test_cli_as_a_subprocess_like_the_dvc_stage(reports, tmp_path):
    """The report stage's command, run from the repository root."""
    proc = subprocess.run(
        [
            sys.executable,
            "pipelines/render_front_page.py",
            "--reports-dir",
            str(reports),
            "--profile",
            "smoke",
            "--data-dir",
            str(tmp_path / "nodata"),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "TRUSTLAB_WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("front page: ") and "claims" in proc.stdout


def test_dirty_flag_ignores_what_the_pipeline_writes(tmp_path, monkeypatch):
    """A repro from a clean commit rewrites dvc.lock and reports/: the tree still counts as clean."""
    import subprocess

    from trustlab.core import provenance

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "reports").mkdir()
    for name in ("dvc.lock", "reports/metrics.json", "params.yaml"):
        (tmp_path / name).write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setenv("TRUSTLAB_ROOT", str(tmp_path))
    assert provenance.git_dirty() is False
    (tmp_path / "dvc.lock").write_text("b\n")
    (tmp_path / "reports" / "metrics.json").write_text("b\n")
    assert provenance.git_dirty() is False
    (tmp_path / "params.yaml").write_text("b\n")
    assert provenance.git_dirty() is True


def test_claims_are_marked_fragile_when_the_base_model_seed_flips_them(reports, tmp_path):
    """A stored replicate with the same design marks agreeing verdicts robust and flipped ones
    fragile; a replicate of another design is not compared; a broken record stops the page."""
    from trustlab.reporting import robustness

    first = _page(tmp_path)
    assert "No replicate with another base_model.seed" in first.html_path.read_text()
    flipped = [dict(c, verdict="inconclusive") if c["verdict"] == "supported" else c for c in first.claims]
    params = _params()
    params["base_model"] = dict(params["base_model"], seed=1)
    record = robustness.replicate_record(flipped, params, commit="abc1234")
    path = robustness.replicate_path(tmp_path / "reports", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    agreement = robustness.compare(first.claims, record, _params())
    assert agreement.comparable and agreement.compared == 3 and agreement.agreeing == 2
    assert agreement.status["calibration/ece-supported"] == "fragile"
    assert agreement.status["calibration/brier-not-evaluated"] == "not replicated"
    html = _page(tmp_path).html_path.read_text()
    assert "2 of 3 verdicts agree (67%)" in html and 'class="robust-fragile">fragile' in html
    other = robustness.compare(first.claims, record, dict(_params(), calibration={"epochs": 1}))
    assert not other.comparable and set(other.status.values()) == {"not replicated"}
    path.write_text("{}")
    with pytest.raises(frontpage.FrontPageError, match="not a replicate record"):
        _page(tmp_path)
