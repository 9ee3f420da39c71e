"""Render the results front page: ``reports/index.html``, ``reports/claims.json``, ``reports/claims.csv``.

    python pipelines/render_front_page.py [--reports-dir reports] [--data-dir data] [--profile smoke]

The final ``report`` stage of ``dvc.yaml``. It gathers every stage's ``metrics.json``,
report and figures (a stage that has not run is listed as *not run*) and fails, naming the
file, on a missing or malformed ``metrics.json`` or a claims row that breaks the claims rule
(exit status 1). Then it logs the page
to W&B (group ``report``, job type ``report``) as ``wandb.Html`` and as a ``report``
artifact, with the claims as a ``wandb.Table``. Tracking follows ``tracking.mode`` /
``$TRUSTLAB_WANDB_MODE`` like every stage; with W&B offline the page shows the sync command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from trustlab.core.claims import COLUMNS, VERDICTS, count_verdicts  # noqa: E402
from trustlab.core.config import ConfigError, load_params  # noqa: E402
from trustlab.reporting import frontpage  # noqa: E402
from trustlab.stages import validate_params  # noqa: E402
from trustlab.tracking import resolve_mode, start_run_object, wandb_dir  # noqa: E402


def _project_url(run) -> str | None:
    """The W&B project URL of a live online run (``None`` offline or when W&B did not start)."""
    live = getattr(run, "_run", None)
    if live is None or run.mode != "online":
        return None
    for attr in ("project_url", "get_project_url"):
        try:
            value = getattr(live, attr, None)
            value = value() if callable(value) else value
        except Exception:  # noqa: BLE001 - a URL is nice to have, never worth failing for
            value = None
        if value:
            return str(value)
    return None


def render(
    reports_dir: Path,
    data_dir: Path,
    lock_path: Path,
    profile: str | None = None,
    params_file: Path | None = None,
) -> frontpage.FrontPage:
    params = load_params(params_file, profile)
    validate_params(params, only=["tracking"])
    tracking = params.get("tracking") or {}
    try:
        mode = resolve_mode(tracking.get("mode"))
    except ValueError as exc:  # a bad $TRUSTLAB_WANDB_MODE: the same one-line error as bad params
        raise ConfigError(str(exc)) from None
    run = start_run_object(
        family="report",
        job_type="report",
        name="front-page",
        config={"profile": params["profile"], "params_digest": frontpage.params_digests(params)["all"]},
        mode=mode,
    )
    try:
        info = frontpage.WandbInfo(
            mode=mode,
            project_url=_project_url(run),
            entity=tracking.get("entity"),
            offline_runs=frontpage.count_offline_runs(wandb_dir()),
        )
        page = frontpage.build_front_page(reports_dir, params, lock_path=lock_path, data_dir=data_dir, wandb=info)
        if page.claims:
            import pandas as pd

            table = pd.DataFrame(page.claims, columns=list(COLUMNS))
            table["range"] = table["range"].map(str)  # a W&B table cell holds a scalar
            run.log_table("claims", table)
        counts = count_verdicts(page.claims)
        run.summary(
            {
                "claims_total": sum(counts.values()),
                **{f"claims_{v.replace(' ', '_')}": counts[v] for v in VERDICTS},
                "stages_run": sum(s.status != "not run" for s in page.stages),
            }
        )
        run.log_html("front-page", page.html_path)
    finally:
        run.finish()
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports-dir", type=Path, default=ROOT / "reports", help="default: reports/")
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "data", help="where the data manifests are (default: data/)"
    )
    parser.add_argument("--dvc-lock", type=Path, default=ROOT / "dvc.lock")
    parser.add_argument("--profile", default=None, help="params profile; default: params.yaml's")
    parser.add_argument("--params-file", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true", help="do not print the claims table")
    args = parser.parse_args(argv)
    try:
        page = render(
            args.reports_dir.resolve(), args.data_dir.resolve(), args.dvc_lock, args.profile, args.params_file
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except frontpage.FrontPageError as exc:
        print(f"error: the front page was not written: {exc}", file=sys.stderr)
        return 1
    not_run = [s.name for s in page.stages if s.status == "not run"]
    print(
        f"front page: {page.html_path} ({len(page.claims)} claims"
        + (f"; not run: {', '.join(not_run)}" if not_run else "")
        + ")"
    )
    if not args.quiet and page.claims:
        print(frontpage.claims_as_text(page.claims))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
