"""Every stage depends on the library code it runs.

For each stage of dvc.yaml, a fresh interpreter imports what the stage's command runs (the
pipeline script; for a notebook stage also its params section class and every import of the
notebook's code cells); the imports of those modules are then followed statically, function
bodies included, so a lazy import counts as well. Every ``trustlab`` module file reached
must lie under one of the stage's ``deps``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "lib"

_PROBE = r"""
import json, runpy, sys
sys.path.insert(0, {lib!r})
script, notebook = {script!r}, {notebook!r}
runpy.run_path(script, run_name="stage_deps_probe")
if notebook:
    import ast, jupytext
    from trustlab.stages import NOTEBOOKS, section_class
    section_class(NOTEBOOKS[notebook])
    nb = jupytext.read({notebook_path!r})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), "<notebook>", "exec"), {{}})
print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values())
                        if getattr(m, "__name__", "").startswith("trustlab") and getattr(m, "__file__", None))))
"""


def _module_file(name: str) -> Path | None:
    base = LIB / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """trustlab modules a file imports anywhere (function bodies included)."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(LIB).with_suffix("").parts)
    if path.name == "__init__.py":
        pkg = pkg.rsplit(".", 1)[0] + ".__init__"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("trustlab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: -node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("trustlab"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def reached_files(script: str, notebook: str | None) -> set[Path]:
    probe = _PROBE.format(lib=str(LIB), script=str(ROOT / script), notebook=notebook,
                          notebook_path=str(ROOT / "notebooks" / f"{notebook}.py"))  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    todo = [Path(f).resolve() for f in json.loads(proc.stdout.strip().splitlines()[-1])]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen or not f.is_relative_to(LIB):
            continue
        seen.add(f)
        for mod in _imports(f):
            parts = mod.split(".")
            for i in range(2, len(parts) + 1):  # the package __init__ files along the way run too
                mf = _module_file(".".join(parts[:i]))
                if mf is not None:
                    todo.append(mf.resolve())
    return seen


def undeclared(stage: dict, files: set[Path]) -> list[str]:
    deps = [(ROOT / d).resolve() for d in stage.get("deps", [])]
    top_init = (LIB / "trustlab" / "__init__.py").resolve()
    return sorted(str(f.relative_to(ROOT)) for f in files
                  if f != top_init and not any(f == d or f.is_relative_to(d) for d in deps))  # fmt: skip


def _stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    return yaml.safe_load(dvc_yaml.read_text())["stages"]


def _entry(cmd: str) -> tuple[str, str | None]:
    words = cmd.split()
    script = words[1]
    notebook = words[2] if script.endswith("run_notebook.py") else None
    return script, notebook


_CACHE: dict[str, set[Path]] = {}


def _files(name: str, stage: dict) -> set[Path]:
    if name not in _CACHE:
        _CACHE[name] = reached_files(*_entry(stage["cmd"]))
    return _CACHE[name]


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(_stages()))
def test_stage_depends_on_every_library_file_it_runs(name):
    stage = _stages()[name]
    missing = undeclared(stage, _files(name, stage))
    assert not missing, f"stage {name} runs {missing} but dvc.yaml lists none of them (or a folder above) in its deps"


@pytest.mark.e2e
def test_the_check_fails_when_a_dependency_is_dropped():
    name = "noisefit"
    stage = dict(_stages()[name])
    stage["deps"] = [d for d in stage["deps"] if d != "lib/trustlab/reporting"]
    missing = undeclared(stage, _files(name, _stages()[name]))
    assert any(m.startswith("lib/trustlab/reporting/") for m in missing)
