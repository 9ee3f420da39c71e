"""The offline HTML template for ``dvc plots show/diff``: vendored vega, vega-lite and vega-embed,
configured in ``.dvc/config``, and pages rendered with it reference no remote script."""

from __future__ import annotations

import configparser
import hashlib
import json
import re
import subprocess
from pathlib import Path

from _reports_fixtures import TEMPLATE, dvc, dvc_plots_page
from trustlab.reporting.html import remote_references

ROOT = Path(__file__).resolve().parents[2]
PLOTS_DIR = ROOT / ".dvc" / "plots"
VENDORED = re.compile(r'<script data-vendored="([^"@]+)@([^"]+)">\n(/\*!.*?\*/)\n(.*?)\n</script>', re.S)


def test_dvc_config_points_at_the_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    # DVC resolves a relative plots.html_template against the .dvc/ directory
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == TEMPLATE.resolve()


def test_template_has_dvc_placeholders_but_no_cdn_scripts():
    html = TEMPLATE.read_text(encoding="utf-8")
    assert html.count("{plot_divs}") == 1
    # no {scripts}: that is where DVC would insert its CDN <script src> tags
    assert "{scripts}" not in html
    assert remote_references(html) == [] and "<script src" not in html


def test_vendored_libraries_match_their_record_and_licences():
    html = TEMPLATE.read_text(encoding="utf-8")
    vendor = json.loads((PLOTS_DIR / "VENDOR.json").read_text())
    blocks = VENDORED.findall(html)
    assert [(name, ver) for name, ver, _, _ in blocks] == [(n, v["version"]) for n, v in vendor.items()]
    assert [n for n, *_ in blocks] == ["vega", "vega-lite", "vega-embed"]  # load order: embed needs both
    licences = (PLOTS_DIR / "THIRD_PARTY_LICENSES.txt").read_text(encoding="utf-8")
    for name, ver, header, code in blocks:
        info = vendor[name]
        assert hashlib.sha256(code.encode("utf-8")).hexdigest() == info["inlined_sha256"], f"{name} was modified"
        assert info["license"] == "BSD-3-Clause" and "BSD-3-Clause" in header and info["file_sha256"] in header
        assert f"{name} {ver} (BSD-3-Clause)" in licences
    assert "Redistribution and use in source and binary forms" in licences


def test_dvc_plots_show_renders_with_vendored_scripts_only(tmp_path):
    html = dvc_plots_page(tmp_path).read_text(encoding="utf-8")
    assert remote_references(html) == [], remote_references(html)
    assert "cdn.jsdelivr" not in html
    assert len(re.findall(r"vegaEmbed\('#", html)) == 2
    assert html.count("data-vendored=") == 3


def test_dvc_plots_diff_renders_offline(tmp_path):
    """``dvc plots diff`` between two git revisions uses the same template."""
    page = dvc_plots_page(tmp_path)
    repo = page.parent.parent
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "one"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True)
    dvc(repo, "config", "core.no_scm", "false")
    (repo / "plots" / "loss.csv").write_text("step,loss\n0,2.0\n1,1.2\n2,0.9\n3,0.8\n")
    dvc(repo, "plots", "diff", "HEAD", "-o", "diff")
    html = (repo / "diff" / "index.html").read_text(encoding="utf-8")
    assert remote_references(html) == [] and html.count("data-vendored=") == 3
    assert '"rev": "HEAD"' in html and '"rev": "workspace"' in html  # both revisions plotted


def test_the_project_config_selects_the_template(tmp_path):
    """``dvc plots show`` with no flag, in a copy of the project's DVC set-up (a copy: a DVC
    command in the live tree could contend for its lock with a running ``dvc repro``)."""
    import shutil

    repo = tmp_path / "project"
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "profiles", repo / "profiles")
    dvc(repo, "config", "core.no_scm", "true")
    dvc(repo, "plots", "show", "-o", str(tmp_path / "out"))
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert html.count("data-vendored=") == 3 and remote_references(html) == []
