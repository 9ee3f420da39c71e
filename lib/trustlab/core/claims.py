"""The claims engine: every family's claims table comes from here.

A family declares its claims as data (a tuple of :class:`ClaimSpec` in ``<family>/claims.py``)
and turns each spec plus its results into one row with :func:`seed_row` (one value per
training seed for the method and the baseline), :func:`item_row` (one model, a paired
bootstrap over prompts or responses) or :func:`unevaluated_row` (a variant not run, a
metric that came out NaN). Every row has the same columns (:data:`COLUMNS`).

The verdict rule (:data:`RULE`), stated once and applied to every row:

* the effect is ``method - baseline`` on the claim's metric; a claim expects it to
  ``increase`` or ``decrease``;
* **seeds**: the effect is the mean paired difference over seeds, the interval a Student-t
  95% CI clipped to the feasible range of the difference, the test a paired t-test
  (``scipy.stats.ttest_rel``). When the differences have no spread or take at most two
  distinct values (as differences of shares on a small test set often do), the t
  distribution is no model for them: the test is then the exact paired sign-flip permutation test
  (``scipy.stats.permutation_test``), whose smallest two-sided p with n seeds is
  ``2 / 2**n`` (0.25 with 3 seeds, below 0.05 only from 6 seeds on);
* **items**: the effect is the statistic's paired difference on one model, the interval a
  percentile bootstrap over items (``scipy.stats.bootstrap`` or replicates the family
  computed with the same resampling), the p-value the bootstrap's two-sided tail share;
  such an interval does not include training-seed variation;
* ``supported`` when ``p < ALPHA`` and the effect points the expected way, ``not supported``
  when ``p < ALPHA`` and it points the other way, ``inconclusive`` otherwise, ``not
  evaluated`` when there is nothing to test.

**Power.** ``mde`` is the smallest true effect the design detects with 80% power at the 5%
level: the paired t-test's with the observed spread and n (non-central t), or
``(z_0.975 + z_0.8) x`` the bootstrap standard error for items; infinite when the exact
test cannot reach ``p < ALPHA`` at all. A spec that carries the paper's reported effect
(``paper_effect``, same metric and sign convention) is ``powered`` when ``mde <= |paper
effect|``, else ``underpowered``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Direction = Literal["decrease", "increase"]
Unit = Literal["seeds", "items"]

ALPHA = 0.05
POWER = 0.80
VERDICTS = ("supported", "not supported", "inconclusive", "not evaluated")
TEST_T = "paired t-test"
TEST_SIGN_FLIP = "exact sign-flip permutation"
TEST_BOOTSTRAP = "paired bootstrap over items"
TESTS = (TEST_T, TEST_SIGN_FLIP, TEST_BOOTSTRAP, "none")

RULE = (
    f"A claim is supported when its two-sided test gives p < {ALPHA} with the effect (method - baseline) "
    f"in the expected direction, not supported when p < {ALPHA} the other way, and inconclusive otherwise; "
    f"seed-level rows use a paired t-test with a 95% t-interval (an exact sign-flip permutation test when the "
    f"per-seed differences have no spread or at most two distinct values), item-level rows a paired percentile bootstrap over items "
    f"on one model. MDE is the smallest effect the design detects with {POWER:.0%} power at the {ALPHA:.0%} level."
)

COLUMNS = (
    "id", "family", "claim", "paper", "paper_effect", "paper_effect_source", "metric", "range", "method", "baseline",
    "expected", "unit", "n", "effect", "ci_low", "ci_high", "test", "p_value", "mde", "power", "verdict", "reason",
    "note",
)  # fmt: skip


@dataclass(frozen=True)
class ClaimSpec:
    """One claim, as data.

    ``id`` is stable and unique within the family (the row's id is ``<family>/<id>``);
    ``range`` is the metric's feasible range (for a share ``(0, 1)``); ``paper_effect``
    is the paper's reported ``method - baseline`` on a comparable metric, when it
    reports one, and ``paper_effect_source`` where (table, figure).
    """

    id: str
    claim: str
    paper: str
    metric: str
    method: str
    baseline: str
    expected: Direction
    unit: Unit = "seeds"
    range: tuple[float, float] = (-math.inf, math.inf)
    paper_effect: float | None = None
    paper_effect_source: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.expected not in ("increase", "decrease"):
            raise ValueError(f"claim {self.id!r}: expected = {self.expected!r} is not allowed: 'increase' or 'decrease'")
        if self.unit not in ("seeds", "items"):
            raise ValueError(f"claim {self.id!r}: unit = {self.unit!r} is not allowed: 'seeds' or 'items'")
        if not self.range[0] < self.range[1]:
            raise ValueError(f"claim {self.id!r}: range = {self.range!r} needs low < high")

    @property
    def difference_range(self) -> tuple[float, float]:
        lo, hi = self.range
        return lo - hi, hi - lo


def check_specs(specs: Iterable[ClaimSpec]) -> tuple[ClaimSpec, ...]:
    """The specs, after checking their ids are unique."""
    specs = tuple(specs)
    seen: set[str] = set()
    for s in specs:
        if s.id in seen:
            raise ValueError(f"claim id {s.id!r} is declared twice")
        seen.add(s.id)
    return specs


# -- the rule -------------------------------------------------------------------------------
def decide(effect: float, p_value: float, expected: str) -> str:
    """The verdict from a two-sided p-value and the effect's sign (see :data:`RULE`)."""
    if not (np.isfinite(effect) and np.isfinite(p_value)):
        return "inconclusive"
    if p_value >= ALPHA or effect == 0:
        return "inconclusive"
    points_expected_way = effect < 0 if expected == "decrease" else effect > 0
    return "supported" if points_expected_way else "not supported"


def power_status(mde: float, paper_effect: float | None) -> str:
    if paper_effect is None or not np.isfinite(paper_effect):
        return "no paper effect"
    if not np.isfinite(mde):
        return "underpowered"
    return "powered" if mde <= abs(paper_effect) else "underpowered"


def mde_paired_t(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest mean difference a two-sided paired t-test with n pairs and spread ``sd``
    detects with the given power (non-central t)."""
    from scipy import optimize, stats

    if n < 2 or not np.isfinite(sd):
        return math.inf
    if sd == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    # Power is the upper tail beyond the critical value; the lower tail is negligible for any
    # effect with real power (and nct.cdf returns NaN far in that tail on some scipy versions).
    def shortfall(nc: float) -> float:
        return float(stats.nct.sf(crit, df, nc)) - power

    nc = optimize.brentq(shortfall, 0.0, 200.0)
    return float(nc * sd / math.sqrt(n))


def seeds_needed_for_sign_flip(alpha: float = ALPHA) -> int:
    """The fewest seeds whose exact sign-flip test can give p < alpha (2 / 2**n < alpha)."""
    n = 1
    while 2.0 / 2**n >= alpha:
        n += 1
    return n


def _clip(x: float, bounds: tuple[float, float]) -> float:
    return float(min(max(x, bounds[0]), bounds[1])) if np.isfinite(x) else x


def _row(family: str, spec: ClaimSpec, **values: Any) -> dict[str, Any]:
    row = {
        "id": f"{family}/{spec.id}",
        "family": family,
        "claim": spec.claim,
        "paper": spec.paper,
        "paper_effect": spec.paper_effect,
        "paper_effect_source": spec.paper_effect_source,
        "metric": spec.metric,
        "range": [spec.range[0] if np.isfinite(spec.range[0]) else None,
                  spec.range[1] if np.isfinite(spec.range[1]) else None],
        "method": spec.method,
        "baseline": spec.baseline,
        "expected": spec.expected,
        "unit": spec.unit,
        "note": spec.note,
    }  # fmt: skip
    row.update(values)
    if row.get("note_extra"):
        row["note"] = "; ".join(filter(None, [row["note"], row.pop("note_extra")]))
    row.pop("note_extra", None)
    row["power"] = power_status(row["mde"], spec.paper_effect) if row["verdict"] != "not evaluated" else "not evaluated"
    for k, v in list(row.items()):  # JSON has no NaN or inf: store null
        if isinstance(v, float) and not np.isfinite(v):
            row[k] = None
    return {k: row.get(k) for k in COLUMNS}


def unevaluated_row(family: str, spec: ClaimSpec, reason: str, n: int = 0, note: str = "") -> dict[str, Any]:
    """A claim that could not be tested: kept in the table with its reason."""
    return _row(family, spec, n=n, effect=math.nan, ci_low=math.nan, ci_high=math.nan, test="none",
                p_value=math.nan, mde=math.nan, verdict="not evaluated", reason=reason, note_extra=note)  # fmt: skip


def seed_row(
    family: str,
    spec: ClaimSpec,
    method: Mapping[Any, float] | Sequence[float],
    baseline: Mapping[Any, float] | Sequence[float],
    note: str = "",
) -> dict[str, Any]:
    """A seed-level claim: ``method`` and ``baseline`` hold one value per seed (dicts are
    paired on their common seeds, sequences by position)."""
    from scipy import stats

    if spec.unit != "seeds":
        raise ValueError(f"claim {spec.id!r} is declared with unit {spec.unit!r}; seed_row needs 'seeds'")
    if isinstance(method, Mapping) and isinstance(baseline, Mapping):
        seeds = [s for s in method if s in baseline]
        a = np.array([method[s] for s in seeds], float)
        b = np.array([baseline[s] for s in seeds], float)
    else:
        a, b = np.asarray(method, float), np.asarray(baseline, float)
        if a.shape != b.shape:
            raise ValueError(f"claim {spec.id!r}: method and baseline need one value per seed each, "
                             f"got {a.shape} and {b.shape}")  # fmt: skip
    n = int(a.size)
    if n < 2:
        return unevaluated_row(family, spec, f"{n} paired seed(s); a seed-level test needs at least 2", n, note)
    bad = ~(np.isfinite(a) & np.isfinite(b))
    if bad.any():
        return unevaluated_row(family, spec, f"the metric is NaN for {int(bad.sum())} of {n} seeds", n, note)
    d = a - b
    effect = float(d.mean())
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n))
    lo, hi = _clip(effect - half, spec.difference_range), _clip(effect + half, spec.difference_range)
    scale = float(np.abs(d).max()) or 1.0
    distinct = len(np.unique(np.round(d / scale, 9)))
    tied = sd <= 1e-12 * max(1.0, abs(effect)) or (n >= 3 and distinct <= 2)
    if tied:
        if np.allclose(d, 0.0, atol=1e-15):
            p = 1.0
        else:
            res = stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                         alternative="two-sided", n_resamples=np.inf, vectorized=False)  # fmt: skip
            p = float(min(1.0, res.pvalue))
        test = TEST_SIGN_FLIP
        need = seeds_needed_for_sign_flip()
        mde = math.inf if n < need else mde_paired_t(sd, n)
        reason = (f"the {n} per-seed differences take at most two distinct values, so the exact sign-flip test decides; "
                  f"its smallest two-sided p with {n} seeds is {2 / 2 ** n:.3g}")  # fmt: skip
        if n < need:
            reason += f" (p < {ALPHA} needs at least {need} seeds)"
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
        test = TEST_T
        mde = mde_paired_t(sd, n)
        reason = f"paired by seed over {n} seeds"
    verdict = decide(effect, p, spec.expected)
    reason = f"{reason}; {_because(verdict, p)}"
    return _row(family, spec, n=n, effect=effect, ci_low=lo, ci_high=hi, test=test, p_value=p, mde=mde,
                verdict=verdict, reason=reason, note_extra=note)  # fmt: skip


def item_row(
    family: str,
    spec: ClaimSpec,
    effect: float,
    replicates: Sequence[float] | np.ndarray,
    n: int,
    note: str = "",
) -> dict[str, Any]:
    """An item-level claim on one model: ``effect`` is the paired difference of the statistic
    on all ``n`` items, ``replicates`` its values on bootstrap resamples of the items."""
    if spec.unit != "items":
        raise ValueError(f"claim {spec.id!r} is declared with unit {spec.unit!r}; item_row needs 'items'")
    reps = np.asarray(replicates, float)
    reps = reps[np.isfinite(reps)]
    if not np.isfinite(effect) or reps.size < 100:
        why = "the effect is NaN" if not np.isfinite(effect) else f"only {reps.size} usable bootstrap resamples"
        return unevaluated_row(family, spec, why, n, note)
    lo, hi = np.percentile(reps, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    lo, hi = _clip(float(lo), spec.difference_range), _clip(float(hi), spec.difference_range)
    tail = min(np.mean(reps <= 0), np.mean(reps >= 0))
    p = float(min(1.0, max(2 * tail, 1.0 / reps.size)))
    from scipy import stats

    se = float(reps.std(ddof=1))
    mde = float((stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)) * se)
    verdict = decide(float(effect), p, spec.expected)
    reason = (f"one model, {n} items resampled {reps.size} times; the interval covers item sampling only, "
              f"not training-seed variation; {_because(verdict, p)}")  # fmt: skip
    return _row(family, spec, n=int(n), effect=float(effect), ci_low=lo, ci_high=hi, test=TEST_BOOTSTRAP, p_value=p,
                mde=mde, verdict=verdict, reason=reason, note_extra=note)  # fmt: skip


def item_row_bootstrap(
    family: str,
    spec: ClaimSpec,
    data: Sequence[np.ndarray],
    statistic: Callable[..., float],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    note: str = "",
) -> dict[str, Any]:
    """:func:`item_row` with the replicates drawn by ``scipy.stats.bootstrap`` (rows of every
    array in ``data`` resampled together); ``statistic(*arrays)`` returns method - baseline."""
    from scipy import stats

    arrays = [np.asarray(x) for x in data]
    effect = float(statistic(*arrays))

    def safe(*xs):
        try:
            return float(statistic(*xs))
        except ValueError:  # e.g. AUROC on a resample with one class
            return math.nan

    res = stats.bootstrap(arrays, safe, paired=True, vectorized=False, n_resamples=n_resamples, method="percentile",
                          random_state=np.random.default_rng(seed))  # fmt: skip
    return item_row(family, spec, effect, res.bootstrap_distribution, len(arrays[0]), note=note)


def _because(verdict: str, p: float) -> str:
    if verdict == "supported":
        return f"p = {p:.3g} < {ALPHA} in the expected direction"
    if verdict == "not supported":
        return f"p = {p:.3g} < {ALPHA} against the expected direction"
    return f"p = {p:.3g}: no decision at the {ALPHA} level"


# -- reading a claims table ---------------------------------------------------------------
def count_verdicts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Verdict counts by unique claim id."""
    by_id = {r["id"]: r["verdict"] for r in rows}
    return {v: sum(1 for x in by_id.values() if x == v) for v in VERDICTS}


def audit(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Problems with a claims table, judged from its stored numbers and :data:`RULE` alone;
    an empty list when every row is consistent."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, r in enumerate(rows):
        rid = r.get("id") or f"row {i}"
        missing = [c for c in COLUMNS if c not in r]
        if missing:
            problems.append(f"{rid}: missing columns {', '.join(missing)}")
            continue
        if not r["id"]:
            problems.append(f"row {i}: no id")
        elif r["id"] in seen:
            problems.append(f"{rid}: duplicate id")
        seen.add(r["id"])
        if r["unit"] not in ("seeds", "items"):
            problems.append(f"{rid}: unit {r['unit']!r} is neither 'seeds' nor 'items'")
        if r["test"] not in TESTS:
            problems.append(f"{rid}: test {r['test']!r} is not one of {', '.join(TESTS)}")
        if r["verdict"] not in VERDICTS:
            problems.append(f"{rid}: verdict {r['verdict']!r} is not one of {', '.join(VERDICTS)}")
            continue
        if not r.get("reason"):
            problems.append(f"{rid}: no reason")
        if r["verdict"] == "not evaluated":
            if r["test"] != "none":
                problems.append(f"{rid}: 'not evaluated' but test {r['test']!r}")
            continue
        eff, p, lo, hi = (_num(r[k]) for k in ("effect", "p_value", "ci_low", "ci_high"))
        if r["test"] == "none":
            problems.append(f"{rid}: verdict {r['verdict']!r} without a test")
        if r["unit"] == "seeds" and r["test"] == TEST_BOOTSTRAP or r["unit"] == "items" and r["test"] != TEST_BOOTSTRAP:
            problems.append(f"{rid}: test {r['test']!r} does not fit unit {r['unit']!r}")
        if r["mde"] is None and r["test"] == TEST_T:
            problems.append(f"{rid}: no MDE")
        expected_verdict = decide(eff, p, r["expected"])
        if expected_verdict != r["verdict"]:
            problems.append(f"{rid}: verdict {r['verdict']!r} but the rule gives {expected_verdict!r} "
                            f"(effect {eff:.4g}, p {p:.3g}, expected {r['expected']})")  # fmt: skip
        if np.isfinite(lo) and np.isfinite(hi):
            if lo > hi or not (lo - 1e-9 <= eff <= hi + 1e-9):
                problems.append(f"{rid}: interval [{lo:.4g}, {hi:.4g}] does not contain the effect {eff:.4g}")
            rng = r["range"] or [None, None]
            if rng[0] is not None and rng[1] is not None:
                dlo, dhi = rng[0] - rng[1], rng[1] - rng[0]
                if lo < dlo - 1e-9 or hi > dhi + 1e-9:
                    problems.append(f"{rid}: interval [{lo:.4g}, {hi:.4g}] leaves the feasible range "
                                    f"[{dlo:.4g}, {dhi:.4g}] of the difference")  # fmt: skip
            if r["verdict"] == "supported" and r["test"] == TEST_T and hi - lo <= 0:
                problems.append(f"{rid}: 'supported' rests on a zero-width t-interval")
            if r["test"] == TEST_T and r["verdict"] != "inconclusive":
                excludes = lo > 0 or hi < 0
                if not excludes:
                    problems.append(f"{rid}: {r['verdict']!r} but the interval [{lo:.4g}, {hi:.4g}] includes 0")
        elif r["test"] in (TEST_T, TEST_BOOTSTRAP):
            problems.append(f"{rid}: no interval")
    return problems


def _num(x: Any) -> float:
    return float(x) if x is not None else math.nan
