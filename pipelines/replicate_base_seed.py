"""Rerun the whole default pipeline with another base-model seed and store its verdicts.

    python pipelines/replicate_base_seed.py [--seed 1] [--workdir DIR] [--keep]
    make replicate                      # the same, seed 1

A claim whose verdict changes when only ``base_model.seed`` changes rests on one draw of the
base model. This script clones the committed repository (``git clone`` of HEAD, so the tree
must be clean), sets ``base_model.seed`` in the clone's params.yaml, runs ``dvc repro`` there
with W&B disabled (sharing this repository's DVC cache, so unchanged stages such as ``data``
come back from the run cache) and writes the clone's claims, the commit and a digest of every
other parameter to ``reports/robustness/base_model_seed<k>.json``. The front page then marks
each verdict robust or fragile (``trustlab.reporting.robustness``); rerun ``dvc repro
front_page`` (or ``make repro``) to render it. It takes as long as a full ``make repro``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from trustlab.core.io import write_json  # noqa: E402
from trustlab.reporting.robustness import VARIED, replicate_path, replicate_record  # noqa: E402


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def set_seed(params_file: Path, seed: int) -> None:
    """Set ``base_model.seed`` in place, keeping the file's comments and layout."""
    from ruamel.yaml import YAML

    yaml = YAML()
    doc = yaml.load(params_file.read_text())
    section, key = VARIED
    if section not in doc or key not in doc[section]:
        raise SystemExit(f"error: {params_file} has no {section}.{key}")
    doc[section][key] = seed
    with params_file.open("w") as fh:
        yaml.dump(doc, fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="base_model.seed of the replicate (default 1)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to clone (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its reports/ and data/) afterwards")
    args = ap.parse_args(argv)

    from trustlab.core.config import load_params

    current = load_params()[VARIED[0]][VARIED[1]]
    if args.seed == current:
        print(f"error: --seed {args.seed} is params.yaml's own base_model.seed: pick another", file=sys.stderr)
        return 2
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("error: the working tree has uncommitted changes; the replicate runs the committed HEAD: commit first",
              file=sys.stderr)  # fmt: skip
        return 2
    commit = _git("rev-parse", "--short=12", "HEAD")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="trustlab-replicate-"))
    clone = work / "repo"
    if clone.exists():
        print(f"error: {clone} exists: choose another --workdir", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        _git("clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone))
        set_seed(clone / "params.yaml", args.seed)
        env = dict(os.environ, TRUSTLAB_WANDB_MODE="disabled", DVC_NO_ANALYTICS="1",
                   PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip
        env.pop("PYTHONPATH", None)
        subprocess.run(["dvc", "cache", "dir", "--local", str(ROOT / ".dvc" / "cache")], cwd=clone, env=env,
                       check=True, capture_output=True)  # fmt: skip
        print(f"replicate: dvc repro in {clone} with base_model.seed = {args.seed} (commit {commit})", flush=True)
        subprocess.run(["dvc", "repro"], cwd=clone, env=env, check=True)
        claims = json.loads((clone / "reports" / "claims.json").read_text())
        params = load_params(clone / "params.yaml")
        record = replicate_record(claims, params, commit=commit, wall_s=round(time.perf_counter() - t0, 1))
        out = write_json(replicate_path(ROOT / "reports", args.seed), record)
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(map(str, exc.cmd))} failed (exit {exc.returncode}); the clone is kept at {clone}",
              file=sys.stderr)  # fmt: skip
        return 1
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"replicate: {len(claims)} claims -> {out} in {record['wall_s']:.0f} s; "
          "rerun `dvc repro front_page` to mark fragile verdicts")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
