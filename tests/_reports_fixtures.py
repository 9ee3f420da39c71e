"""Report fixtures shared by the front-page, browser and offline-W&B tests.

- :func:`claim`: a claims row made by the claims engine, with the verdict asked for.
- :func:`make_stage`: a synthetic ``reports/<stage>/`` (metrics.json in the families' format,
  timing.json as the runner leaves it, real PNG figures, a small index.html) for stages a
  test does not execute.
- :func:`smoke_reports`: one real family report, executed by the runner under the smoke
  profile with W&B offline into a temporary ``wandb/``; built once per test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMOKE_FAMILY = "entropy_attention"  # needs generated data only (no base model): the quickest real report


# Per-seed differences (method - baseline) that give each verdict for a claim expecting a
# decrease under the claims engine's rule (three seeds, a paired t-test).
_DIFFERENCES = {
    "supported": (-0.010, -0.012, -0.014),
    "not supported": (0.010, 0.012, 0.014),
    "inconclusive": (0.010, -0.012, 0.004),
}


def claim(
    family: str,
    verdict: str,
    *,
    claim: str | None = None,
    metric: str = "ece",
    expected: str = "decrease",
    paper: str = "Mukhoti et al. 2020",
    unit: str = "seeds",
    note: str = "",
    paper_effect: float | None = None,
    id: str | None = None,
) -> dict:
    """A claims row made by the claims engine with the given verdict: seed-level rows from three
    paired seeds, item-level rows from a normal bootstrap, 'not evaluated' rows with a reason."""
    import numpy as np

    from trustlab.core import claims as engine

    spec = engine.ClaimSpec(
        id=id or f"{metric}-{verdict.replace(' ', '-')}",
        claim=claim or f"{metric} {expected}s ({verdict})",
        paper=paper,
        metric=metric,
        method="method",
        baseline="baseline",
        expected=expected,
        unit=unit,
        range=(0.0, 1.0),
        paper_effect=paper_effect,
        paper_effect_source="Table 1" if paper_effect is not None else "",
        note=note,
    )
    if verdict == "not evaluated":
        return engine.unevaluated_row(family, spec, "the variant was not run")
    sign = 1.0 if expected == "decrease" else -1.0
    diffs = sign * np.array(_DIFFERENCES[verdict])
    if unit == "items":
        rng = np.random.default_rng(0)
        effect = float(diffs.mean())
        spread = 0.002 if verdict != "inconclusive" else 0.05
        return engine.item_row(family, spec, effect, effect + spread * rng.standard_normal(2000), n=400)
    baseline = np.array([0.10, 0.12, 0.11])
    return engine.seed_row(family, spec, baseline + diffs, baseline)


_PNG: dict[str, bytes] = {}


def png(path: Path, colour: str = "tab:blue") -> Path:
    """A real matplotlib PNG (one per colour, drawn once per session)."""
    if colour not in _PNG:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1, 2], [2, 1, 1.5], color=colour)
        ax.set_title(colour)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        _PNG[colour] = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_PNG[colour])
    return path


def make_stage(
    reports: Path,
    name: str,
    claims: list[dict] | None = None,
    figures: tuple[str, ...] = ("main",),
    headline: dict | None = None,
    wall_time_s: float = 12.5,
    profile: str = "smoke",
    html: bool = True,
    **extra: Any,
) -> Path:
    stage = reports / name
    (stage / "figures").mkdir(parents=True, exist_ok=True)
    for i, fig in enumerate(figures):
        png(stage / "figures" / f"{fig}.png", colour=["tab:blue", "tab:red", "tab:green"][i % 3])
    metrics = {
        "headline": headline or {"acc": 0.9, "ece": 0.05},
        "claims": claims or [],
        "run": {"profile": profile},
        **extra,
    }
    (stage / "metrics.json").write_text(json.dumps(metrics))
    (stage / "timing.json").write_text(json.dumps({"runner_wall_s": wall_time_s}))  # as the runner leaves it
    if html:
        (stage / "index.html").write_text(
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name}</title></head>"
            f"<body><h1>{name}</h1></body></html>"
        )
    return stage


@dataclass
class SmokeReports:
    reports: Path  # reports/ with reports/<SMOKE_FAMILY>/ executed by the runner
    data: Path  # data/ with generated/
    wandb_root: Path  # WANDB_DIR of the run: its runs are under wandb_root/wandb/offline-run-*
    runner_stdout: str


def once_per_run(tmp_path_factory, key: str, build):
    """``(folder, record)``: ``build(folder) -> dict`` (JSON) runs once for the whole test run,
    in whichever xdist worker asks first; the others wait on a file lock and reuse the folder and
    the record. (Grouping the tests of one execution onto one worker does not hold with every
    pytest and xdist version; a lock does.) A build that raises leaves nothing: the next caller
    builds again."""
    import json
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    folder, record = root / key, root / f"{key}.json"
    with FileLock(str(root / f"{key}.lock")):
        if not record.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            record.write_text(json.dumps(build(folder)))
    return folder, json.loads(record.read_text())


def smoke_reports(tmp_path_factory) -> SmokeReports:
    """Generate smoke data and execute the ``SMOKE_FAMILY`` notebook through the runner, with
    W&B offline into a temporary directory and progress bars left to the runner (it turns them
    off). Once per test run: the browser and offline-W&B tests share one execution."""

    def build(base: Path) -> dict:
        data, reports, wandb_root = base / "data", base / "reports", base / "wandb_root"
        wandb_root.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("TRUSTLAB_PROGRESS",)}
        env.update(TRUSTLAB_WANDB_MODE="offline", WANDB_MODE="offline", WANDB_DIR=str(wandb_root),
                   TRUSTLAB_ROOT=str(ROOT))  # fmt: skip
        gen = subprocess.run([sys.executable, "pipelines/generate_data.py", "--profile", "smoke", "--out",
                              str(data / "generated")], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        assert gen.returncode == 0, gen.stderr[-3000:]
        run = subprocess.run([sys.executable, "pipelines/run_notebook.py", SMOKE_FAMILY, "--profile", "smoke",
                              "--reports-dir", str(reports / SMOKE_FAMILY), "--data-dir", str(data), "--timeout", "600"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        assert run.returncode == 0, run.stderr[-4000:]
        return {"stdout": run.stdout}

    base, record = once_per_run(tmp_path_factory, "smoke_reports", build)
    return SmokeReports(base / "reports", base / "data", base / "wandb_root", record["stdout"])


TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def dvc_plots_page(tmp_path: Path, template: Path = TEMPLATE) -> Path:
    """``dvc plots show`` in a scratch DVC repo (a line plot and a bar plot) with the offline
    template set the way the project sets it, in the repo's DVC config."""
    repo = tmp_path / "repo"
    (repo / "plots").mkdir(parents=True)
    (repo / "plots" / "loss.csv").write_text("step,loss\n0,2.0\n1,1.4\n2,1.1\n3,1.0\n")
    (repo / "plots" / "ece.csv").write_text("loss,ece\nce,0.08\nfocal,0.05\n")
    (repo / "dvc.yaml").write_text(
        "plots:\n  - plots/loss.csv:\n      x: step\n      y: loss\n"
        "  - plots/ece.csv:\n      x: loss\n      y: ece\n      template: bar_horizontal\n"
    )
    dvc(repo, "init", "--no-scm", "-q")
    dvc(repo, "config", "plots.html_template", str(template))
    dvc(repo, "plots", "show", "-o", "out")
    return repo / "out" / "index.html"
