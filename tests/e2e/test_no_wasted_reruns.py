"""No wasted reruns: a retrained base model with identical weights keeps its hash (so nothing
downstream reruns), and a parameter changed and changed back is restored from DVC's run cache."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from e2e_helpers import sh

pytestmark = pytest.mark.e2e


def _dvc(repo, env, *args, timeout=900):
    return sh([sys.executable, "-m", "dvc", *args], repo, env, timeout=timeout)


def _out_hash(repo, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def test_identical_retraining_keeps_the_hash_and_downstream_cached(repo_copy):
    repo, env = repo_copy
    _dvc(repo, env, "repro", "base_model_report")
    first = _out_hash(repo, "base_model", "data/models/base")
    _dvc(repo, env, "repro", "-f", "-s", "base_model")
    assert _out_hash(repo, "base_model", "data/models/base") == first, "a retrained model changed its hash"
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "base_model_report"], cwd=repo, env=env,
                            capture_output=True, text=True).stdout  # fmt: skip
    assert "up to date" in status, status


def test_a_parameter_changed_and_back_is_restored_from_the_run_cache(repo_copy):
    repo, env = repo_copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    _dvc(repo, env, "repro", "data_report")
    metrics_before = (repo / "reports" / "00_data" / "metrics.json").read_text()
    changed = {**params, "data": {**params["data"], "seed": params["data"]["seed"] + 1}}
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    _dvc(repo, env, "repro", "data_report")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.perf_counter()
    out = _dvc(repo, env, "repro", "data_report")
    seconds = time.perf_counter() - t0
    assert "Restored stage 'data_report' from run-cache" in out or "is cached" in out, out
    assert (repo / "reports" / "00_data" / "metrics.json").read_text() == metrics_before
    assert seconds < 60, f"restoring from the run cache took {seconds:.0f}s"
