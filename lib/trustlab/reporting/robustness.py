"""Verdict robustness to the base model's seed: every claim's verdict next to the verdict the
same pipeline gives when only ``base_model.seed`` changes.

A replicate is the whole default pipeline rerun from a clean copy of the repository with
another ``base_model.seed`` (``pipelines/replicate_base_seed.py``, ``make replicate``); its claims
are stored in ``reports/robustness/base_model_seed<k>.json`` together with the commit and a
digest of every other parameter. The front page then marks each claim:

- ``robust``: the replicate reaches the same verdict;
- ``fragile``: the verdict changes with the base model's seed; such a verdict is not a finding;
- ``not replicated``: the claim is missing from the replicate (or no replicate applies).

A replicate whose other parameters differ from the current ones (another experiment design)
is not compared at all: the page says so instead of marking claims against stale results.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROBUSTNESS_DIR = "robustness"
VARIED = ("base_model", "seed")  # the one parameter a replicate changes
# parameters that change where or how results are logged, not what they are
IGNORED_SECTIONS = ("tracking",)


def design_digest(params: Mapping[str, Any]) -> str:
    """sha256 of every parameter except the varied seed and the tracking settings: two runs with
    the same digest ran the same experiment design."""
    rest = {k: v for k, v in params.items() if k not in IGNORED_SECTIONS}
    section, key = VARIED
    if isinstance(rest.get(section), Mapping):
        rest[section] = {k: v for k, v in rest[section].items() if k != key}
    blob = json.dumps(rest, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def replicate_path(reports_dir: str | os.PathLike, seed: int) -> Path:
    return Path(reports_dir) / ROBUSTNESS_DIR / f"base_model_seed{int(seed)}.json"


def replicate_record(claims: Sequence[Mapping[str, Any]], params: Mapping[str, Any], *, commit: str | None,
                     wall_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """What a replicate stores: its seed, commit, design digest and each claim's verdict and effect."""
    section, key = VARIED
    keep = ("id", "verdict", "effect", "ci_low", "ci_high", "p_value", "n")
    return {
        "varied": f"{section}.{key}",
        "seed": params.get(section, {}).get(key),
        "commit": commit,
        "design_digest": design_digest(params),
        "wall_s": wall_s,
        "claims": [{k: c.get(k) for k in keep} for c in claims],
    }


@dataclass
class Agreement:
    """Verdicts of the primary run compared with one replicate."""

    seed: int | None
    commit: str | None
    comparable: bool
    status: dict[str, str] = field(default_factory=dict)  # claim id -> robust | fragile | not replicated
    replicate_verdict: dict[str, str] = field(default_factory=dict)

    @property
    def compared(self) -> int:
        return sum(s in ("robust", "fragile") for s in self.status.values())

    @property
    def agreeing(self) -> int:
        return sum(s == "robust" for s in self.status.values())

    @property
    def share(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    def text(self) -> str:
        if not self.comparable:
            return (f"The stored replicate (base_model.seed {self.seed}, commit {self.commit}) ran another experiment "
                    "design: verdict robustness is not shown. Rerun it with `make replicate`.")  # fmt: skip
        share = "n/a" if self.share is None else f"{self.share:.0%}"
        fragile = self.compared - self.agreeing
        return (f"Rerun with base_model.seed {self.seed} (commit {self.commit}): {self.agreeing} of {self.compared} "
                f"verdicts agree ({share}); {fragile} verdict(s) change with the base model's seed and are marked "
                "fragile: they are not findings.")  # fmt: skip


def compare(claims: Sequence[Mapping[str, Any]], replicate: Mapping[str, Any], params: Mapping[str, Any]) -> Agreement:
    """Mark each claim robust, fragile or not replicated against ``replicate``."""
    comparable = replicate.get("design_digest") == design_digest(params)
    other = {c["id"]: c.get("verdict") for c in replicate.get("claims", [])}
    agreement = Agreement(replicate.get("seed"), replicate.get("commit"), comparable)
    for c in claims:
        cid, verdict = c["id"], c.get("verdict")
        if not comparable or cid not in other or "not evaluated" in (verdict, other[cid]):
            agreement.status[cid] = "not replicated"
        else:
            agreement.status[cid] = "robust" if other[cid] == verdict else "fragile"
        if cid in other:
            agreement.replicate_verdict[cid] = other[cid]
    return agreement


def load_replicates(reports_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every stored replicate, by seed; a malformed file is an error that names it."""
    folder = Path(reports_dir) / ROBUSTNESS_DIR
    out = []
    for path in sorted(folder.glob("base_model_seed*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            if not isinstance(record.get("claims"), list):
                raise ValueError("no 'claims' list")
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: not a replicate record ({exc})") from exc
        out.append(record)
    return out
