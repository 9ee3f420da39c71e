"""The data package sits below the language model: it never imports ``trustlab.lm``."""

from __future__ import annotations

import ast
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "lib" / "trustlab" / "data"


def _imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function bodies included
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_data_never_imports_the_language_model():
    offenders = {
        f"{p.name}: {m}" for p in sorted(DATA.glob("*.py")) for m in _imported_modules(p)
        if m == "trustlab.lm" or m.startswith("trustlab.lm.")
    }  # fmt: skip
    assert not offenders, sorted(offenders)
