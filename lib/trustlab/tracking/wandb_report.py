"""An optional W&B Report of the claims and each family's headline panels.

    python -m trustlab.tracking.wandb_report [--entity E] [--reports-dir reports] [--dry-run]   (make wandb-report)

Two layers, so the construction is testable without the network:

1. :func:`report_spec` turns the front page's claims rows and each stage's outputs into a
   plain data structure (a list of block dicts: headings, paragraphs, markdown tables and
   panel grids with their run filters and panels). No W&B import.
2. :func:`to_wandb_report` maps that structure onto ``wandb_workspaces.reports.v2`` objects
   (``H1``, ``P``, ``MarkdownBlock``, ``PanelGrid`` with a ``Runset`` per family,
   ``WeavePanelSummaryTable`` for the logged ``claims`` table, ``MediaBrowser`` for the
   figures). Building these objects touches no network; only ``Report.save()`` does.

Saving needs W&B online (``tracking.mode: online`` or ``TRUSTLAB_WANDB_MODE=online``), an API
key and ``wandb-workspaces`` (the ``wandb-report`` extra). Otherwise the command says why and
exits 0 without doing anything (``--dry-run`` prints the spec). The panels expect the run
structure of :mod:`trustlab.tracking`: ``group=<family>``, a ``job_type="summary"`` run per
family that logged ``claims`` (and its figures, ``figures/<name>``, named like ``figures/*.png``), and the
front page's ``group="report"`` run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trustlab.core.claims import RULE, VERDICTS, count_verdicts
from trustlab.reporting.frontpage import StageReport, collect_stages, fmt_effect, fmt_p, gather_claims
from trustlab.tracking.runs import PROJECT, image_key

TITLE = "trustlab: claims and headline results"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_markdown(claims: Sequence[Mapping[str, Any]]) -> str:
    """The claims as a markdown table (family, claim, source, metric, unit, n, effect [95% CI],
    test, p, MDE, power, verdict)."""
    lines = [
        "| family | claim | source paper | metric | unit | n | effect [95% CI] | test | p | MDE | power | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in claims:
        mde = "n/a" if r.get("mde") is None else f"{r['mde']:.3g}"
        cells = (r["family"], r["claim"], r["paper"], r["metric"], r["unit"], r["n"], fmt_effect(r), r["test"],
                 fmt_p(r.get("p_value")), mde, r["power"], f"**{r['verdict']}**")  # fmt: skip
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def headline_markdown(headline: Mapping[str, Any], limit: int = 40) -> str:
    items = list(headline.items())[:limit]
    lines = ["| metric | value |", "|---|---|"]
    for key, value in items:
        shown = f"{value:.4g}" if isinstance(value, float) else value
        lines.append(f"| `{_md_cell(key)}` | {_md_cell(shown)} |")
    if len(headline) > limit:
        lines.append(f"| … | {len(headline) - limit} more in metrics.json |")
    return "\n".join(lines)


def runset_filter(group: str, job_type: str) -> str:
    """A run filter in ``wandb_workspaces``' expression syntax."""
    return f"Group = '{group}' and JobType = '{job_type}'"


def report_spec(
    claims: Sequence[Mapping[str, Any]],
    stages: Sequence[StageReport],
    project: str = PROJECT,
) -> dict[str, Any]:
    """The report as plain data: ``{"title", "description", "project", "blocks": [...]}``.

    Block kinds: ``h1``/``h2``/``p`` (``text``), ``markdown`` (``text``) and ``panel_grid``
    (``runset``: ``{"name", "filters"}``; ``panels``: ``{"kind": "summary_table", "table"}`` or
    ``{"kind": "media", "keys", "title"}``).
    """
    counts = count_verdicts(claims)
    blocks: list[dict[str, Any]] = [
        {"kind": "h1", "text": "Claims"},
        {
            "kind": "p",
            "text": f"{sum(counts.values())} claims: "
            + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
            + f". Effect = method − baseline with its 95% CI. {RULE}",
        },
        {"kind": "markdown", "text": claims_markdown(claims) if claims else "_no claims yet_"},
        {
            "kind": "panel_grid",
            "runset": {"name": "front page", "filters": runset_filter("report", "report")},
            "panels": [{"kind": "summary_table", "table": "claims"}],
        },
    ]
    for st in stages:
        if st.kind != "family":
            continue
        blocks.append({"kind": "h1", "text": st.title})
        if st.status == "not run":
            blocks.append({"kind": "p", "text": f"{st.name}: not run."})
            continue
        headline = st.metrics.get("headline")
        if isinstance(headline, dict) and headline:
            blocks.append({"kind": "markdown", "text": headline_markdown(headline)})
        panels: list[dict[str, Any]] = [{"kind": "summary_table", "table": "claims"}]
        figures = st.figure_names
        if figures:
            panels.append({"kind": "media", "keys": [image_key(f) for f in figures], "title": f"{st.name} figures"})
        blocks.append(
            {
                "kind": "panel_grid",
                "runset": {"name": st.name, "filters": runset_filter(st.name, "summary")},
                "panels": panels,
            }
        )
    return {
        "title": TITLE,
        "description": "Gathered from the family summary runs and the front page (reports/index.html).",
        "project": project,
        "blocks": blocks,
    }


