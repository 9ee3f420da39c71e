"""The results front page ``reports/index.html`` and the gathered claims table.

The final ``report`` stage reads what every stage of :data:`trustlab.stages.STAGES` left
under ``reports/<stage>/`` (``metrics.json``, ``timing.json``, ``index.html``,
``figures/*.png``) and writes

- ``reports/index.html``: links to every report, one claims table across the families
  (sortable, filterable by family and verdict, verdicts colour-coded), the headline numbers
  and a headline figure per family, provenance (git, machine and threads, ``dvc.lock``,
  params digest, data fingerprints, versions, stage wall times) and where to browse the
  runs in Weights & Biases;
- ``reports/claims.json`` and ``reports/claims.csv``: the claims rows, with the columns of
  :data:`trustlab.core.claims.COLUMNS`.

A stage with no ``reports/<stage>/`` directory is listed as *not run*. Anything else that is
wrong fails loudly with :class:`FrontPageError`, naming the file: a stage directory without
``metrics.json``, a ``metrics.json`` that is not a JSON object, a ``claims`` entry that is
not a list of rows, and rows that :func:`trustlab.core.claims.audit` rejects. The page is
rendered from ``templates/frontpage.html.j2`` and is self-contained (inline CSS and script,
images as ``data:`` URIs), so it renders offline.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trustlab.core import claims as claims_engine
from trustlab.core import io
from trustlab.core.claims import COLUMNS, RULE, VERDICTS, count_verdicts
from trustlab.reporting import robustness, templates
from trustlab.stages import STAGES, Stage

CLAIM_COLUMNS: tuple[str, ...] = COLUMNS
VERDICT_ORDER = {v: i for i, v in enumerate(VERDICTS)}
VERDICT_CLASS = {"supported": "v-supported", "not supported": "v-not", "inconclusive": "v-inconclusive",
                 "not evaluated": "v-none"}  # fmt: skip
SYNC_COMMAND = "wandb sync --yes"
# The claims table's columns: (header, how the sorting script compares it).
CLAIM_HEADERS = (("Family", "text"), ("Claim", "text"), ("Source paper", "text"), ("Metric", "text"),
                 ("Unit", "text"), ("n", "num"), ("Effect [95% CI]", "num"), ("Test", "text"), ("p", "num"),
                 ("MDE", "num"), ("Paper effect", "num"), ("Power", "text"), ("Verdict", "num"),
                 ("Base-model seed", "text"))  # fmt: skip


class FrontPageError(RuntimeError):
    """A stage's outputs are missing or malformed: the front page refuses to hide it."""


# -- collecting ---------------------------------------------------------------------------------


@dataclass
class StageReport:
    """What one stage left under ``reports/<name>/``."""

    name: str
    title: str
    kind: str
    status: str = "not run"  # ok | not run | no report
    metrics: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    has_html: bool = False
    figure: Path | None = None
    figure_names: list[str] = field(default_factory=list)  # stems of figures/*.png (W&B image keys)

    @property
    def href(self) -> str | None:
        return f"{self.name}/index.html" if self.has_html else None

    @property
    def run_info(self) -> dict[str, Any]:
        run = self.metrics.get("run")
        return run if isinstance(run, dict) else {}

    @property
    def wall_time_s(self) -> float | None:
        """The runner's wall time of the stage's notebook: ``timing.json`` ``runner_wall_s``, else
        the ``run.wall_time_s`` an older ``metrics.json`` carries."""
        for value in (self.timing.get("runner_wall_s"), self.run_info.get("wall_time_s")):
            if _finite_or_none(value) is not None:
                return float(value)
        return None

    @property
    def profile(self) -> str | None:
        value = self.run_info.get("profile")
        return str(value) if value is not None else None

    @property
    def claims(self) -> list[dict[str, Any]]:
        return self.metrics.get("claims") or []


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def pick_figure(stage_dir: Path, preferred: Sequence[str], metrics: Mapping[str, Any]) -> Path | None:
    """The stage's headline figure: ``metrics["headline_figure"]`` (a path relative to the
    stage directory), else the first existing name of ``preferred`` (the stage's
    ``preferred_figures``), else the first ``figures/*.png`` by name."""
    named = metrics.get("headline_figure")
    if isinstance(named, str) and (stage_dir / named).is_file():
        return stage_dir / named
    figures = stage_dir / "figures"
    for stem in preferred:
        if (figures / f"{stem}.png").is_file():
            return figures / f"{stem}.png"
    pngs = sorted(figures.glob("*.png")) if figures.is_dir() else []
    return pngs[0] if pngs else None


