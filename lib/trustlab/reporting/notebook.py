"""The first and last cells every stage notebook shares.

    stage = open_stage("noisefit", NoiseFitConfig, params, profile=profile,
                       data_dir=data_dir, reports_dir=reports_dir)
    cfg, show = stage.cfg, stage.show
    ...
    metrics = close_stage(stage, outputs, summary=[("Claims", claims_df), ...],
                          log_summary=lambda html: report.log_summary(..., html_path=html))

``open_stage`` validates the section (params.yaml, the profile's overrides, then the
notebook's ``params``), resolves the data and reports folders and sets up the figures;
``close_stage`` writes the outputs (:func:`trustlab.reporting.outputs.write_outputs`), the
summary page and the W&B summary run, and prints where they went.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustlab.core.config import load_params, load_section
from trustlab.core.paths import data_dir as default_data_dir
from trustlab.core.paths import reports_dir as default_reports_dir
from trustlab.reporting.outputs import StageOutputs, write_outputs
from trustlab.reporting.plotting import NotebookFigures


@dataclass
class StageContext:
    """What a stage notebook needs from its first cell."""

    name: str
    cfg: Any
    profile: str
    data: Path
    reports: Path
    figures: NotebookFigures
    started: float = field(default_factory=time.perf_counter)

    @property
    def show(self) -> Callable[[Any, str], None]:
        return self.figures.show

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def open_stage(
    name: str,
    config_cls: type,
    params: dict[str, Any] | None = None,
    *,
    profile: str | None = None,
    data_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
) -> StageContext:
    import pandas as pd

    cfg = load_section(config_cls, params, profile=profile)
    profile_name = profile or load_params()["profile"]
    reports = Path(reports_dir) if reports_dir else default_reports_dir(name)
    pd.set_option("display.precision", 3)
    return StageContext(
        name=name,
        cfg=cfg,
        profile=profile_name,
        data=Path(data_dir) if data_dir else default_data_dir(),
        reports=reports,
        figures=NotebookFigures(reports / "figures"),
    )


def close_stage(
    stage: StageContext,
    outputs: StageOutputs,
    *,
    summary: Sequence[tuple[str, Any]] | None = None,
    summary_title: str | None = None,
    log_summary: Callable[[Path | None], None] | None = None,
) -> dict[str, Any]:
    """Write the outputs, the optional ``summary.html`` (the given sections, then every figure)
    and the W&B summary run; return the metrics."""
    from trustlab.reporting.html import write_summary_html

    seconds = stage.seconds()
    metrics = write_outputs(stage.reports, outputs, profile=stage.profile, stage_seconds=seconds)
    html_path = None
    if summary is not None:
        html_path = write_summary_html(stage.reports / "summary.html", summary_title or f"{stage.name} summary",
                                       [*summary, *stage.figures.items()])  # fmt: skip
    if log_summary is not None:
        log_summary(html_path)
    print(f"stage time {seconds:.0f} s; wrote {stage.reports / 'metrics.json'}")
    return metrics
