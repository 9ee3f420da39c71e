"""DVC experiments: a two-point sweep queued with `dvc exp run --queue -S` and run in parallel
with `dvc queue start -j 2` shows up in `dvc exp show` with distinct metrics.

It runs on a throw-away git copy of the repository (tracked files only) under the smoke
profile, and sweeps the data seed through the `data` and `data_report` stages, which are the
cheapest stages with metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _sh(args: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def repo_copy(tmp_path) -> tuple[Path, dict]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    dst = tmp_path / "repo"
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    # the sweep's only stages: data -> data_report (notebook); the smoke profile keeps it small
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "smoke"
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(dst / "lib"),
        "TRUSTLAB_ROOT": "",  # each experiment workspace finds its own params.yaml
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("TRUSTLAB_ROOT")
    _sh(["git", "init", "-q", "-b", "main"], dst, env)
    _sh(["git", "add", "-A"], dst, env)
    _sh(["git", "commit", "-qm", "copy"], dst, env)
    return dst, env


def test_queued_sweep_runs_in_parallel_and_is_compared(repo_copy):
    repo, env = repo_copy
    dvc = [sys.executable, "-m", "dvc"]
    for seed in (1, 2):
        _sh([*dvc, "exp", "run", "--queue", "-S", f"data.seed={seed}", "-n", f"seed{seed}", "data_report"], repo, env)
    _sh([*dvc, "queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = _sh([*dvc, "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    else:
        pytest.fail(f"the queue did not finish:\n{status}")
    assert "Failed" not in status, status + _sh([*dvc, "queue", "logs", "seed1"], repo, env)
    shown = json.loads(_sh([*dvc, "exp", "show", "--json"], repo, env))
    exps = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                if rev.get("name") in ("seed1", "seed2"):
                    metrics = data["metrics"]["reports/00_data/headline.json"]["data"]
                    exps[rev["name"]] = (data["params"]["params.yaml"]["data"]["data"]["seed"], metrics)
    assert set(exps) == {"seed1", "seed2"}, shown
    assert exps["seed1"][0] == 1 and exps["seed2"][0] == 2
    assert exps["seed1"][1] != exps["seed2"][1], "two different data seeds gave identical metrics"
