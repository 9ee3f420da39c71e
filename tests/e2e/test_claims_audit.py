"""The committed claims table (reports/claims.json, written by the front-page stage) obeys the
claims rule: every row passes trustlab.core.claims.audit."""

from __future__ import annotations

import json
from pathlib import Path

from trustlab.core import claims

ROOT = Path(__file__).resolve().parents[2]


def test_committed_claims_pass_the_audit():
    rows = json.loads((ROOT / "reports" / "claims.json").read_text(encoding="utf-8"))
    assert isinstance(rows, list) and rows, "reports/claims.json holds no claims rows"
    problems = claims.audit(rows)
    assert problems == [], "reports/claims.json breaks the claims rule:\n" + "\n".join(problems[:40])


def test_committed_claims_carry_the_engine_columns_and_unique_ids():
    rows = json.loads((ROOT / "reports" / "claims.json").read_text(encoding="utf-8"))
    assert all(list(r) == list(claims.COLUMNS) for r in rows), "rows must have exactly claims.COLUMNS, in order"
    assert len({r["id"] for r in rows}) == len(rows)
