"""Notebooks are Jupytext pairs, stored without outputs, with a papermill parameters cell."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from trustlab.stages import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[2]
PAIRS = sorted((ROOT / "notebooks").glob("*.py"))


def test_every_registered_notebook_exists():
    present = {p.stem for p in PAIRS}
    missing = sorted(set(NOTEBOOKS) - present)
    assert not missing, f"notebooks registered in trustlab.stages but missing: {missing}"


def test_every_ipynb_has_a_py_twin():
    """An .ipynb without its .py twin would escape the output check below (and DVC, which
    depends on the .py)."""
    lone = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb") if not p.with_suffix(".py").exists())
    assert not lone, f"notebooks without a .py twin: {lone} (run `jupytext --set-formats ipynb,py:percent`)"


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
    # papermill must parse every parameter, or it warns "Passed unknown parameter" on each run
    from papermill.translators import PythonTranslator

    parsed = [p.name for p in PythonTranslator.inspect(tagged[0])]
    assert parsed == ["profile", "params", "reports_dir", "data_dir"], parsed
