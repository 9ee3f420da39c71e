"""Nothing lost, nothing silent: bad params keep the old results, the profile has one source,
tracking settings are not results, and a killed stage fails loudly and leaves nothing behind."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from _reports_fixtures import once_per_run
from e2e_helpers import make_repo_copy, repo_env, sh

pytestmark = pytest.mark.e2e


def _dvc(repo, env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_params(repo, edit):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    edit(p)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture
def repro_data_report(tmp_path_factory, tmp_path):
    """A repository copy in which ``dvc repro data_report`` has run: built once per test run,
    then copied for each test (outputs, DVC cache and git history included)."""

    def build(folder):
        repo, env = make_repo_copy(folder)
        sh([sys.executable, "-m", "dvc", "repro", "data_report"], repo, env, timeout=600)
        return {}

    folder, _ = once_per_run(tmp_path_factory, "repro_data_report", build)
    repo = tmp_path / "repo"
    shutil.copytree(folder / "repo", repo, symlinks=True)
    return repo, repo_env(repo)


BAD_PARAMS = {
    "misspelled key": (lambda p: p["data"]["world"].update(n_peple=p["data"]["world"].pop("n_people")),
                       "did you mean 'n_people'"),
    "wrong type": (lambda p: p["data"]["world"].update(frac_qa_train="half"), "data.world.frac_qa_train"),
    "out of range": (lambda p: p["data"].update(seed=-1), "data.seed = -1"),
    "unknown profile": (lambda p: p.update(profile="smokee"), "did you mean 'smoke'"),
    "gpu profile on a CPU machine": (lambda p: p.update(profile="gpu"), "need CUDA"),
}  # fmt: skip


def test_bad_params_keep_every_existing_output(repro_data_report):
    repo, env = repro_data_report
    metrics = repo / "reports" / "00_data" / "metrics.json"
    manifest = repo / "data" / "generated" / "manifest.json"
    before = {p: _digest(p) for p in (metrics, manifest)}
    good = (repo / "params.yaml").read_text()
    for what, (edit, message) in BAD_PARAMS.items():
        _edit_params(repo, edit)
        t0 = time.perf_counter()
        proc = _dvc(repo, env, "repro", "data_report")
        seconds = time.perf_counter() - t0
        assert proc.returncode != 0, f"{what}: dvc repro succeeded"
        assert seconds < 90, f"{what}: the pipeline took {seconds:.0f}s to stop"
        assert message in proc.stdout + proc.stderr, f"{what}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        assert {p: _digest(p) for p in before if p.exists()} == before, f"{what}: an output was deleted or changed"
        (repo / "params.yaml").write_text(good)
    assert "Data and pipelines are up to date" in _dvc(repo, env, "status", "data_report").stdout


def test_profile_from_the_environment_must_match_params_yaml(repro_data_report):
    repo, env = repro_data_report
    proc = _dvc(repo, {**env, "TRUSTLAB_PROFILE": "cpu"}, "repro", "-f", "-s", "data")
    assert proc.returncode != 0
    assert "TRUSTLAB_PROFILE=cpu disagrees with profile = 'smoke'" in proc.stdout + proc.stderr


def _changed_stages(repo, env) -> set[str]:
    status = _dvc(repo, env, "status").stdout
    return {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith(("\t", " "))}


def test_tracking_settings_invalidate_no_result(repro_data_report):
    repo, env = repro_data_report
    before = _changed_stages(repo, env)  # the stages downstream of data_report never ran in this copy
    _edit_params(repo, lambda p: p["tracking"].update(mode="disabled", entity="someone"))
    assert _changed_stages(repo, env) - before <= {"params_check"}


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_killed_stage_fails_loudly_and_leaves_nothing_behind(repro_data_report, signum, code):
    repo, env = repro_data_report
    reports = repo / "reports" / "00_data"
    proc = subprocess.Popen([sys.executable, "pipelines/run_notebook.py", "00_data"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    kernel = None
    while time.monotonic() < deadline and kernel is None:  # kill it while its kernel runs cells
        kids = psutil.Process(proc.pid).children(recursive=True)
        kernel = next((k for k in kids if "ipykernel" in " ".join(k.cmdline())), None)
        time.sleep(0.2)
    assert kernel is not None, "the runner never started a kernel"
    time.sleep(1.0)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert f"00_data: stopped by {signal.Signals(signum).name}" in err
    kernel.wait(timeout=30) if kernel.is_running() else None
    assert not kernel.is_running(), "the notebook kernel outlived its runner"
    assert not list(reports.glob(".run-*")), "a temporary run folder was left behind"
    rerun = subprocess.run([sys.executable, "pipelines/run_notebook.py", "00_data"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def test_a_killed_pretraining_exits_non_zero(repro_data_report):
    """Lightning turns SIGTERM into a SystemExit without a code (exit 0): it must still fail."""
    repo, env = repro_data_report
    smoke = yaml.safe_load((repo / "profiles" / "smoke.yaml").read_text())
    smoke["base_model"]["steps"] = 100000  # long enough to be killed while training
    (repo / "profiles" / "smoke.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    proc = subprocess.Popen([sys.executable, "pipelines/pretrain_base.py", "--data-dir", "data", "--out",
                             str(repo / "scratch_model"), "--reports-dir", str(repo / "scratch_reports")],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(12)
    assert proc.poll() is None, "pretraining ended before it could be killed"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "base_model: stopped by SIGTERM" in err


def test_a_notebook_that_writes_no_metrics_fails_its_stage(repo_copy):
    repo, env = repo_copy
    (repo / "notebooks" / "00_data.py").write_text(
        '# %% tags=["parameters"]\nprofile = None\nparams = {}\nreports_dir = None\ndata_dir = None\n\n'
        '# %%\nprint("ran, but wrote nothing")\n'
    )
    proc = subprocess.run([sys.executable, "pipelines/run_notebook.py", "00_data", "--data-dir", str(repo / "nodata")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "wrote no" in proc.stderr and "metrics.json" in proc.stderr