def _read_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FrontPageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FrontPageError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def collect_stage(reports_dir: Path, stage: Stage) -> StageReport:
    stage_dir = reports_dir / stage.name
    rep = StageReport(stage.name, stage.title, stage.kind, has_html=(stage_dir / "index.html").is_file())
    if not stage_dir.is_dir() or not any(stage_dir.iterdir()):
        return rep
    metrics_path = stage_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FrontPageError(f"{metrics_path} is missing: stage {stage.name} left outputs but no metrics")
    rep.metrics = _read_object(metrics_path)
    if not isinstance(rep.metrics.get("claims", []), list):
        raise FrontPageError(f"{metrics_path}: 'claims' must be a list of claim rows")
    if (stage_dir / "timing.json").is_file():
        rep.timing = _read_object(stage_dir / "timing.json")
    rep.status = "ok" if rep.has_html else "no report"
    rep.figure = pick_figure(stage_dir, stage.preferred_figures, rep.metrics)
    if (stage_dir / "figures").is_dir():
        rep.figure_names = sorted(p.stem for p in (stage_dir / "figures").glob("*.png"))
    return rep


def collect_stages(reports_dir: str | os.PathLike, stages: Sequence[Stage] = STAGES) -> list[StageReport]:
    reports_dir = Path(reports_dir)
    return [collect_stage(reports_dir, stage) for stage in stages]


def gather_claims(stages: Iterable[StageReport], reports_dir: str | os.PathLike = "reports") -> list[dict[str, Any]]:
    """Every stage's claims rows in page order, each with exactly :data:`CLAIM_COLUMNS`.

    Raises :class:`FrontPageError` naming the file, the row and the problem for any row the
    claims engine's :func:`~trustlab.core.claims.audit` rejects."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for st in stages:
        where = Path(reports_dir) / st.name / "metrics.json"
        for i, row in enumerate(st.claims):
            if not isinstance(row, dict):
                problems.append(f"{where}: claims[{i}] is not a claim row but {type(row).__name__}")
                continue
            label = f"claims[{i}]" if row.get("id") else f"claims[{i}] (no id; claim {row.get('claim')!r})"
            problems += [f"{where}: {label} {p.removeprefix('row 0: ')}" for p in claims_engine.audit([row])]
            rows.append({c: row.get(c) for c in COLUMNS})
    problems += [f"claims across the families: {p}" for p in claims_engine.audit(rows) if "duplicate id" in p]
    if problems:
        raise FrontPageError("claims rows fail the audit:\n  " + "\n  ".join(problems))
    return rows


def _csv_cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def write_claims(rows: Sequence[Mapping[str, Any]], reports_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``claims.json`` (a list of rows) and ``claims.csv`` (same columns; a range as JSON text)."""
    reports_dir = Path(reports_dir)
    json_path = io.write_json(reports_dir / "claims.json", list(rows))
    csv_rows = [{c: _csv_cell(r.get(c)) for c in COLUMNS} for r in rows]
    csv_path = io.write_csv(reports_dir / "claims.csv", csv_rows, fieldnames=COLUMNS)
    return json_path, csv_path


# -- provenance ---------------------------------------------------------------------------------


