"""Notebooks are Jupytext pairs, stored without outputs, with a papermill parameters cell."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from trustlab.sections import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
PAIRS = sorted((ROOT / "notebooks").glob("*.py"))


def test_every_registered_notebook_exists():
    present = {p.stem for p in PAIRS}
    missing = sorted(set(NOTEBOOKS) - present)
    assert not missing, f"notebooks registered in trustlab.sections but missing: {missing}"


@pytest.mark.parametrize("py", PAIRS, ids=lambda p: p.stem)
def test_pair_in_sync_and_clean(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {py.relative_to(ROOT)}`"
    stored = nbformat.read(ipynb, as_version=4)
    for cell in stored.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{ipynb.name} carries outputs; clear them (executed copies belong in reports/)"
            assert cell.execution_count is None
    from_py = jupytext.read(py)
    src = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert src(stored) == src(from_py), f"{py.name} and {ipynb.name} differ: run `jupytext --sync {py.relative_to(ROOT)}`"
    tagged = [c for c in from_py.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged `parameters` for papermill"
    for name in ("profile", "params", "reports_dir", "data_dir"):
        assert f"{name} =" in tagged[0].source
