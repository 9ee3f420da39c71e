"""Test-wide settings: no network, W&B disabled unless a test asks, small thread pools."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "tests"))  # the shared _reports_fixtures helper
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # e2e_helpers

from _reports_fixtures import once_per_run  # noqa: E402

os.environ["TRUSTLAB_WANDB_MODE"] = "disabled"
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_ERROR_REPORTING"] = "false"
os.environ["WANDB_SILENT"] = "true"
os.environ["TRUSTLAB_PROGRESS"] = "0"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

try:  # two xdist workers on two cores: one torch thread each avoids oversubscription
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def wandb_tmp(tmp_path, monkeypatch):
    """Point W&B at a temporary directory and switch it to offline mode."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


def _run(args: list[str]) -> None:
    import subprocess

    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory) -> Path:
    """A data directory built like the pipeline builds data/, under the smoke profile:
    generated data in ``generated/`` and the pretrained base model in ``models/base``
    (built once per test run, shared by the xdist workers)."""

    def build(folder: Path) -> dict:
        data = folder / "data"
        _run(["pipelines/generate_data.py", "--profile", "smoke", "--out", str(data / "generated")])
        _run(["pipelines/pretrain_base.py", "--profile", "smoke", "--data-dir", str(data), "--out",
              str(data / "models" / "base"), "--reports-dir", str(folder / "reports" / "base_model")])  # fmt: skip
        return {}

    folder, _ = once_per_run(tmp_path_factory, "smoke_data", build)
    return folder / "data"


@pytest.fixture(scope="session")
def executed_report(smoke_data_dir, tmp_path_factory):
    """``executed_report(name) -> (reports_dir, process)``: the runner executes notebook
    ``name`` under the smoke profile on ``smoke_data_dir``, once per test run; the end-to-end
    and browser tests share the result, in whichever xdist worker they run."""
    import subprocess

    def run(name: str):
        def build(folder: Path) -> dict:
            cmd = [sys.executable, str(ROOT / "pipelines" / "run_notebook.py"), name, "--profile", "smoke",
                   "--reports-dir", str(folder / name), "--data-dir", str(smoke_data_dir), "--timeout", "600"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
            return {"args": cmd, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

        folder, rec = once_per_run(tmp_path_factory, f"report_{name}", build)
        return folder / name, subprocess.CompletedProcess(rec["args"], rec["returncode"], rec["stdout"], rec["stderr"])

    return run
