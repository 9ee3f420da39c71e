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
    generated data in ``generated/`` and the pretrained base model in ``models/base``."""
    data = tmp_path_factory.mktemp("smoke") / "data"
    _run(["pipelines/generate_data.py", "--profile", "smoke", "--out", str(data / "generated")])
    _run(["pipelines/pretrain_base.py", "--profile", "smoke", "--data-dir", str(data), "--out", str(data / "models" / "base"),
          "--reports-dir", str(data.parent / "reports" / "base_model")])
    return data


@pytest.fixture(scope="session")
def executed_report(smoke_data_dir, tmp_path_factory):
    """``executed_report(name) -> (reports_dir, process)``: the runner executes notebook
    ``name`` under the smoke profile on ``smoke_data_dir``, once per session; the end-to-end
    and browser tests share the result."""
    import subprocess

    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def run(name: str):
        if name not in done:
            reports = tmp_path_factory.mktemp(f"report_{name}") / name
            proc = subprocess.run(
                [sys.executable, str(ROOT / "pipelines" / "run_notebook.py"), name, "--profile", "smoke",
                 "--reports-dir", str(reports), "--data-dir", str(smoke_data_dir), "--timeout", "600"],
                capture_output=True, text=True, cwd=ROOT, timeout=900,
            )  # fmt: skip
            done[name] = (reports, proc)
        return done[name]

    return run


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n 2 --dist loadgroup`` (``make test``), the tests that share an expensive
    session-cached execution run in one worker, so that it happens once rather than once per
    worker: every test of notebook ``name``'s smoke report, and every user of ``smoke_reports``."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "executed_report" in fixtures and "name" in params:
            item.add_marker(pytest.mark.xdist_group(f"notebook-{params['name']}"))
        elif "pages" in fixtures or item.module.__name__.endswith("test_offline"):
            item.add_marker(pytest.mark.xdist_group("smoke-reports"))
