"""DVC experiments: a two-point sweep queued with `dvc exp run --queue -S` and run in parallel
with `dvc queue start -j 2` shows up in `dvc exp show` with distinct metrics.

It runs on a throw-away git copy of the repository (tracked files only) under the smoke
profile, and sweeps the data seed through the `data` and `data_report` stages, which are the
cheapest stages with metrics.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from e2e_helpers import sh as _sh

pytestmark = pytest.mark.e2e


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
