"""Where a result came from: git commit, dirty flag, package versions, machine."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess

from trustlab.core.paths import repo_root

TRACKED_PACKAGES = ("torch", "lightning", "wandb", "dvc", "papermill", "torchmetrics", "scikit-learn", "numpy")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The HEAD commit hash, or ``"unknown"`` outside a git checkout."""
    return _git("rev-parse", "HEAD") or "unknown"


# What the pipeline itself rewrites while it runs: a repro from a clean commit is still clean.
PIPELINE_WRITTEN = ("dvc.lock", "reports")


def git_dirty() -> bool | None:
    """Whether tracked files other than the pipeline's own outputs (``PIPELINE_WRITTEN``) differ
    from HEAD (``None`` when git is unavailable)."""
    excludes = [f":(exclude){p}" for p in PIPELINE_WRITTEN]
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    return None if out is None else bool(out)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict[str, object]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()}


def provenance() -> dict[str, object]:
    return {"git_commit": git_commit(), "git_dirty": git_dirty(), "versions": package_versions(), "machine": machine()}
