"""W&B online degrades to offline instead of stalling: one short wait, then offline runs."""

from __future__ import annotations

import time

import pytest

from trustlab.tracking import runs


@pytest.fixture
def online_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(runs, "_online_failed", False)
    monkeypatch.setattr(runs, "_warned", False)
    return tmp_path


def _offline_runs(directory):
    return sorted((directory / "wandb").glob("offline-run-*"))


def _three_runs():
    t0 = time.perf_counter()
    for seed in range(3):
        with runs.start_run("fallback_test", "train", f"variant-seed{seed}", {"seed": seed}) as run:
            run.log({"loss": 1.0 / (seed + 1)})
    return time.perf_counter() - t0


def test_unreachable_server_waits_once_then_writes_offline_runs(online_env, monkeypatch):
    # a key, but a server that refuses every connection (a closed port on this machine)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TRUSTLAB_WANDB_INIT_TIMEOUT", "4")
    with pytest.warns(RuntimeWarning, match="W&B online is unreachable"):
        online = _three_runs()
    assert len(_offline_runs(online_env)) == 3, "every run is written offline for a later `wandb sync`"
    assert (online_env / "wandb" / runs.FALLBACK_MARKER).exists()

    # the same three runs offline, for the time budget: one wait, not three
    monkeypatch.setenv("TRUSTLAB_WANDB_MODE", "offline")
    offline = _three_runs()
    assert online < offline + 4 + 15, f"online fallback took {online:.1f}s against {offline:.1f}s offline"


def test_no_api_key_goes_offline_at_once(online_env):
    with pytest.warns(RuntimeWarning, match="no API key"):
        _three_runs()
    assert len(_offline_runs(online_env)) == 3


def test_a_later_stage_stays_offline_after_a_failure(online_env, monkeypatch):
    (online_env / "wandb").mkdir(parents=True, exist_ok=True)
    (online_env / "wandb" / runs.FALLBACK_MARKER).write_text("earlier stage could not connect\n")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    calls = []
    real = runs._init_wandb
    monkeypatch.setattr(runs, "_init_wandb", lambda mode, **kw: calls.append(mode) or real(mode, **kw))
    with runs.start_run("fallback_test", "train", "after", {}) as run:
        run.log({"x": 1})
    assert calls == ["offline"]


def test_a_failure_mid_run_keeps_the_logged_data_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr(runs, "_warned", False)

    class Broken:
        dir = str(tmp_path / "wandb" / "run-x" / "files")

        def log(self, *a, **k):
            raise ConnectionError("the connection dropped")

        def finish(self):
            pass

    run = runs.Run("fallback_test", "train", "sft-seed0", {"seed": 0}, Broken(), "online")
    with pytest.warns(RuntimeWarning, match="the connection dropped"):
        run.log({"loss": 0.5}, step=1)
    run.finish()
    import json

    saved = json.loads((tmp_path / "wandb" / "local" / "fallback_test" / "sft-seed0.json").read_text())
    assert saved["history"] == [{"loss": 0.5, "_step": 1}]
