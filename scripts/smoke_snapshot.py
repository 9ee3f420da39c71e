"""Run every stage under the smoke profile and snapshot its metrics, timings aside.

    python scripts/smoke_snapshot.py run  OUT_DIR [--root REPO]   # OUT_DIR/snapshot.json
    python scripts/smoke_snapshot.py diff A/snapshot.json B/snapshot.json

Used to check that a refactor changes no number: run it before and after (or on two
checkouts, via --root), then diff. Keys that hold wall times, throughputs or timing
ratios are dropped, since they differ from run to run by nature.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

STAGES = ["00_data", "01_base_model", "calibration", "noisefit", "entropy_attention", "error_detection"]
# a key is a timing (or machine fact) when one of its words is one of these
TIMING_WORDS = {"time", "times", "timing", "seconds", "secs", "sec", "s", "wall", "ratio", "overhead", "elapsed",
                "duration", "cpu", "utilisation", "utilization", "throughput", "speed", "flops", "gflops", "git", "tokens/s"}


def _is_timing(key: str) -> bool:
    words = set(re.split(r"[_/\s.-]+", key.lower()))
    return bool(words & TIMING_WORDS) or key.lower().startswith("tokens_per")


def _strip(obj, out: str):
    """Drop timing keys; write the output folder as <out> so two folders compare equal."""
    if isinstance(obj, dict):
        return {k: _strip(v, out) for k, v in obj.items() if not _is_timing(str(k))}
    if isinstance(obj, list):
        return [_strip(v, out) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out, "<out>")
    return obj


def run(out: Path, root: Path) -> Path:
    out = out.resolve()
    data = out / "data"
    env = {**os.environ, "TRUSTLAB_WANDB_MODE": "disabled", "WANDB_MODE": "disabled", "TRUSTLAB_PROFILE": "smoke",
           "PYTHONPATH": str(root / "lib")}
    py = sys.executable

    def call(*args: str) -> None:
        print("+", " ".join(args), flush=True)
        subprocess.run([py, *args], cwd=root, env=env, check=True)

    call("pipelines/generate_data.py", "--profile", "smoke", "--out", str(data / "generated"))
    pretrain = ["pipelines/pretrain_base.py", "--profile", "smoke", "--data-dir", str(data), "--out", str(data / "models" / "base")]
    if "--reports-dir" in (root / "pipelines" / "pretrain_base.py").read_text():  # keep timings out of reports/
        pretrain += ["--reports-dir", str(out / "reports" / "base_model")]
    call(*pretrain)
    snapshot = {"base_model": json.loads((data / "models" / "base" / "metrics.json").read_text())}
    for stage in STAGES:
        reports = out / "reports" / stage
        call("pipelines/run_notebook.py", stage, "--profile", "smoke", "--reports-dir", str(reports),
             "--data-dir", str(data), "--timeout", "900")
        snapshot[stage] = json.loads((reports / "metrics.json").read_text())
    path = out / "snapshot.json"
    path.write_text(json.dumps(_strip(snapshot, str(out)), indent=1, sort_keys=True))
    print(f"wrote {path}")
    return path


def _walk(a, b, where: str, diffs: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                diffs.append(f"{where}.{k}: only in {'B' if k not in a else 'A'}")
            else:
                _walk(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{where}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{where}[{i}]", diffs)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    elif isinstance(a, str) and isinstance(b, str) and a.startswith("/") and b.startswith("/"):
        # absolute paths of an older snapshot: compare the part below the output folder
        if a.split("/data/", 1)[-1] != b.split("/data/", 1)[-1]:
            diffs.append(f"{where}: {a!r} != {b!r}")
    elif a != b:
        diffs.append(f"{where}: {a!r} != {b!r}")


def diff(a: Path, b: Path) -> int:
    diffs: list[str] = []
    _walk(json.loads(a.read_text()), json.loads(b.read_text()), "", diffs)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    d = sub.add_parser("diff")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = p.parse_args()
    if args.cmd == "run":
        run(args.out, args.root.resolve())
        return 0
    return diff(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())
