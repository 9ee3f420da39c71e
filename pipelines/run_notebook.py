"""Execute a family notebook with papermill and render its HTML report.

    python pipelines/run_notebook.py calibration [--profile smoke] [--reports-dir D] [--data-dir D]

Parameters come from the notebook's ``params.yaml`` section (plus the profile's overrides),
validated here before the kernel starts and again inside the notebook. The executed
notebook goes to ``<reports-dir>/<name>.ipynb`` and the report to ``<reports-dir>/index.html``.
A cell error fails with exit code 1; the executed notebook then shows the error. A notebook
that ran without writing ``metrics.json`` fails too. SIGTERM / SIGINT fail the stage (exit
143 / 130) with one line, and the kernel is shut down with it. The run's wall time goes to
``timing.json``, never into ``metrics.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from trustlab.core import io  # noqa: E402
from trustlab.core.config import ConfigError, load_params  # noqa: E402
from trustlab.core.interrupts import exit_loudly_on_signals  # noqa: E402
from trustlab.profiles import check_environment  # noqa: E402
from trustlab.reporting.html import render_html  # noqa: E402
from trustlab.stages import NOTEBOOKS, section_class  # noqa: E402
from trustlab.tracking import log_report  # noqa: E402

KERNEL = "python3"


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of every descendant it has waited for (the
    kernel, which in turn waited for its workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(
    name: str,
    profile: str | None = None,
    reports_dir: Path | None = None,
    data_dir: Path | None = None,
    timeout_s: int = 3600,
    params_file: Path | None = None,
) -> Path:
    if name not in NOTEBOOKS:
        raise ConfigError(f"notebook = {name!r} is not allowed: choose one of {', '.join(NOTEBOOKS)}")
    # The .py twin is what DVC depends on, so it is what runs (a stale .ipynb cannot sneak in).
    source = ROOT / "notebooks" / f"{name}.py"
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing")
    params = load_params(params_file, profile)
    section = NOTEBOOKS[name]
    # Fail before the kernel starts: the same validation runs again inside the notebook.
    section_class(section).from_dict(params.get(section) or {}, where=section)
    # ... and when the profile asks for what this machine lacks (CUDA, an uncached hub model).
    check_environment(params, data_dir or ROOT / "data")

    reports_dir = (reports_dir or ROOT / "reports" / name).resolve()
    data_dir = (data_dir or ROOT / "data").resolve()
    reports_dir.mkdir(parents=True, exist_ok=True)
    # A run killed with SIGKILL leaves its temporary folder behind; the next start clears it.
    for stale in reports_dir.glob(".run-*"):
        shutil.rmtree(stale, ignore_errors=True)
    parameters = {
        "profile": params["profile"],
        "params": params.get(section) or {},
        "reports_dir": str(reports_dir),
        "data_dir": str(data_dir),
    }

    import papermill as pm

    env_backup = dict(os.environ)
    # Progress bars in an executed report are noise; the library reads this to turn them off.
    os.environ["TRUSTLAB_PROGRESS"] = "0"
    # An inherited MPLBACKEND (Agg from the test session or a headless shell) would replace the
    # kernel's inline backend: plt.show() would display nothing and the report lose its figures.
    os.environ.pop("MPLBACKEND", None)
    # A BLAS pool per process oversubscribes a small machine; torch threads are set per family.
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TRUSTLAB_ROOT", str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")]))
    out_nb = reports_dir / f"{name}.ipynb"
    start = time.perf_counter()
    started_at = time.time()
    cpu_start = _cpu_seconds()
    error: BaseException | None = None
    with tempfile.TemporaryDirectory(dir=reports_dir, prefix=".run-") as tmp:
        import jupytext

        notebook = Path(tmp) / f"{name}.source.ipynb"
        jupytext.write(jupytext.read(source), notebook)
        tmp_nb = Path(tmp) / f"{name}.ipynb"
        try:
            pm.execute_notebook(
                str(notebook),
                str(tmp_nb),
                parameters=parameters,
                kernel_name=KERNEL,
                language="python",
                cwd=str(ROOT),
                execution_timeout=timeout_s,
                progress_bar=False,
                report_mode=False,
            )
        except pm.PapermillExecutionError as exc:
            error = exc
        except Exception as exc:  # a cell timeout or a dead kernel: papermill kept what had run
            from nbclient.exceptions import CellTimeoutError, DeadKernelError

            if not isinstance(exc, (CellTimeoutError, DeadKernelError)):
                raise
            error = exc
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
        if tmp_nb.exists():
            os.replace(tmp_nb, out_nb)
    wall = time.perf_counter() - start
    if error is not None:
        print(f"error: notebook {name} failed in cell {getattr(error, 'exec_count', '?')}: "
              f"{getattr(error, 'ename', '')}: {getattr(error, 'evalue', error)}\n"
              f"see the executed notebook {out_nb}", file=sys.stderr)
        raise SystemExit(1)
    render_html(out_nb, reports_dir / "index.html", title=name)
    # The rendered report joins the stage's runs in W&B (group = its params section, like the
    # notebook's own runs): a job_type="report" run holding it as wandb.Html and a report
    # artifact; a no-op when tracking is disabled, never fatal.
    log_report(section, reports_dir / "index.html", config={"profile": params["profile"], section: params.get(section) or {}},
               mode=(params.get("tracking") or {}).get("mode"))
    metrics_path = reports_dir / "metrics.json"
    if not metrics_path.exists() or metrics_path.stat().st_mtime < started_at - 1.0:
        stale = " (the file there is from an earlier run)" if metrics_path.exists() else ""
        print(f"error: notebook {name} ran but wrote no {metrics_path}{stale}; the stage has no results",
              file=sys.stderr)
        raise SystemExit(1)
    metrics = io.read_json(metrics_path)
    recorded = (metrics.get("run") or {}).get("profile")
    if recorded is None:
        metrics["run"] = {**metrics.get("run", {}), "profile": params["profile"]}
        io.write_json(metrics_path, metrics)
    elif recorded != params["profile"]:
        print(f"error: {metrics_path} records profile {recorded!r}, but the stage ran with {params['profile']!r}",
              file=sys.stderr)
        raise SystemExit(1)
    timing_path = reports_dir / "timing.json"
    timing = io.read_json(timing_path) if timing_path.exists() else {}
    cpu = _cpu_seconds() - cpu_start  # the runner, its kernel and the kernel's worker processes
    io.write_json(timing_path, {**timing, "runner_wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                "cpu_cores": round(cpu / wall, 2) if wall > 0 else None,
                                "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                else os.cpu_count()})  # fmt: skip
    print(f"{name}: executed in {wall:.1f}s -> {out_nb.relative_to(ROOT) if out_nb.is_relative_to(ROOT) else out_nb}")
    return out_nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help=f"one of: {', '.join(NOTEBOOKS)}")
    parser.add_argument("--profile", default=None, help="params profile (e.g. smoke); default: params.yaml's")
    parser.add_argument("--reports-dir", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--params-file", type=Path, default=None)
    parser.add_argument("--timeout", type=int, default=3600, help="per-cell execution timeout in seconds")
    args = parser.parse_args(argv)
    with exit_loudly_on_signals(args.notebook):
        try:
            run(args.notebook, args.profile, args.reports_dir, args.data_dir, args.timeout, args.params_file)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
