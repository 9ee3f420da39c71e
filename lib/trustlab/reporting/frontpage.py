"""The results front page ``reports/index.html`` and the gathered claims table.

The final ``report`` stage reads what every other stage left under ``reports/<stage>/``
(``metrics.json``, ``index.html``, ``figures/*.png``) and writes

- ``reports/index.html``: links to every report, one sortable claims table across the
  families (verdicts colour-coded), a headline figure per family (embedded as base64),
  provenance (git, ``dvc.lock``, params digest, data fingerprints, versions, machine, wall
  times) and where to browse the runs in Weights & Biases;
- ``reports/claims.json`` and ``reports/claims.csv``: the same claims rows.

A stage whose outputs are missing is listed as *not run*; a malformed ``metrics.json`` is
reported on the page, never a crash. The page is self-contained: inline CSS, an inline
sorting script, images as ``data:`` URIs and no remote asset, so it renders offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trustlab.core import io
from trustlab.core.stats import VERDICTS, Claim

# (stage, title, kind): the order of the page. "family" stages contribute claims and a
# headline figure; "data" stages are linked and timed.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("00_data", "Generated data", "data"),
    ("01_base_model", "Base model", "data"),
    ("calibration", "Calibration losses and post-hoc calibrators", "family"),
    ("noisefit", "Hallucination noise fine-tuning (NoiseFiT, NEFTune, R-Drop)", "family"),
    ("entropy_attention", "Entropy-guided attention", "family"),
    ("error_detection", "Error detection", "family"),
)
FAMILIES = tuple(name for name, _, kind in STAGES if kind == "family")

# A family may name its headline figure in metrics.json ("headline_figure": "figures/x.png");
# otherwise the first of these that exists, otherwise the first figure by name.
PREFERRED_FIGURES: dict[str, tuple[str, ...]] = {
    "calibration": ("reliability_ce", "ece_vs_severity"),
    "noisefit": ("hallucination_by_split", "snr_layers"),
    "entropy_attention": ("entropy_heatmaps_normalised", "perplexity"),
    "error_detection": ("detector_auroc", "rejection_curves"),
}

CLAIM_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Claim))
VERDICT_ORDER = {v: i for i, v in enumerate(VERDICTS)}  # supported, not supported, inconclusive
SYNC_COMMAND = "wandb sync --yes"


# -- collecting ---------------------------------------------------------------------------------


@dataclass
class StageReport:
    """What one stage left under ``reports/<name>/``."""

    name: str
    title: str
    kind: str
    status: str = "not run"  # ok | not run | no report | no metrics | bad metrics
    metrics: dict[str, Any] = field(default_factory=dict)
    has_html: bool = False
    figure: Path | None = None
    figure_names: list[str] = field(default_factory=list)  # stems of figures/*.png (W&B image keys)
    problem: str = ""

    @property
    def href(self) -> str | None:
        return f"{self.name}/index.html" if self.has_html else None

    @property
    def run_info(self) -> dict[str, Any]:
        run = self.metrics.get("run")
        return run if isinstance(run, dict) else {}

    @property
    def wall_time_s(self) -> float | None:
        value = self.run_info.get("wall_time_s")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    @property
    def profile(self) -> str | None:
        value = self.run_info.get("profile")
        return str(value) if value is not None else None


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def pick_figure(stage_dir: Path, name: str, metrics: Mapping[str, Any]) -> Path | None:
    """The stage's headline figure: ``metrics["headline_figure"]`` (a path relative to the
    stage directory), else the first existing name of :data:`PREFERRED_FIGURES`, else the first
    ``figures/*.png`` by name."""
    named = metrics.get("headline_figure")
    if isinstance(named, str) and (stage_dir / named).is_file():
        return stage_dir / named
    figures = stage_dir / "figures"
    for stem in PREFERRED_FIGURES.get(name, ()):
        if (figures / f"{stem}.png").is_file():
            return figures / f"{stem}.png"
    pngs = sorted(figures.glob("*.png")) if figures.is_dir() else []
    return pngs[0] if pngs else None


def collect_stage(reports_dir: Path, name: str, title: str, kind: str) -> StageReport:
    stage_dir = reports_dir / name
    rep = StageReport(name, title, kind, has_html=(stage_dir / "index.html").is_file())
    metrics_path = stage_dir / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            if not isinstance(metrics, dict):
                raise ValueError(f"expected a JSON object, got {type(metrics).__name__}")
        except ValueError as exc:
            rep.status, rep.problem = "bad metrics", f"{metrics_path.name} is unreadable: {exc}"
            return rep
        rep.metrics = metrics
        rep.status = "ok" if rep.has_html else "no report"
    elif rep.has_html:
        rep.status = "no metrics"
    if rep.status != "not run":
        rep.figure = pick_figure(stage_dir, name, rep.metrics)
        if (stage_dir / "figures").is_dir():
            rep.figure_names = sorted(p.stem for p in (stage_dir / "figures").glob("*.png"))
    return rep


def collect_stages(
    reports_dir: str | os.PathLike, stages: Sequence[tuple[str, str, str]] = STAGES
) -> list[StageReport]:
    reports_dir = Path(reports_dir)
    return [collect_stage(reports_dir, *stage) for stage in stages]


def normalise_claim(row: Mapping[str, Any], family: str) -> dict[str, Any]:
    """One claims row with exactly :data:`CLAIM_COLUMNS`: missing text becomes ``""``,
    non-finite numbers ``None`` (a single seed has no CI); the family defaults to the stage."""
    out: dict[str, Any] = {}
    for col in CLAIM_COLUMNS:
        value = row.get(col)
        if col in ("effect", "ci_low", "ci_high"):
            out[col] = _finite_or_none(value)
        elif col == "n_seeds":
            n = _finite_or_none(value)
            out[col] = int(n) if n is not None else None
        else:
            out[col] = "" if value is None else str(value)
    out["family"] = out["family"] or family
    return out


def gather_claims(stages: Iterable[StageReport]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every stage's claims rows in page order, and a list of problems found on the way."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for st in stages:
        claims = st.metrics.get("claims", [])
        if not isinstance(claims, list):
            problems.append(f"{st.name}: metrics.json 'claims' is not a list")
            continue
        for i, row in enumerate(claims):
            if not isinstance(row, dict) or not row.get("claim"):
                problems.append(f"{st.name}: claims[{i}] is not a claim row (needs at least 'claim')")
                continue
            rows.append(normalise_claim(row, st.name))
    return rows, problems


def write_claims(rows: Sequence[Mapping[str, Any]], reports_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``claims.json`` (a list of rows) and ``claims.csv`` (same columns), written atomically."""
    reports_dir = Path(reports_dir)
    json_path = io.write_json(reports_dir / "claims.json", list(rows))
    csv_path = io.write_csv(reports_dir / "claims.csv", list(rows), fieldnames=CLAIM_COLUMNS)
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
        outs = [
            {"path": o.get("path", "?"), "md5": o.get("md5") or o.get("hash") or ""} for o in entry.get("outs") or []
        ]
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
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            rows.append(
                {"path": str(path.parent.relative_to(base)), "generator": "", "fingerprint": "unreadable", "files": 0}
            )
            continue
        gens = manifest.get("generator") or ", ".join(manifest.get("generators", {}) or [])
        rows.append(
            {
                "path": str(path.parent.relative_to(base)) or ".",
                "generator": str(gens),
                "fingerprint": str(manifest.get("fingerprint", "")),
                "files": len(manifest.get("files") or {}),
            }
        )
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


def collect_provenance(
    params: Mapping[str, Any],
    lock_path: str | os.PathLike,
    data_dir: str | os.PathLike,
) -> Provenance:
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


# -- rendering ----------------------------------------------------------------------------------


def fmt_number(x: float | None, digits: int = 3) -> str:
    """``digits`` significant digits; ``n/a`` for a missing value; a true minus sign."""
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    return text.replace("-", "\u2212") if text.startswith("-") or "e-" in text else text


def fmt_effect(row: Mapping[str, Any]) -> str:
    eff = fmt_number(row.get("effect"))
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if lo is None or hi is None:
        return f"{eff} [no CI]"
    return f"{eff} [{fmt_number(lo)}, {fmt_number(hi)}]"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _verdict_class(verdict: str) -> str:
    return {"supported": "v-supported", "not supported": "v-not", "inconclusive": "v-inconclusive"}.get(
        verdict, "v-unknown"
    )


def _img_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_CSS = """
:root { --fg:#1d2329; --muted:#5d6b78; --line:#d8dee4; --bg:#ffffff; --head:#f3f5f7;
        --ok:#d7f0dd; --ok-fg:#0f5323; --bad:#f9d9d9; --bad-fg:#8a1515; --mid:#fdf0c8; --mid-fg:#6b4e00; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); margin: 0 auto; max-width: 1200px; padding: 24px; }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { margin-top: 2em; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { margin: 1.2em 0 .4em; }
.meta, .muted { color: var(--muted); } nav a { margin-right: 14px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--head); }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th::after { content: " \\2195"; color: #9aa5b1; }
table.sortable th[aria-sort="ascending"]::after { content: " \\2191"; color: var(--fg); }
table.sortable th[aria-sort="descending"]::after { content: " \\2193"; color: var(--fg); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { font-weight: 600; white-space: nowrap; border-radius: 3px; }
.v-supported { background: var(--ok); color: var(--ok-fg); }
.v-not { background: var(--bad); color: var(--bad-fg); }
.v-inconclusive { background: var(--mid); color: var(--mid-fg); }
.v-unknown { background: #e8eaed; }
.status-ok { color: var(--ok-fg); font-weight: 600; } .status-missing { color: var(--bad-fg); font-weight: 600; }
.note { display: block; color: var(--muted); font-size: 12px; }
.legend span { padding: 2px 8px; margin-right: 6px; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); padding: 10px; background: #fff; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.not-run { padding: 40px 10px; text-align: center; color: var(--muted); background: var(--head); }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
pre { background: var(--head); padding: 8px 10px; overflow-x: auto; }
.problems { background: var(--bad); padding: 8px 12px; }
details summary { cursor: pointer; color: var(--muted); }
"""

# Sorting without a library: click a header to sort by it, again to reverse. A cell's
# data-sort (numbers, verdict rank) wins over its text; empty numbers go last.
_SORT_JS = """
(function () {
  function key(cell, numeric) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    if (!numeric) return raw.toLowerCase();
    var x = parseFloat(raw);
    return isNaN(x) ? null : x;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.setAttribute("tabindex", "0");
      function sort() {
        var numeric = th.getAttribute("data-type") === "num";
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
          if (x === y) return 0;
          if (x === null) return 1;
          if (y === null) return -1;
          return (x < y ? -1 : 1) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") sort(); });
    });
  });
})();
"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", table_id: str = "") -> str:
    """A plain table; cells are pre-rendered HTML (escape before)."""
    attrs = (f' id="{table_id}"' if table_id else "") + (f' class="{cls}"' if cls else "")
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status_html(st: StageReport) -> str:
    cls = "status-ok" if st.status == "ok" else "status-missing"
    return f'<span class="{cls}">{_e(st.status)}</span>'


def render_reports_section(stages: Sequence[StageReport]) -> str:
    rows = []
    for st in stages:
        link = f'<a href="{_e(st.href)}">{_e(st.title)}</a>' if st.href else _e(st.title)
        claims = st.metrics.get("claims") if isinstance(st.metrics.get("claims"), list) else []
        n_sup = sum(1 for c in claims if isinstance(c, dict) and c.get("verdict") == "supported")
        claims_txt = (
            f"{n_sup} of {len(claims)} supported"
            if claims
            else ("none" if st.kind == "family" and st.status == "ok" else "")
        )
        rows.append([link, f"<code>{_e(st.name)}</code>", _status_html(st), _e(st.profile or ""), claims_txt])
    return _table(["Report", "Stage", "Status", "Profile", "Claims"], rows, table_id="reports-table")


def render_claims_section(rows: Sequence[Mapping[str, Any]], stages: Sequence[StageReport]) -> str:
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    families_run = [s.name for s in stages if s.kind == "family" and s.status != "not run"]
    missing = [s.name for s in stages if s.kind == "family" and s.status == "not run"]
    intro = (
        f"<p>{len(rows)} claims from {len(families_run)} of {len(FAMILIES)} families: "
        + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
        + ". The effect is method \u2212 baseline (paired by seed) with its 95% CI; "
        "<em>supported</em> / <em>not supported</em>: the CI excludes 0 in / against the expected direction, "
        "<em>inconclusive</em> otherwise. Click a column header to sort.</p>"
    )
    if missing:
        intro += f'<p class="muted">Not run (no claims yet): {", ".join(_e(m) for m in missing)}.</p>'
    legend = (
        '<p class="legend">'
        + "".join(f'<span class="verdict {_verdict_class(v)}">{_e(v)}</span>' for v in VERDICTS)
        + "</p>"
    )
    head = (
        '<tr><th data-type="text">Family</th><th data-type="text">Claim</th><th data-type="text">Source paper</th>'
        '<th data-type="text">Metric</th><th data-type="num">Effect [95% CI]</th><th data-type="num">Seeds</th>'
        '<th data-type="num">Verdict</th></tr>'
    )
    body = []
    for r in rows:
        arrow = {"increase": "\u2191 expected", "decrease": "\u2193 expected"}.get(r["expected"], "")
        note = f'<span class="note">{_e(r["note"])}</span>' if r["note"] else ""
        eff_sort = "" if r["effect"] is None else repr(r["effect"])
        seeds = "" if r["n_seeds"] is None else str(r["n_seeds"])
        body.append(
            "<tr>"
            f"<td>{_e(r['family'])}</td>"
            f"<td>{_e(r['claim'])}{note}</td>"
            f"<td>{_e(r['paper'])}</td>"
            f'<td><code>{_e(r["metric"])}</code><span class="note">{arrow}</span></td>'
            f'<td class="num" data-sort="{_e(eff_sort)}">{_e(fmt_effect(r))}</td>'
            f'<td class="num" data-sort="{_e(seeds)}">{_e(seeds or "n/a")}</td>'
            f'<td class="verdict {_verdict_class(r["verdict"])}" data-sort="{VERDICT_ORDER.get(r["verdict"], 9)}">'
            f"{_e(r['verdict'] or 'unknown')}</td>"
            "</tr>"
        )
    if not body:
        body.append('<tr><td colspan="7" class="muted">no claims: no family has been run yet</td></tr>')
    table = f'<table id="claims-table" class="sortable"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
    return intro + legend + table


def render_headline_section(stages: Sequence[StageReport]) -> str:
    """Each stage's ``metrics.json`` ``headline`` (what ``dvc metrics show`` lists), folded."""
    parts = []
    for st in stages:
        headline = st.metrics.get("headline")
        if not isinstance(headline, dict) or not headline:
            continue
        rows = []
        for key, value in headline.items():
            x = _finite_or_none(value)
            shown = fmt_number(x, 4) if x is not None and not isinstance(value, bool) else str(value)
            rows.append([f"<code>{_e(key)}</code>", f'<span class="num">{_e(shown)}</span>'])
        parts.append(
            f'<details id="headline-{_e(st.name)}"><summary>{_e(st.title)} '
            f"(<code>{_e(st.name)}</code>, {len(rows)} numbers)</summary>"
            + _table(["metric", "value"], rows)
            + "</details>"
        )
    return "".join(parts) or '<p class="muted">no headline numbers yet</p>'


def render_figures_section(stages: Sequence[StageReport]) -> str:
    items = []
    for st in stages:
        if st.kind != "family":
            continue
        link = f' \u2014 <a href="{_e(st.href)}">full report</a>' if st.href else ""
        if st.figure is not None:
            body = f'<img src="{_img_data_uri(st.figure)}" alt="{_e(st.name)}: {_e(st.figure.stem)}">'
            caption = f"<strong>{_e(st.title)}</strong>: <code>{_e(st.figure.name)}</code>{link}"
        else:
            why = "not run" if st.status == "not run" else "no figure"
            body = f'<div class="not-run">{_e(why)}</div>'
            caption = f"<strong>{_e(st.title)}</strong>{link}"
        items.append(f'<figure id="figure-{_e(st.name)}">{body}<figcaption>{caption}</figcaption></figure>')
    return f'<div class="figures">{"".join(items)}</div>'


def render_wandb_section(info: WandbInfo) -> str:
    if info.mode == "online" and info.target_url:
        return (
            f"<p>W&amp;B is <strong>online</strong>: browse the runs (grouped by family) in the project "
            f'<a href="{_e(info.target_url)}">{_e(info.target_url)}</a>.</p>'
        )
    if info.mode == "disabled":
        return (
            "<p>W&amp;B was <strong>disabled</strong> for this run (<code>tracking.mode: disabled</code> or "
            "<code>TRUSTLAB_WANDB_MODE=disabled</code>); the numbers above come from each stage's "
            "<code>metrics.json</code>.</p>"
        )
    target = f' into <a href="{_e(info.target_url)}">{_e(info.target_url)}</a>' if info.target_url else ""
    state = "online, but the run could not reach W&amp;B" if info.mode == "online" else "offline"
    return (
        f"<p>W&amp;B is <strong>{state}</strong>: {info.offline_runs} offline run(s) are under <code>wandb/</code>. "
        f"Upload them{target} from the repository root with</p>"
        f'<pre id="wandb-sync">{_e(info.sync_command)}</pre>'
        "<p>(or <code>make wandb-sync</code>; log in first with <code>wandb login</code>). Runs are grouped by "
        "family (<code>group</code>) and stage (<code>job_type</code>); each family has a <code>summary</code> "
        "run with the claims and main tables, the figures and the rendered report.</p>"
    )


def render_provenance_section(prov: Provenance, stages: Sequence[StageReport]) -> str:
    dirty = {True: "dirty (uncommitted changes to tracked files)", False: "clean", None: "unknown"}[prov.git_dirty]
    parts = [
        "<h3>Code</h3>",
        _table(
            ["what", "value"],
            [
                ["git commit", f"<code>{_e(prov.git_commit)}</code>"],
                ["working tree", _e(dirty)],
                ["params profile", f"<code>{_e(prov.profile)}</code>"],
                [
                    "params digest (merged params.yaml + profile)",
                    f"<code>{_e(prov.params_digests.get('all', ''))}</code>",
                ],
            ],
            table_id="code-table",
        ),
        "<details><summary>params digest per section</summary>",
        _table(
            ["section", "digest"],
            [[f"<code>{_e(k)}</code>", f"<code>{_e(v)}</code>"] for k, v in prov.params_digests.items() if k != "all"],
        ),
        "</details>",
        "<h3>Stage wall times</h3>",
    ]
    timed = [s for s in stages if s.status != "not run"]
    # (row label, profile, seconds): each report's notebook, and the base model's pretraining,
    # which its report records (the data stage takes well under a second and records nothing)
    entries = []
    for s in timed:
        if s.name == "01_base_model":
            headline = s.metrics.get("headline") or {}
            pre = _finite_or_none(headline.get("stage_seconds"))
            if pre is not None:
                entries.append(("base_model (pretraining)", s.profile, pre))
        entries.append((s.name, s.profile, s.wall_time_s))
    total = sum(t or 0.0 for _, _, t in entries)
    rows = [
        [
            f"<code>{_e(name)}</code>",
            _e(profile or ""),
            f'<span data-sort="{t}">{_e(fmt_seconds(t))}</span>',
        ]
        for name, profile, t in entries
    ]
    rows.append(["<strong>total</strong>", "", f"<strong>{_e(fmt_seconds(total))}</strong>"])
    parts.append(_table(["stage", "profile", "wall time"], rows, table_id="wall-times-table"))
    parts.append("<h3>dvc.lock</h3>")
    if prov.dvc_lock:
        lock_rows = []
        for s in prov.dvc_lock:
            outs = (
                "<br>".join(f"<code>{_e(o['path'])}</code> <code>{_e(o['md5'])}</code>" for o in s["outs"]) or "\u2014"
            )
            lock_rows.append(
                [f"<code>{_e(s['stage'])}</code>", f"<code>{_e(s['digest'])}</code>", str(s["n_deps"]), outs]
            )
        parts.append(
            _table(["stage", "lock entry digest", "deps", "outputs (md5)"], lock_rows, table_id="dvc-lock-table")
        )
    else:
        parts.append('<p class="muted">no dvc.lock (the pipeline has not been run with <code>dvc repro</code>)</p>')
    parts.append("<h3>Data manifests</h3>")
    if prov.data_manifests:
        parts.append(
            _table(
                ["directory (under data/)", "generator", "files", "fingerprint (sha256)"],
                [
                    [
                        f"<code>{_e(m['path'])}</code>",
                        _e(m["generator"]),
                        str(m["files"]),
                        f"<code>{_e(m['fingerprint'])}</code>",
                    ]
                    for m in prov.data_manifests
                ],
                table_id="manifests-table",
            )
        )
    else:
        parts.append('<p class="muted">no data manifests found</p>')
    parts.append("<h3>Software and machine</h3>")
    machine_rows = [
        ["CPU count", _e(prov.machine.get("cpu_count"))],
        ["platform", _e(prov.machine.get("platform", ""))],
    ]
    parts.append(
        _table(
            ["package", "version"],
            [[_e(k), f"<code>{_e(v)}</code>"] for k, v in prov.versions.items()] + machine_rows,
            table_id="versions-table",
        )
    )
    return "".join(parts)


def render_page(
    stages: Sequence[StageReport],
    claims: Sequence[Mapping[str, Any]],
    prov: Provenance,
    wandb: WandbInfo,
    problems: Sequence[str] = (),
) -> str:
    dirty = " (dirty)" if prov.git_dirty else ""
    problem_html = ""
    all_problems = [*problems, *(f"{s.name}: {s.problem}" for s in stages if s.problem)]
    all_problems += [
        f"{s.name} was run with profile {s.profile!r}, this page with {prov.profile!r}: its numbers are not comparable"
        for s in stages
        if s.profile and prov.profile and s.profile != prov.profile
    ]
    if all_problems:
        problem_html = (
            '<div class="problems"><strong>Problems found while gathering the reports:</strong><ul>'
            + "".join(f"<li>{_e(p)}</li>" for p in all_problems)
            + "</ul></div>"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trustlab results</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<h1>trustlab results</h1>
<p class="meta">profile <code>{_e(prov.profile)}</code>
 &middot; commit <code>{_e(prov.git_commit[:12])}</code>{_e(dirty)}
 &middot; generated {_e(prov.generated_at)}</p>
<nav><a href="#reports">Reports</a><a href="#claims">Claims</a><a href="#headline">Headline numbers</a>
<a href="#figures">Headline figures</a>
<a href="#wandb">Weights &amp; Biases</a><a href="#provenance">Provenance</a>
<a href="claims.csv">claims.csv</a><a href="claims.json">claims.json</a></nav>
{problem_html}
<h2 id="reports">Reports</h2>
{render_reports_section(stages)}
<h2 id="claims">Claims</h2>
{render_claims_section(claims, stages)}
<h2 id="headline">Headline numbers</h2>
{render_headline_section(stages)}
<h2 id="figures">Headline figures</h2>
{render_figures_section(stages)}
<h2 id="wandb">Weights &amp; Biases</h2>
{render_wandb_section(wandb)}
<h2 id="provenance">Provenance</h2>
{render_provenance_section(prov, stages)}
<script>{_SORT_JS}</script>
</body>
</html>
"""


@dataclass
class FrontPage:
    html_path: Path
    claims_json: Path
    claims_csv: Path
    stages: list[StageReport]
    claims: list[dict[str, Any]]
    problems: list[str]


def build_front_page(
    reports_dir: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    lock_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    wandb: WandbInfo,
    stages: Sequence[tuple[str, str, str]] = STAGES,
) -> FrontPage:
    """Gather every stage's outputs under ``reports_dir`` and write ``index.html``,
    ``claims.json`` and ``claims.csv`` there."""
    reports_dir = Path(reports_dir)
    collected = collect_stages(reports_dir, stages)
    claims, problems = gather_claims(collected)
    prov = collect_provenance(params, lock_path, data_dir)
    claims_json, claims_csv = write_claims(claims, reports_dir)
    page = io.atomic_write_text(reports_dir / "index.html", render_page(collected, claims, prov, wandb, problems))
    return FrontPage(page, claims_json, claims_csv, collected, claims, problems)


def claims_as_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The claims table as aligned plain text (for notes and the terminal)."""
    header = ["family", "claim", "paper", "metric", "effect [95% CI]", "seeds", "verdict"]
    table = [header] + [
        [
            r["family"],
            r["claim"],
            r.get("paper") or "",
            r["metric"],
            fmt_effect(r).replace("\u2212", "-"),
            "n/a" if r["n_seeds"] is None else str(r["n_seeds"]),
            r["verdict"],
        ]
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)
