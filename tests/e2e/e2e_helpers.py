"""Shared helpers of the end-to-end tests: a throw-away git copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def sh(args: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def make_repo_copy(tmp_path: Path, profile: str = "smoke") -> tuple[Path, dict]:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    dst = tmp_path / "repo"
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    # the smoke profile keeps every stage small
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = profile
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = repo_env(dst)
    sh(["git", "init", "-q", "-b", "main"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "copy"], dst, env)
    return dst, env


def repo_env(dst: Path) -> dict:
    """The environment of commands run in the repository copy ``dst``."""
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
    env.pop("TRUSTLAB_PROFILE", None)
    return env