def to_wandb_report(spec: Mapping[str, Any], entity: str) -> Any:
    """Map :func:`report_spec` onto ``wandb_workspaces.reports.v2`` objects (not saved)."""
    import wandb_workspaces.reports.v2 as wr

    project = spec["project"]
    blocks = []
    for block in spec["blocks"]:
        kind = block["kind"]
        if kind == "h1":
            blocks.append(wr.H1(text=block["text"]))
        elif kind == "h2":
            blocks.append(wr.H2(text=block["text"]))
        elif kind == "p":
            blocks.append(wr.P(text=block["text"]))
        elif kind == "markdown":
            blocks.append(wr.MarkdownBlock(text=block["text"]))
        elif kind == "panel_grid":
            panels = []
            for panel in block["panels"]:
                if panel["kind"] == "summary_table":
                    panels.append(wr.WeavePanelSummaryTable(table_name=panel["table"]))
                elif panel["kind"] == "media":
                    panels.append(
                        wr.MediaBrowser(title=panel.get("title"), media_keys=list(panel["keys"]), num_columns=2)
                    )
                else:
                    raise ValueError(f"panel kind {panel['kind']!r} is not allowed: 'summary_table' or 'media'")
            runset = wr.Runset(
                entity=entity, project=project, name=block["runset"]["name"], filters=block["runset"]["filters"]
            )
            blocks.append(wr.PanelGrid(runsets=[runset], panels=panels))
        else:
            raise ValueError(f"block kind {kind!r} is not allowed: h1, h2, p, markdown, panel_grid")
    return wr.Report(
        project=project, entity=entity, title=spec["title"], description=spec["description"], blocks=blocks
    )


def main(argv: list[str] | None = None) -> int:
    from trustlab.core.config import load_params
    from trustlab.core.paths import reports_dir
    from trustlab.tracking.runs import resolve_mode

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())
    parser.add_argument("--entity", default=None, help="W&B entity (default: tracking.entity, then $WANDB_ENTITY)")
    parser.add_argument("--dry-run", action="store_true", help="print the report spec as JSON and save nothing")
    args = parser.parse_args(argv)

    stages = collect_stages(args.reports_dir)
    claims = gather_claims(stages, args.reports_dir)
    spec = report_spec(claims, stages)
    if args.dry_run:
        print(json.dumps(spec, indent=2, ensure_ascii=False))
        return 0
    tracking = load_params().get("tracking") or {}
    mode = resolve_mode(tracking.get("mode"))
    if mode != "online":
        print(
            f"W&B is {mode}: a W&B Report needs it online (tracking.mode: online or TRUSTLAB_WANDB_MODE=online, "
            "and `wandb login`); nothing saved. `--dry-run` prints what would be built."
        )
        return 0
    try:
        import wandb_workspaces.reports.v2  # noqa: F401
    except ImportError:
        print(
            "wandb-workspaces is not installed: pip install -c requirements.lock -e '.[wandb-report]'; nothing saved."
        )
        return 0
    entity = args.entity or tracking.get("entity") or os.environ.get("WANDB_ENTITY")
    if not entity:
        import wandb

        entity = wandb.Api(timeout=30).default_entity
    report = to_wandb_report(spec, entity)
    report.save()
    print(f"saved the W&B Report: {report.url}")
    missing = [s.name for s in stages if s.kind == "family" and s.status == "not run"]
    if missing:
        print(f"families not run (no panels): {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
