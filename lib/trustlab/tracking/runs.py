"""Experiment tracking: one module used by every stage and notebook.

Weights & Biases is **offline by default**: runs land in the git-ignored ``wandb/`` at the
repository root and can be uploaded later with ``wandb sync`` (``make wandb-sync``). It goes
online only when asked (``tracking.mode: online`` in params or ``TRUSTLAB_WANDB_MODE=online``,
plus an API key; the environment wins over params). Tests use ``disabled``.

Hygiene: no git metadata or code upload, W&B error reporting off, a short init timeout
(``tracking.init_timeout_s``), no system-metrics sampling.

**Online degrades, never stalls.** The first failure to reach W&B online (no API key, no
network, a timeout) switches this process to offline mode with one warning and leaves a
marker (``wandb/.online-unreachable``) that keeps the stages after it offline for
``FALLBACK_TTL_S``: their runs are still written under ``wandb/`` for a later ``wandb sync``,
and no stage waits on an unreachable server more than once. If W&B cannot start, the run warns once, keeps going and writes
what it was given to ``wandb/local/<group>/<name>.json``; the stage's own
``reports/<stage>/metrics.json`` is written by :func:`write_metrics` regardless of W&B.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trustlab.core import io
from trustlab.core.paths import reports_dir as _reports_dir
from trustlab.core.paths import repo_root
from trustlab.core.provenance import git_commit, git_dirty

PROJECT = "trustlab"
MODES = ("offline", "online", "disabled")
MODE_ENV = "TRUSTLAB_WANDB_MODE"
INIT_TIMEOUT_ENV = "TRUSTLAB_WANDB_INIT_TIMEOUT"
FALLBACK_TTL_S = 3600
FALLBACK_MARKER = ".online-unreachable"

log = logging.getLogger(__name__)
_warned = False
_online_failed = False  # this process already failed to reach W&B online


def tracking_params() -> dict[str, Any]:
    """The validated ``tracking:`` section of ``params.yaml`` (+ profile); the defaults when
    there is no params file (the library used outside the repository)."""
    from trustlab.core.config import load_params
    from trustlab.tracking.config import TrackingConfig

    try:
        params = load_params()
    except FileNotFoundError:
        params = {}
    return TrackingConfig.from_dict(params.get("tracking") or {}, where="tracking").to_dict()


def resolve_mode(mode: str | None = None) -> str:
    """The environment (``$TRUSTLAB_WANDB_MODE``, then ``$WANDB_MODE``) wins over ``mode``,
    so a test or a user's shell can switch tracking without editing params; ``mode`` None reads
    ``tracking.mode`` from ``params.yaml`` (default offline)."""
    chosen = os.environ.get(MODE_ENV) or os.environ.get("WANDB_MODE") or mode
    if not chosen:
        chosen = tracking_params()["mode"]
    if chosen == "dryrun":
        chosen = "offline"
    if chosen not in MODES:
        raise ValueError(f"tracking mode = {chosen!r} is not allowed: choose one of {', '.join(MODES)}")
    return chosen


def wandb_dir() -> Path:
    return Path(os.environ.get("WANDB_DIR") or repo_root())


def _warn_once(msg: str) -> None:
    global _warned
    if not _warned:
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        _warned = True
    log.warning(msg)


def is_global_zero() -> bool:
    """False in the extra processes of a multi-process run (the ``torch.distributed`` rank when a
    process group is up, else the launcher's ``RANK`` / ``LOCAL_RANK`` / ``NODE_RANK``): only
    rank 0 tracks runs and writes metrics. (No torch import: no torch, no process group.)"""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        try:
            if int(os.environ.get(var) or 0) != 0:
                return False
        except ValueError:
            pass
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text).strip("-") or "run"


def image_key(name: str) -> str:
    """The W&B key of a logged figure: ``figures/<name>``."""
    return name if name.startswith("figures/") else f"figures/{name}"


def run_name(variant: str, seed: int | None = None, **extra: Any) -> str:
    """The run-name convention: ``<variant>[-<key><value>...]-seed<seed>``, e.g.
    ``run_name("focal", 1, gamma=2)`` -> ``"focal-gamma2-seed1"``; W&B shows it in every panel."""
    parts = [str(variant), *(f"{k}{v}" for k, v in extra.items()), *([f"seed{seed}"] if seed is not None else [])]
    return "-".join(parts)


def run_tags(family: str, tags: Sequence[str] = ()) -> list[str]:
    """The caller's tags plus ``commit:<sha12>``, ``family:<family>`` and ``dirty`` when the
    working tree has uncommitted changes (so a run can be traced to its code)."""
    out = [*tags, f"commit:{git_commit()[:12]}", f"family:{family}"]
    if git_dirty():
        out.append("dirty")
    return out


class Run:
    """A tracked run. Every method is safe to call whether W&B is live, disabled or failed."""

    def __init__(self, family: str, job_type: str, name: str, config: Mapping[str, Any], wandb_run: Any, mode: str):
        self.family, self.job_type, self.name = family, job_type, name
        self.config = dict(config)
        self.mode = mode
        self._run = wandb_run
        self.history: list[dict[str, Any]] = []
        self.summary_data: dict[str, Any] = {}
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.failed = wandb_run is None and mode != "disabled"

    @property
    def live(self) -> bool:
        return self._run is not None

    @property
    def dir(self) -> Path | None:
        return Path(self._run.dir).parent if self._run is not None else None

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self._run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking must never take a stage down
            self.failed = True  # finish() then also writes what the run was given to wandb/local/
            _warn_once(f"W&B {what} failed ({exc!r}); the stage goes on, its metrics are in reports/ and this "
                       f"run's logged data goes to {self._local_path()}")

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        row = io.to_jsonable(dict(data))
        self.history.append({**row, **({"_step": step} if step is not None else {})})
        self._call("log", self._run.log if self._run else None, dict(data), step=step)

    def summary(self, data: Mapping[str, Any]) -> None:
        self.summary_data.update(io.to_jsonable(dict(data)))
        if self._run is not None:
            self._call("summary", self._run.summary.update, dict(data))

    def log_table(self, name: str, dataframe: Any) -> None:
        """Log a pandas DataFrame as a ``wandb.Table``."""
        df = dataframe.reset_index() if getattr(dataframe.index, "name", None) else dataframe
        self.tables[name] = io.to_jsonable(df.to_dict(orient="records"))
        if self._run is not None:
            import wandb

            # W&B infers one type per column: a cell holding a list or a dict (a claim's feasible
            # range with an open end, [1.0, None]) goes in as its JSON text
            cells = df.astype(object).where(df.notna(), None).map(
                lambda v: json.dumps(io.to_jsonable(v)) if isinstance(v, (list, tuple, dict)) else v
            )
            self._call("table", lambda: self._run.log({name: wandb.Table(dataframe=cells)}))

    def log_image(self, name: str, image: Any) -> None:
        """Log a matplotlib Figure or an image path as a ``wandb.Image`` under ``figures/<name>``.

        The prefix keeps a figure and a table of the same name (a family's ``perplexity`` table
        and ``perplexity`` plot) from overwriting each other in the run summary, and gives the
        figures their own section in the W&B workspace."""
        key = image_key(name)
        if self._run is not None:
            import wandb

            self._call("image", lambda: self._run.log({key: wandb.Image(str(image) if isinstance(image, Path) else image)}))

    def log_html(self, name: str, path: str | os.PathLike, *, artifact: bool = True) -> None:
        """Log a rendered HTML report as ``wandb.Html`` and (by default) as a ``report`` artifact."""
        if self._run is None:
            return
        import wandb

        text = Path(path).read_text(encoding="utf-8")
        self._call("html", lambda: self._run.log({name: wandb.Html(text, inject=False)}))
        if artifact:
            def _artifact() -> None:
                art = wandb.Artifact(_slug(f"{self.family}-{name}"), type="report")
                art.add_file(str(path))
                self._run.log_artifact(art)

            self._call("artifact", _artifact)

    def _local_path(self) -> Path:
        return wandb_dir() / "wandb" / "local" / _slug(self.family) / f"{_slug(self.name)}.json"

    def finish(self) -> None:
        if self._run is not None:
            self._call("finish", self._run.finish)
        if self.failed:
            io.write_json(
                self._local_path(),
                {
                    "family": self.family,
                    "job_type": self.job_type,
                    "name": self.name,
                    "config": self.config,
                    "summary": self.summary_data,
                    "history": self.history,
                    "tables": self.tables,
                },
            )


def init_timeout_s() -> float:
    env = os.environ.get(INIT_TIMEOUT_ENV)
    if env:
        try:
            return float(env)
        except ValueError:
            raise ValueError(f"{INIT_TIMEOUT_ENV} = {env!r} is not a number of seconds") from None
    return float(tracking_params().get("init_timeout_s", 15.0))


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _marker() -> Path:
    return wandb_dir() / "wandb" / FALLBACK_MARKER


def online_fallback_active() -> bool:
    """True when this process, or a stage before it within ``FALLBACK_TTL_S``, failed to reach W&B online."""
    if _online_failed:
        return True
    import time

    m = _marker()
    return m.exists() and time.time() - m.stat().st_mtime < FALLBACK_TTL_S


def _fall_back_offline(reason: str) -> None:
    global _online_failed
    _online_failed = True
    try:
        _marker().parent.mkdir(parents=True, exist_ok=True)
        _marker().write_text(reason + "\n")
    except OSError:
        pass
    _warn_once(f"W&B online is unreachable ({reason}); this run and the later ones go offline into "
               f"{wandb_dir() / 'wandb'} (upload them with `wandb sync`; delete {_marker()} to retry online sooner)")


def _init_wandb(mode: str, **kwargs: Any) -> Any:
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("WANDB_DISABLE_CODE", "true")
    import wandb

    settings = wandb.Settings(
        disable_git=True,
        save_code=False,
        disable_code=True,
        init_timeout=init_timeout_s() if mode == "online" else 30.0,
        x_disable_stats=True,
        x_disable_machine_info=True,
        console="off",
        silent=True,
    )
    directory = wandb_dir()
    (directory / "wandb").mkdir(parents=True, exist_ok=True)
    if mode == "online" and "entity" not in kwargs and not os.environ.get("WANDB_ENTITY"):
        kwargs["entity"] = tracking_params()["entity"]  # None: the logged-in user's default entity
    return wandb.init(project=PROJECT, mode=mode, dir=str(directory), settings=settings, reinit="create_new", **kwargs)


def start_run_object(
    family: str,
    job_type: str,
    name: str,
    config: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
) -> Run:
    mode = resolve_mode(mode)
    if not is_global_zero():  # one run per experiment, from rank 0: the others are silent
        mode = "disabled"
    config = io.to_jsonable(dict(config or {}))
    tags = run_tags(family, tags)
    wandb_run = None
    if mode == "online":
        if online_fallback_active():
            mode = "offline"
        elif not _has_api_key():
            _fall_back_offline("no API key: set WANDB_API_KEY or run `wandb login`")
            mode = "offline"
    if mode != "disabled":
        kwargs = dict(group=family, job_type=job_type, name=name, config=config, tags=tags)
        try:
            wandb_run = _init_wandb(mode, **kwargs)
        except Exception as exc:
            if mode == "online":
                _fall_back_offline(f"{type(exc).__name__}: {str(exc)[:200]}")
                mode = "offline"
                try:
                    wandb_run = _init_wandb(mode, **kwargs)
                except Exception as exc2:
                    _warn_once(f"W&B could not start ({exc2!r}); the stage goes on and writes its metrics locally")
            else:
                _warn_once(f"W&B could not start ({exc!r}); the stage goes on and writes its metrics locally")
    return Run(family, job_type, name, config, wandb_run, mode)


@contextlib.contextmanager
def start_run(
    family: str,
    job_type: str,
    name: str,
    config: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
) -> Iterator[Run]:
    """Open a run in ``project=trustlab``, ``group=family``; always finished on exit."""
    run = start_run_object(family, job_type, name, config, tags, mode)
    try:
        yield run
    finally:
        run.finish()


def log_report(
    family: str,
    html_path: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> None:
    """Log a family's rendered report (the runner's ``index.html``) to W&B: a ``job_type="report"``
    run in the family's group holding it as ``wandb.Html`` and as a ``report`` artifact. The
    report exists only after the notebook (and its summary run) finished, hence its own run."""
    with start_run(family, "report", f"{family}-report-html", config=config, mode=mode) as run:
        run.log_html("report", html_path)


# -- local metrics and plot data (what DVC tracks) ---------------------------------------


def write_metrics(stage: str, metrics: Mapping[str, Any], reports_dir: str | os.PathLike | None = None) -> Path:
    """Write ``reports/<stage>/metrics.json`` atomically (committed with ``dvc.lock``).

    When ``metrics`` has a ``headline`` dict it is also written alone to ``headline.json``:
    the file for DVC's ``metrics:``, so that ``dvc metrics show`` / ``diff`` list just the
    readable headline numbers, not every config value and table in ``metrics.json``."""
    base = Path(reports_dir) if reports_dir is not None else _reports_dir(stage)
    if not is_global_zero():  # rank 0 writes the outputs of a multi-process run
        return base / "metrics.json"
    headline = metrics.get("headline")
    if isinstance(headline, Mapping):
        io.write_json(base / "headline.json", dict(headline))
    return io.write_json(base / "metrics.json", metrics)


def write_plot(
    stage: str,
    name: str,
    rows: Sequence[Mapping[str, Any]] | Any,
    reports_dir: str | os.PathLike | None = None,
    fmt: str = "csv",
) -> Path:
    """Write plot data ``reports/<stage>/plots/<name>.<fmt>`` (csv or json rows, or a DataFrame)."""
    base = Path(reports_dir) if reports_dir is not None else _reports_dir(stage)
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict(orient="records")
    path = base / "plots" / f"{name}.{fmt}"
    if not is_global_zero() and fmt in ("csv", "json"):  # rank 0 writes the outputs
        return path
    if fmt == "csv":
        return io.write_csv(path, list(rows))
    if fmt == "json":
        return io.write_json(path, list(rows))
    raise ValueError(f"fmt = {fmt!r} is not allowed: 'csv' or 'json'")
