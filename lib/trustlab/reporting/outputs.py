"""What every stage leaves under ``reports/<stage>/``, written by one function.

- ``metrics.json``: every number of the run (headline, tables, claims, config, run info,
  provenance); the front page reads it. Committed (DVC ``cache: false``).
- ``headline.json``: the headline numbers alone, for ``dvc metrics show`` / ``diff``.
- ``plots/<name>.csv``: plot data for ``dvc plots``.
- ``timing.json``: wall times, throughputs and machine facts. No stage depends on it and it
  is not a DVC metric, so a rerun that only runs faster or slower changes nothing else.

Nothing in the first three files may hold a wall time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustlab.core import io


@dataclass
class StageOutputs:
    """A stage's results, ready to write: ``tables`` (each a top-level key of ``metrics.json``)
    and ``plots`` hold DataFrames or lists of row dicts; ``claims`` the rows of
    :mod:`trustlab.core.claims`; ``extra`` any other top-level key of ``metrics.json`` (config,
    notes); ``timing`` what goes to ``timing.json``."""

    stage: str
    headline: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)


def _records(rows: Any) -> list[dict[str, Any]]:
    if hasattr(rows, "to_dict"):
        return rows.to_dict(orient="records")
    return [dict(r) for r in rows]


def _is_rank_zero() -> bool:
    from trustlab.tracking.runs import is_global_zero

    return is_global_zero()


def write_outputs(
    reports_dir: str | os.PathLike,
    outputs: StageOutputs,
    *,
    profile: str | None,
    stage_seconds: float | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``headline.json``, ``plots/*.csv`` and ``timing.json``; return
    the metrics. In a multi-process run only rank 0 writes."""
    from trustlab.core.provenance import provenance

    reports_dir = Path(reports_dir)
    metrics: dict[str, Any] = {
        "headline": dict(outputs.headline),
        "claims": list(outputs.claims),
        **{name: _records(rows) for name, rows in outputs.tables.items()},
        **outputs.extra,
        "run": {"profile": profile},
        "provenance": provenance(),
    }
    if not _is_rank_zero():
        return metrics
    io.write_json(reports_dir / "headline.json", metrics["headline"])
    io.write_json(reports_dir / "metrics.json", metrics)
    for name, rows in outputs.plots.items():
        io.write_csv(reports_dir / "plots" / f"{name}.csv", _records(rows))
    timing = {"stage_seconds": stage_seconds, **outputs.timing}
    io.write_json(reports_dir / "timing.json", timing)
    return metrics


def read_metrics(reports_dir: str | os.PathLike) -> Mapping[str, Any]:
    """``metrics.json`` of a stage, with a clear error naming the file when it is missing or malformed."""
    path = Path(reports_dir) / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the stage wrote no metrics")
    return io.read_json(path)
