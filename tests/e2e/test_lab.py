"""The JupyterLab workflow: the server lists the notebooks over REST with Jupytext pairing and the
project kernel; progress bars show in a live kernel and stay silent when the runner turns them off."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, port: int, token: str, proc: subprocess.Popen, log: Path):
        self.base, self.token, self.proc, self.log = f"http://127.0.0.1:{port}", token, proc, log

    def request(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``jupyter lab`` as ``make lab`` starts it (venv kernelspecs first, Jupytext on), on a free
    loopback port with a token, serving a copy of the project's notebooks and jupytext.toml so
    that saving through the API cannot touch the repository."""
    root = tmp_path_factory.mktemp("lab")
    served = root / "project"
    shutil.copytree(ROOT / "notebooks", served / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "jupytext.toml", served / "jupytext.toml")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
    }
    log = root / "lab.log"
    jupyter = Path(sys.executable).with_name("jupyter")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                str(jupyter),
                "lab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={served}",
                *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=served,
        )
    server = Lab(port, token, proc, log)
    deadline = time.monotonic() + 180  # a hang guard, not a timing assertion
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                server.request("/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        server.served = served
        yield server
    finally:
        if proc.poll() is None:
            try:
                server.request("/api/shutdown", method="POST")
                proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - fall back to terminating our own child
                proc.terminate()
                proc.wait(timeout=30)


def test_lab_lists_notebooks_with_jupytext_pairs(lab):
    listing = lab.request("/api/contents/notebooks")
    assert listing["type"] == "directory"
    entries = {item["name"]: item["type"] for item in listing["content"]}
    expected = sorted(p.name for p in (ROOT / "notebooks").iterdir() if p.suffix in (".py", ".ipynb"))
    assert expected, "the repository has no notebooks"
    for name in expected:
        assert name in entries, f"{name} missing from the server's listing {sorted(entries)}"
        # Jupytext's contents manager serves the .py:percent twins as notebooks too
        assert entries[name] == "notebook", f"{name} is listed as {entries[name]!r}, not as a notebook"


def test_py_twin_opens_as_notebook_with_parameters_cell(lab):
    py = sorted((ROOT / "notebooks").glob("*.py"))[0].name
    model = lab.request(f"/api/contents/notebooks/{py}?type=notebook&content=1")
    cells = model["content"]["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell is not tagged parameters"


def test_saving_through_the_server_writes_the_py_twin(lab):
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "source": "x = 41 + 1",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                "id": "c1",
            }
        ],
    }
    lab.request(
        "/api/contents/notebooks/lab_roundtrip.ipynb",
        method="PUT",
        body={"type": "notebook", "format": "json", "content": nb},
    )
    twin = lab.served / "notebooks" / "lab_roundtrip.py"
    assert twin.exists(), "jupytext.toml pairing did not write the .py twin on save"
    text = twin.read_text()
    assert "# %%" in text and "x = 41 + 1" in text


def test_project_kernel_is_the_default(lab):
    specs = lab.request("/api/kernelspecs")
    assert specs["default"] == "python3" and "python3" in specs["kernelspecs"]
    argv0 = specs["kernelspecs"]["python3"]["spec"]["argv"][0]
    # "python" is replaced by the server's own interpreter (the venv's); an absolute path must be it
    assert argv0 in ("python", "python3") or Path(argv0).resolve() == Path(sys.executable).resolve()


# -- progress bars -------------------------------------------------------------------------------


def test_progress_enabled_values(monkeypatch):
    from trustlab.core.progress import progress_enabled

    monkeypatch.delenv("TRUSTLAB_PROGRESS", raising=False)
    assert progress_enabled()
    for off in ("0", "false", "no", "off"):
        monkeypatch.setenv("TRUSTLAB_PROGRESS", off)
        assert not progress_enabled()
    monkeypatch.setenv("TRUSTLAB_PROGRESS", "1")
    assert progress_enabled()


def test_progress_wraps_only_when_enabled(monkeypatch):
    from tqdm.std import tqdm

    from trustlab.core.progress import progress

    items = [1, 2, 3]
    monkeypatch.setenv("TRUSTLAB_PROGRESS", "0")
    assert progress(items, desc="x") is items
    monkeypatch.setenv("TRUSTLAB_PROGRESS", "1")
    bar = progress(items, desc="x", file=open(os.devnull, "w"))
    assert isinstance(bar, tqdm) and list(bar) == items


def _kernel_outputs(code: str, env: dict[str, str]) -> list[dict]:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120, env=env)
    outputs: list[dict] = []
    try:
        kc.execute_interactive(code, output_hook=lambda msg: outputs.append(msg), timeout=120)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return outputs


@pytest.mark.e2e
def test_live_kernel_shows_a_progress_widget_and_runner_setting_silences_it(tmp_path):
    """In a live kernel ``progress`` displays a tqdm widget; with the runner's
    ``TRUSTLAB_PROGRESS=0`` the same loop produces no widget and no bar text."""
    code = (
        "from trustlab.core.progress import progress\ntotal = sum(progress(range(50), desc='loop'))\nprint('total', total)"
    )
    base = {k: v for k, v in os.environ.items() if k != "TRUSTLAB_PROGRESS"}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")]))
    base["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    base["JUPYTER_RUNTIME_DIR"] = str(tmp_path)

    def widgets(outs):
        return [m for m in outs if m["msg_type"] == "display_data" and WIDGET_MIME in m["content"].get("data", {})]

    def text(outs):
        return "".join(m["content"].get("text", "") for m in outs if m["msg_type"] == "stream")

    live = _kernel_outputs(code, base)
    assert widgets(live), "no progress widget in a live kernel"
    assert "total 1225" in text(live)

    silent = _kernel_outputs(code, {**base, "TRUSTLAB_PROGRESS": "0"})
    assert not widgets(silent) and "it/s" not in text(silent) and "total 1225" in text(silent)
