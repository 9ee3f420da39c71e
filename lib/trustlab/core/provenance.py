"""Where a result came from: git commit, dirty flag, package versions, machine."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys

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


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def thread_settings() -> dict[str, object]:
    """torch's intra-op threads (only when torch is already imported: importing it here would
    cost seconds) and the BLAS/OpenMP thread variables (``None`` when unset)."""
    torch = sys.modules.get("torch")
    threads: dict[str, object] = {"torch": torch.get_num_threads() if torch is not None else None}
    threads.update({name: os.environ.get(name) for name in THREAD_VARIABLES})
    return threads


def machine() -> dict[str, object]:
    """What the numbers ran on: CPU model, core count (and how many this process may use), thread settings."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
            "threads": thread_settings(), "platform": platform.platform(), "processor": platform.machine()}  # fmt: skip


def provenance() -> dict[str, object]:
    return {"git_commit": git_commit(), "git_dirty": git_dirty(), "versions": package_versions(), "machine": machine()}