def dvc_lock_stages(lock_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Per stage of ``dvc.lock``: a digest of its whole lock entry (command, dependency and
    output hashes, params) and the md5 of each output, in file order."""
    import yaml

    from trustlab.core.config import digest

    path = Path(lock_path)
    if not path.is_file():
        return []
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = []
    for name, entry in (lock.get("stages") or {}).items():
        entry = entry or {}
        outs = [{"path": o.get("path", "?"), "md5": o.get("md5") or o.get("hash") or ""} for o in entry.get("outs") or []]
        out.append({"stage": name, "digest": digest(entry), "n_deps": len(entry.get("deps") or []), "outs": outs})
    return out


def params_digests(params: Mapping[str, Any]) -> dict[str, str]:
    """``{"all": digest of the merged params, <section>: digest of that section, ...}``."""
    from trustlab.core.config import digest

    out = {"all": digest(dict(params))}
    out.update({k: digest(v) for k, v in params.items() if isinstance(v, dict)})
    return out


def data_manifests(data_dir: str | os.PathLike, max_depth: int = 3) -> list[dict[str, Any]]:
    """Every ``manifest.json`` under ``data_dir`` (at most ``max_depth`` levels down): its
    path, generator and fingerprint (sha256 over the sorted (file, sha256) list)."""
    base = Path(data_dir)
    if not base.is_dir():
        return []
    found: list[Path] = []
    frontier = [base]
    for _ in range(max_depth + 1):
        nxt = []
        for d in frontier:
            if (d / "manifest.json").is_file():
                found.append(d / "manifest.json")
            nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
        frontier = nxt
    rows = []
    for path in sorted(found, key=lambda p: (len(p.parts), str(p))):
        where = str(path.parent.relative_to(base)) or "."
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            rows.append({"path": where, "generator": "", "fingerprint": "unreadable", "files": 0})
            continue
        gens = manifest.get("generator") or ", ".join(manifest.get("generators", {}) or [])
        rows.append({"path": where, "generator": str(gens), "fingerprint": str(manifest.get("fingerprint", "")),
                     "files": len(manifest.get("files") or {})})  # fmt: skip
    return rows


@dataclass
class WandbInfo:
    """Where to browse the runs: the project URL when online, the sync command when offline."""

    mode: str
    project_url: str | None = None
    entity: str | None = None
    offline_runs: int = 0
    sync_command: str = SYNC_COMMAND

    @property
    def target_url(self) -> str | None:
        if self.project_url:
            return self.project_url
        return f"https://wandb.ai/{self.entity}/trustlab" if self.entity else None


def count_offline_runs(wandb_root: str | os.PathLike) -> int:
    return len(list(Path(wandb_root, "wandb").glob("offline-run-*")))


@dataclass
class Provenance:
    git_commit: str
    git_dirty: bool | None
    profile: str
    params_digests: dict[str, str]
    dvc_lock: list[dict[str, Any]]
    data_manifests: list[dict[str, Any]]
    versions: dict[str, str]
    machine: dict[str, Any]
    generated_at: str


def collect_provenance(params: Mapping[str, Any], lock_path: str | os.PathLike, data_dir: str | os.PathLike) -> Provenance:
    from trustlab.core.provenance import git_commit, git_dirty, machine, package_versions

    return Provenance(
        git_commit=git_commit(),
        git_dirty=git_dirty(),
        profile=str(params.get("profile", "")),
        params_digests=params_digests(params),
        dvc_lock=dvc_lock_stages(lock_path),
        data_manifests=data_manifests(data_dir),
        versions=package_versions(),
        machine=machine(),
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


# -- formatting ---------------------------------------------------------------------------------


def fmt_number(x: float | None, digits: int = 3) -> str:
    """``digits`` significant digits; ``n/a`` for a missing value; a true minus sign."""
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    return text.replace("-", "\u2212") if text.startswith("-") or "e-" in text else text


def fmt_effect(row: Mapping[str, Any]) -> str:
    eff = fmt_number(_finite_or_none(row.get("effect")))
    lo, hi = _finite_or_none(row.get("ci_low")), _finite_or_none(row.get("ci_high"))
    if lo is None or hi is None:
        return f"{eff} [no CI]"
    return f"{eff} [{fmt_number(lo)}, {fmt_number(hi)}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _sort_key(x: float | None) -> str:
    return "" if x is None else repr(x)


def robustness_text(row: Mapping[str, Any], agreement: robustness.Agreement | None) -> tuple[str, str]:
    """(label, note) of a claim's robustness to the base model's seed."""
    if agreement is None or not agreement.comparable:
        return "not replicated", ""
    status = agreement.status.get(row["id"], "not replicated")
    other = agreement.replicate_verdict.get(row["id"])
    return status, (f"seed {agreement.seed}: {other}" if other else "")


def claim_view(row: Mapping[str, Any], agreement: robustness.Agreement | None = None) -> dict[str, Any]:
    """One claims row with the display text and sort keys the template shows."""
    effect, p, mde = (_finite_or_none(row.get(k)) for k in ("effect", "p_value", "mde"))
    paper = _finite_or_none(row.get("paper_effect"))
    mde_text = "\u221e (cannot reach p < 0.05)" if row.get("mde") is None and row.get("test") != "none" else fmt_number(mde)
    return {
        **{c: ("" if row.get(c) is None else row.get(c)) for c in COLUMNS},
        "expected_arrow": {"increase": "\u2191 expected", "decrease": "\u2193 expected"}.get(row.get("expected"), ""),
        "effect_text": fmt_effect(row), "sort_effect": _sort_key(effect),
        "p_text": fmt_p(p), "sort_p": _sort_key(p),
        "mde_text": mde_text if row.get("verdict") != "not evaluated" else "n/a", "sort_mde": _sort_key(mde),
        "paper_effect_text": fmt_number(paper) if paper is not None else "\u2014", "sort_paper_effect": _sort_key(paper),
        "robustness": robustness_text(row, agreement)[0], "robustness_note": robustness_text(row, agreement)[1],
    }  # fmt: skip


def claims_summary(st: StageReport) -> str:
    """The reports table's claims cell: supported of all, by unique claim id."""
    if not st.claims:
        return "none" if st.kind == "family" and st.status != "not run" else ""
    counts = count_verdicts(st.claims)
    return f"{counts['supported']} of {sum(counts.values())} supported"


def headline_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    headline = metrics.get("headline")
    if not isinstance(headline, dict):
        return []
    rows = []
    for key, value in headline.items():
        x = _finite_or_none(value)
        rows.append((str(key), fmt_number(x, 4) if x is not None else str(value)))
    return rows


def pretraining_timing(reports_dir: Path) -> dict[str, Any]:
    """The base model's ``reports/base_model/timing.json`` (empty when it has none)."""
    path = reports_dir / "base_model" / "timing.json"
    return _read_object(path) if path.is_file() else {}


def pretraining_seconds(reports_dir: Path) -> float | None:
    """The base model's pretraining time: ``reports/base_model/timing.json`` ``stage_seconds``."""
    return _finite_or_none(pretraining_timing(reports_dir).get("stage_seconds"))


def wall_times(
    stages: Sequence[StageReport], pretraining: float | None = None, pretraining_cores: float | None = None
) -> list[tuple[str, str | None, float | None, float | None]]:
    """(row label, profile, seconds, CPU cores used on average): each run stage's notebook, and
    before the base model's report its pretraining (``pretraining``, else the ``stage_seconds``
    headline number an older report carries)."""
    entries = []
    for s in stages:
        if s.status == "not run":
            continue
        if s.name == "01_base_model":
            pre = pretraining
            if pre is None:
                pre = _finite_or_none((s.metrics.get("headline") or {}).get("stage_seconds"))
            if pre is not None:
                entries.append(("base_model (pretraining)", s.profile, pre, pretraining_cores))
        entries.append((s.name, s.profile, s.wall_time_s, _finite_or_none(s.timing.get("cpu_cores"))))
    return entries


def machine_text(machine: Mapping[str, Any]) -> str:
    cores = f"{machine.get('cpu_count')} cores"
    if machine.get("cpu_affinity") not in (None, machine.get("cpu_count")):
        cores += f" ({machine['cpu_affinity']} usable by this process)"
    return f"{machine.get('cpu_model') or machine.get('processor') or 'unknown CPU'}, {cores}"


def threads_text(machine: Mapping[str, Any]) -> str:
    threads = machine.get("threads") or {}
    return ", ".join(f"{k} = {'unset' if v is None else v}" for k, v in threads.items()) or "unknown"


def notices(stages: Sequence[StageReport], prov: Provenance) -> list[str]:
    """What the reader should know before comparing numbers (not errors: those fail the stage)."""
    return [
        f"{s.name} was run with profile {s.profile!r}, this page with {prov.profile!r}: its numbers are not comparable"
        for s in stages
        if s.profile and prov.profile and s.profile != prov.profile
    ]


def render_wandb_section(info: WandbInfo) -> str:
    return templates.render("wandb.html.j2", wandb=info)


def render_page(stages: Sequence[StageReport], claims: Sequence[Mapping[str, Any]], prov: Provenance,
                wandb: WandbInfo, pretraining: float | None = None,
                pretraining_cores: float | None = None,
                agreement: robustness.Agreement | None = None) -> str:  # fmt: skip
    counts = count_verdicts(claims)
    families = [s for s in stages if s.kind == "family"]
    run = [s.name for s in families if s.status != "not run"]
    n_ids = sum(counts.values())
    intro = (f"{n_ids} claims from {len(run)} of {len(families)} families: "
             + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
             + ". The effect is method \u2212 baseline with its 95% CI; click a column header to sort, "
             "pick a family or a verdict to filter.")  # fmt: skip
    wall = wall_times(stages, pretraining, pretraining_cores)
    dirty = {True: "dirty (uncommitted changes to tracked files)", False: "clean", None: "unknown"}[prov.git_dirty]
    views = []
    for s in stages:
        view = {k: getattr(s, k) for k in ("name", "title", "kind", "status", "href", "profile", "figure")}
        views.append({**view, "claims_summary": claims_summary(s), "headline_rows": headline_rows(s.metrics)})
    return templates.render(
        "frontpage.html.j2",
        stages=views,
        claims=[claim_view(r, agreement) for r in claims],
        claims_intro=intro,
        robustness_text=agreement.text() if agreement else ("No replicate with another base_model.seed is stored: "
                                                            "run `make replicate` to mark fragile verdicts."),
        rule=RULE,
        verdicts=VERDICTS,
        claim_headers=CLAIM_HEADERS,
        claim_families=list(dict.fromkeys(r["family"] for r in claims)),
        families_not_run=[s.name for s in families if s.status == "not run"],
        verdict_class=lambda v: VERDICT_CLASS.get(v, "v-none"),
        verdict_rank=lambda v: VERDICT_ORDER.get(v, len(VERDICTS)),
        notices=notices(stages, prov),
        prov=prov,
        dirty_text=dirty,
        machine_text=machine_text(prov.machine),
        threads_text=threads_text(prov.machine),
        section_digests=[(k, v) for k, v in prov.params_digests.items() if k != "all"],
        wall_times=wall,
        wall_total=sum(t or 0.0 for _, _, t, _ in wall),
        fmt_seconds=fmt_seconds,
        wandb=wandb,
    )


@dataclass
class FrontPage:
    html_path: Path
    claims_json: Path
    claims_csv: Path
    stages: list[StageReport]
    claims: list[dict[str, Any]]


def build_front_page(
    reports_dir: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    lock_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    wandb: WandbInfo,
    stages: Sequence[Stage] = STAGES,
) -> FrontPage:
    """Gather every stage's outputs under ``reports_dir`` and write ``index.html``,
    ``claims.json`` and ``claims.csv`` there; :class:`FrontPageError` when an output is
    missing or malformed (nothing is written then)."""
    reports_dir = Path(reports_dir)
    collected = collect_stages(reports_dir, stages)
    claims = gather_claims(collected, reports_dir)
    prov = collect_provenance(params, lock_path, data_dir)
    try:
        replicates = robustness.load_replicates(reports_dir)
    except ValueError as exc:
        raise FrontPageError(str(exc)) from None
    agreement = robustness.compare(claims, replicates[0], params) if replicates else None
    html = render_page(collected, claims, prov, wandb, pretraining_seconds(reports_dir),
                       _finite_or_none(pretraining_timing(reports_dir).get("cpu_cores")), agreement)
    claims_json, claims_csv = write_claims(claims, reports_dir)
    page = io.atomic_write_text(reports_dir / "index.html", html)
    return FrontPage(page, claims_json, claims_csv, collected, claims)


def claims_as_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The claims table as aligned plain text (for notes and the terminal)."""
    header = ["family", "claim", "unit", "n", "effect [95% CI]", "p", "verdict"]
    table = [header] + [
        [r["family"], r["claim"], r["unit"], str(r["n"]), fmt_effect(r).replace("\u2212", "-"),
         fmt_p(_finite_or_none(r["p_value"])), r["verdict"]]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)
