"""Where things live. Every path is resolved from the repository root, so a notebook
behaves the same when papermill runs it from the root and when JupyterLab runs it from
``notebooks/``."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "TRUSTLAB_ROOT"


def repo_root() -> Path:
    """The directory holding ``params.yaml``: ``$TRUSTLAB_ROOT``, else the first parent of
    the working directory (then of this file) that has one."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve()):
        for d in (start, *start.parents):
            if (d / "params.yaml").exists() and (d / "lib" / "trustlab").is_dir():
                return d
    return Path(__file__).resolve().parents[3]


def data_dir() -> Path:
    return repo_root() / "data"


def reports_dir(stage: str | None = None) -> Path:
    base = repo_root() / "reports"
    return base / stage if stage else base


def models_dir() -> Path:
    return data_dir() / "models"


def portable(path: str | os.PathLike) -> str:
    """``path`` as recorded in a results file: relative to the repository root when it lies
    inside it (so results do not depend on where the repository was cloned), else as given."""
    p = Path(path).resolve()
    root = repo_root().resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)
