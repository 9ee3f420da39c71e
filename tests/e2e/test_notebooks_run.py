"""End to end: the runner executes every notebook under the smoke profile and renders HTML."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from trustlab.reporting.html import remote_references
from trustlab.stages import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _headings(py: Path) -> list[str]:
    nb = jupytext.read(py)
    return [m.group(1).strip() for c in nb.cells if c.cell_type == "markdown" for m in re.finditer(r"^#{1,2} (.+)$", c.source, re.M)]


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs_under_smoke_and_renders(name, executed_report):
    reports, proc = executed_report(name)
    assert proc.returncode == 0, proc.stderr[-4000:]
    html = (reports / "index.html").read_text()
    for heading in _headings(ROOT / "notebooks" / f"{name}.py"):
        assert heading.split("`")[0][:30] in html, f"heading {heading!r} missing from the report"
    assert re.search(r'<img[^>]+src="data:image/png;base64,', html), "no embedded figure in the report"
    assert not remote_references(html), "the report loads remote assets"
    assert "Traceback" not in html
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["run"]["profile"] == "smoke"
    assert (reports / f"{name}.ipynb").exists()


def test_cell_error_fails_stage_and_is_visible(smoke_data_dir, tmp_path, monkeypatch):
    """A failing cell gives a non-zero exit and the executed notebook shows the error."""
    params = tmp_path / "params.yaml"
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.write_text(yaml.safe_dump(p))
    # an invalid value injected into the notebook: the runner validates first and exits 2
    p["data"]["seed"] = -1
    params.write_text(yaml.safe_dump(p))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "run_notebook.py"), "00_data", "--params-file", str(params),
         "--reports-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "nodata")],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 2 and "data.seed = -1" in proc.stderr
    assert not (tmp_path / "r" / "index.html").exists()
    # a cell that raises (missing data dir): exit 1, error visible in the executed notebook
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "run_notebook.py"), "00_data", "--profile", "smoke",
         "--reports-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "nodata")],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    executed = (tmp_path / "r" / "00_data.ipynb").read_text()
    assert "FileNotFoundError" in executed or "does not exist" in executed
    assert not (tmp_path / "r" / "index.html").exists()
