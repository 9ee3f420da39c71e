from __future__ import annotations

import json

import pandas as pd
import pytest

from trustlab.tracking import runs as tracking
from trustlab.tracking.offline import read_offline_run


def _offline_run_dirs(base):
    return sorted((base / "wandb").glob("offline-run-*"))


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("TRUSTLAB_WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.resolve_mode(None) == "offline"
    assert tracking.resolve_mode("online") == "online"
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "disabled")
    assert tracking.resolve_mode("online") == "disabled"
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="tracking mode = 'sometimes' is not allowed"):
        tracking.resolve_mode()


def test_mode_and_entity_come_from_params_yaml(monkeypatch, tmp_path):
    """Every stage honours ``tracking.mode`` in params.yaml without passing it; the environment wins."""
    monkeypatch.delenv("TRUSTLAB_WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("TRUSTLAB_PROFILE", raising=False)
    monkeypatch.setenv("TRUSTLAB_ROOT", str(tmp_path))
    (tmp_path / "params.yaml").write_text("profile: cpu\ntracking: {mode: online, entity: my-lab}\n")
    assert tracking.resolve_mode() == "online"
    assert tracking.tracking_params() == {"mode": "online", "entity": "my-lab", "init_timeout_s": 15.0}
    (tmp_path / "params.yaml").write_text("profile: cpu\ntracking: {mode: disabled}\n")
    assert tracking.resolve_mode() == "disabled"
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "offline")
    assert tracking.resolve_mode() == "offline"
    (tmp_path / "params.yaml").write_text("profile: cpu\ntracking: {mode: sometimes}\n")
    monkeypatch.delenv("TRUSTLAB_WANDB_MODE")
    with pytest.raises(Exception, match="tracking.mode = 'sometimes' is not allowed"):
        tracking.resolve_mode()


def test_offline_run_writes_run_dir_with_summary(wandb_tmp):
    with tracking.start_run("calibration", "train", "ce-seed0", config={"lr": 0.1}) as run:
        run.log({"loss": 1.0}, step=0)
        run.summary({"acc": 0.9, "ece": 0.05})
        run.log_table("main", pd.DataFrame({"loss": ["ce"], "acc": [0.9]}))
        assert run.live
    dirs = _offline_run_dirs(wandb_tmp)
    assert len(dirs) == 1
    rec = read_offline_run(dirs[0])
    assert rec["summary"]["acc"] == 0.9 and rec["summary"]["ece"] == 0.05
    assert rec["summary"]["main/_type"] == "table-file" and rec["summary"]["main/nrows"] == 1
    table = json.loads((dirs[0] / "files" / rec["summary"]["main/path"]).read_text())
    assert table["columns"] == ["loss", "acc"] and table["data"] == [["ce", 0.9]]
    assert rec["group"] == "calibration" and rec["job_type"] == "train" and rec["name"] == "ce-seed0"
    assert rec["config"]["lr"] == 0.1 and any(t.startswith("commit:") for t in rec["tags"])
    # hygiene: no code saved
    assert not list((dirs[0] / "files").glob("code/**/*.py"))


def test_wandb_failure_falls_back_to_local_files(wandb_tmp, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("simulated W&B outage")

    monkeypatch.setattr(tracking, "_init_wandb", boom)
    monkeypatch.setattr(tracking, "_warned", False)
    with pytest.warns(RuntimeWarning, match="W&B could not start"):
        with tracking.start_run("noisefit", "finetune", "sft-seed1") as run:
            run.log({"loss": 2.0}, step=1)
            run.summary({"halluc_rate": 0.25})
    local = json.loads((wandb_tmp / "wandb" / "local" / "noisefit" / "sft-seed1.json").read_text())
    assert local["summary"] == {"halluc_rate": 0.25} and local["history"] == [{"loss": 2.0, "_step": 1}]
    metrics = tracking.write_metrics("noisefit", {"halluc_rate": 0.25}, reports_dir=wandb_tmp / "reports")
    assert json.loads(metrics.read_text()) == {"halluc_rate": 0.25}


def test_disabled_mode_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with tracking.start_run("x", "y", "z") as run:
        run.log({"a": 1})
        assert not run.live
    assert not (tmp_path / "wandb").exists()


def test_write_plot_csv(tmp_path):
    p = tracking.write_plot("s", "curve", [{"step": 0, "loss": 1.5}], reports_dir=tmp_path)
    assert p == tmp_path / "plots" / "curve.csv" and p.read_text() == "step,loss\n0,1.5\n"
