"""Step-level error localisation (CORRECT, adaptation): step statistics, injected step errors,
the localisers and their fit/test separation, the schema cache's growth, the claim and the config."""

from __future__ import annotations

import numpy as np
import pytest

from trustlab.core import claims as engine
from trustlab.core.config import ConfigError
from trustlab.data.checkers import first_wrong_step
from trustlab.data.scratchpad import make_record
from trustlab.error_detection import claims as C
from trustlab.error_detection import correct as K
from trustlab.error_detection import steps as S
from trustlab.error_detection import tables as T
from trustlab.error_detection.config import CorrectConfig, ErrorDetectionConfig
from trustlab.error_detection.statistics import LabelAccessError

# per-step statistics (STEP_STATS order: min, mean log p, max entropy, x, y, carry, sum log p)
RIGHT = np.array([-0.30, -0.10, 1.00, -0.01, -0.01, -0.01, -0.30])
WRONG = np.array([-0.25, -0.02, 0.20, -0.25, -0.20, -0.01, -0.05])  # an overconfident error: distinct, not improbable
AFTER = np.array([-2.50, -0.50, 2.00, -0.01, -0.01, -0.01, -2.50])  # a confused later step: least likely, most unsure


def synthetic(n: int, split: str, seed: int, prefix: str = "t", n_steps: int = 4) -> S.StepTrajectories:
    """n trajectories of ``n_steps`` plain steps; a third have no wrong step, the others are wrong
    at k in {1, 2} with the WRONG signature at k and AFTER at k + 1."""
    gen = np.random.default_rng(seed)
    stats, fws = [], []
    for i in range(n):
        k = -1 if i % 3 == 0 else 1 + i % 2
        rows = np.tile(RIGHT, (n_steps, 1))
        if k >= 0:
            rows[k], rows[k + 1] = WRONG, AFTER
        stats.append(rows + gen.normal(0, 0.01, rows.shape))
        fws.append(k)
    ops = np.zeros((n * n_steps, len(S.STEP_OPERATION)), np.int64)
    ops[:, 0] = np.tile(np.arange(n_steps), n)
    return S.StepTrajectories(ids=[f"{prefix}{i}" for i in range(n)], split=[split] * n, prompt=[""] * n,
                              response=[""] * n, first_wrong=fws, n_reference=[n_steps] * n,
                              offsets=np.arange(n + 1) * n_steps, stats=np.concatenate(stats),
                              operation=ops)  # fmt: skip


def _traj(stats_rows, first_wrong, split="test", tid="x", kinds=None):
    """One trajectory from hand-made statistics rows."""
    rows = np.asarray(stats_rows, float)
    ops = np.zeros((len(rows), len(S.STEP_OPERATION)), np.int64)
    ops[:, 0] = np.arange(len(rows))
    if kinds is not None:
        ops[:, 1], ops[:, 2] = np.asarray(kinds) % 2, np.asarray(kinds) // 2
    return S.StepTrajectories([tid], [split], [""], [""], [first_wrong], [len(rows)], [0, len(rows)], rows, ops)


@pytest.fixture(scope="module")
def fit():
    return synthetic(60, "fit", seed=1, prefix="f")


@pytest.fixture(scope="module")
def test():
    return synthetic(30, "test", seed=2, prefix="t")


# -- steps: splitting, statistics, injected errors ---------------------------------------------------


class PieceTokenizer:
    """A tokenizer whose ids are indices into a list of text pieces (id 0 = <eos>, decodes to nothing)."""

    def __init__(self, pieces):
        self.pieces = ["", *pieces]

    def decode(self, ids, skip_special=True):
        return "".join(self.pieces[i] for i in ids)


def test_step_statistics_come_from_the_steps_own_tokens():
    pieces = [" 7", "+", "5", "+", "0", "=", "1", "2", ";", " 4", "+", "8", "+", "1", "=", "1", "3", ";", " answer",
              " 1", "3", "2"]  # fmt: skip
    tok = PieceTokenizer(pieces)
    ids = [*range(1, len(pieces) + 1), 0]
    lp = -np.arange(1, len(ids) + 1) / 100.0  # token t has log p = -(t + 1) / 100
    ent = np.arange(len(ids), dtype=float)
    rec = make_record(47, 85, "test", 0)  # 7+5+0=12; 4+8+1=13; answer 132
    tr = S.trajectories_from_tokens(tok, [rec], ["test"], [ids], [lp], [ent])
    assert tr.n_steps.tolist() == [2] and tr.labels().tolist() == [-1]
    first, second = tr.stats
    # step 0 = tokens 0..8 (its ';' included): min log p at token 8, mean over 0..8, max entropy 8
    assert first[:3] == pytest.approx([-0.09, -np.mean(np.arange(1, 10)) / 100, 8.0])
    # positional: x = token 0, y = token 2, carry = token 4, sum = tokens 6-7 (min)
    assert first[3:] == pytest.approx([-0.01, -0.03, -0.05, -0.08])
    assert second[0] == pytest.approx(-0.18) and second[6] == pytest.approx(-0.17)
    assert tr.operation.tolist() == [[0, 0, 1, 7, 5], [1, 1, 1, 4, 8]]  # column, carry-in, overflow, x, y
    assert [S.STEP_KINDS[k] for k in tr.kind] == ["overflow", "carry_in_overflow"]


def test_step_segments_agree_with_the_checkers_parser():
    text = " 7+5+0=12;  ;4+8+1=13; answer 132"
    segs = S.step_segments(text)
    assert ["".join(text[a:b].split()).rstrip(";") for a, b in segs] == ["7+5+0=12", "4+8+1=13"]
    assert S.step_segments(" answer 5") == [] and S.step_segments("") == []


def test_injected_errors_are_wrong_exactly_at_their_step():
    rec = make_record(47, 285, "test", 0)  # 7+5+0=12; 4+8+1=13; 0+2+1=3; answer 332
    assert S.inject_step_error(rec, 1, "wrong_sum", digit=1) == "7+5+0=12; 4+8+1=14; 0+2+1=3; answer 342"
    assert S.inject_step_error(rec, 1, "dropped_carry") == "7+5+0=12; 4+8+0=12; 0+2+1=3; answer 322"
    assert S.inject_step_error(rec, 0, "wrong_sum", digit=9) == "7+5+0=11; 4+8+1=13; 0+2+1=3; answer 331"
    for k, kind in ((0, "wrong_sum"), (1, "dropped_carry"), (2, "wrong_sum")):
        assert first_wrong_step(S.inject_step_error(rec, k, kind), rec) == k
    with pytest.raises(ValueError, match="dropped_carry needs a carry of 1"):
        S.inject_step_error(rec, 0, "dropped_carry")
    with pytest.raises(ValueError, match="kind = 'swap'"):
        S.inject_step_error(rec, 0, "swap")


# -- the decision rule and the baselines -----------------------------------------------------------------


def test_decide_earliest_above_threshold_else_argmax():
    scores = np.array([0.1, 0.5, 0.9, 0.3, 0.3, 0.2])
    offsets = np.array([0, 3, 3, 6])  # trajectory 1 has no step
    assert K.decide(scores, offsets, 0.4).tolist() == [1, -1, 0]  # none above 0.4 in the last: its argmax
    assert K.decide(scores, offsets).tolist() == [2, -1, 0]  # argmax; tied maxima -> the first


def test_baselines_pick_the_expected_step():
    p = np.log([[0.9, 0.4, 0.05], [0.6, 0.3, 0.2]])  # min token probability per step of two fit trajectories
    rows = lambda lp, ent: np.column_stack([lp, lp, ent, lp, lp, lp, lp])  # noqa: E731
    fit_a = _traj(rows(p[0], [0.1, 0.2, 0.3]), 1, "fit", "a")  # first step below 0.5 is step 1
    fit_b = _traj(rows(p[1], [0.1, 0.2, 0.3]), 1, "fit", "b")  # first step below 0.5 is step 1
    fit = S.StepTrajectories.concat([fit_a, fit_b])
    flp = K.build_localiser("first_low_prob").fit(fit)
    assert flp.fit_accuracy_ == 1.0 and 0.3 < flp.p_min <= 0.6  # any p_min in (0.4, 0.6] separates; ties -> lowest tau
    probe = _traj(rows(np.log([0.7, 0.2, 0.01]), [3.0, 0.1, 2.0]), 0, "test", "q")
    assert flp.localise(probe).tolist() == [1]  # first below p_min, not the least likely step (2)
    assert K.build_localiser("max_entropy").fit(fit).localise(probe).tolist() == [0]
    prior = K.build_localiser("position_prior").fit(fit)
    assert prior.localise(probe).tolist() == [1] and prior.fit_accuracy_ == 1.0


def test_fit_threshold_is_exact_on_a_known_set():
    tr = S.StepTrajectories.concat([_traj(np.tile(RIGHT, (3, 1)), 2, "fit", "a"), _traj(np.tile(RIGHT, (3, 1)), 0,
                                                                                        "fit", "b")])  # fmt: skip
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.1, 0.1])
    tau, acc = K.fit_threshold(scores, tr)
    assert acc == 1.0 and 0.2 <= tau < 0.8  # above 0.2 and below 0.8: both right; the lowest such observed score is 0.2
    assert tau == 0.2


# -- the schema cache --------------------------------------------------------------------------------------


def test_schema_cache_localises_a_distinct_error_signature_where_the_baselines_fail(fit, test):
    run = K.evaluate_localisers(S.StepTrajectories.concat([fit, test]), None, list(K.LOCALISERS), {},
                                checkpoints=[0, 10])  # fmt: skip
    keep = test.localisable
    truth = test.labels()[keep]
    exact = {n: float(np.mean(run.predictions[n]["natural"][keep] == truth)) for n in run.predictions}
    assert exact["correct_schema_cache"] == 1.0
    assert exact["first_low_prob"] == 0.0 and exact["max_entropy"] == 0.0  # both point at the confused later step
    assert run.baseline in K.BASELINES and run.status == {n: "ok" for n in K.LOCALISERS}
    again = K.evaluate_localisers(S.StepTrajectories.concat([fit, test]), None, list(K.LOCALISERS), {}, [0, 10])
    assert all(np.array_equal(again.predictions[n]["natural"], run.predictions[n]["natural"]) for n in run.predictions)
    assert again.growth == run.growth  # deterministic


def test_schema_cache_grows_by_one_per_diagnosed_failure(fit):
    cache = K.build_localiser("correct_schema_cache", k=3).fit(fit)
    assert cache.cache_size == int(fit.localisable.sum())
    entries = cache.cache_entries
    failed = _traj([RIGHT, WRONG, AFTER, RIGHT], 1, "test", "new1")
    cache.observe(failed)
    assert cache.cache_size == int(fit.localisable.sum()) + 1
    assert cache.cache_entries == entries + 2  # the schema and the right step before it; nothing after
    cache.observe(_traj(np.tile(RIGHT, (4, 1)), -1, "test", "new2"))  # no failure: no schema, four right steps
    assert cache.cache_size == int(fit.localisable.sum()) + 1 and cache.cache_entries == entries + 6
    with pytest.raises(ValueError, match="already diagnosed into the cache"):
        cache.localise(failed)


def test_online_stream_and_growth_curve_add_the_streams_failures(fit, test):
    cache = K.build_localiser("correct_schema_cache").fit(fit)
    before = cache.cache_size
    K.localise_stream(cache, test)
    assert cache.cache_size == before  # the stream works on a copy
    rows = K.cache_growth({"correct_schema_cache": cache}, test, [0, 10, 29, 30])
    assert [r["added"] for r in rows] == [0, 10, 29]  # a checkpoint at the stream's end leaves nothing to score
    assert [r["cache_schemata"] for r in rows] == [before + int(test.localisable[:c].sum()) for c in (0, 10, 29)]
    assert [r["n_evaluated"] for r in rows] == [int(test.localisable[c:].sum()) for c in (0, 10, 29)]


def test_fit_and_test_are_kept_apart(fit, test):
    for name in K.LOCALISERS:
        with pytest.raises(ValueError, match="split is not 'fit'"):
            K.build_localiser(name).fit(test)
        loc = K.build_localiser(name).fit(fit)
        with pytest.raises(ValueError, match="overlap"):
            loc.localise(fit.subset([0, 1]))
        assert len(loc.localise(fit.subset([0, 1]), in_sample=True)) == 2
    with pytest.raises(LabelAccessError):
        test.without_labels().labels()
    with pytest.raises(RuntimeError, match="call fit"):
        K.build_localiser("max_entropy").localise(test)
    right_only = synthetic(6, "fit", 0).subset([0, 3])  # trajectories without a wrong step
    with pytest.raises(ValueError, match="at least one fit trajectory with a written wrong step"):
        K.build_localiser("correct_schema_cache").fit(right_only)


def test_schema_cache_matches_steps_of_the_same_kind():
    """Two kinds whose errors look opposite: only kind-matched retrieval gets both right."""
    a, b = np.tile(RIGHT, (2, 1)), np.tile(RIGHT, (2, 1))
    parts = []
    for i in range(12):  # kind 0 fails with a low-entropy step 0, kind 1 with a high-entropy step 0
        wrong = i % 2 == 0
        rows0 = a.copy() if i < 6 else b.copy()
        kind = 0 if i < 6 else 1
        if wrong:
            rows0[0, 2] = 0.2 if kind == 0 else 2.0
        else:
            rows0[0, 2] = 2.0 if kind == 0 else 0.2
            rows0[1, 2] = 1.0
        parts.append(_traj(rows0, 0 if wrong else 1, "fit", f"f{i}", kinds=[kind, kind]))
    cache = K.build_localiser("correct_schema_cache", k=2).fit(S.StepTrajectories.concat(parts))
    probe0 = _traj([[*RIGHT[:2], 0.2, *RIGHT[3:]], RIGHT], 0, "test", "p0", kinds=[0, 0])
    probe1 = _traj([[*RIGHT[:2], 2.0, *RIGHT[3:]], RIGHT], 0, "test", "p1", kinds=[1, 1])
    assert cache.localise(probe0).tolist() == [0] and cache.localise(probe1).tolist() == [0]


# -- the claim and the table -------------------------------------------------------------------------------


def _known_run(fit, test, cfg_seed=0):
    run = K.evaluate_localisers(S.StepTrajectories.concat([fit, test]), test.subset(np.arange(5)),
                                ["first_low_prob", "max_entropy", "correct_schema_cache"], {}, [0])  # fmt: skip
    return run


def test_claim_row_compares_the_cache_with_the_fit_chosen_baseline(fit, test):
    cfg = ErrorDetectionConfig.from_dict({"bootstrap_resamples": 200, "models": []})
    run = _known_run(fit, test)
    (row,) = C.correct_claim_rows(cfg, run)
    n = int(test.localisable.sum())
    assert engine.audit([row]) == []
    assert (row["effect"], row["ci_low"], row["ci_high"]) == (1.0, 1.0, 1.0)  # always right vs always wrong
    assert row["verdict"] == "supported" and row["n"] == n and row["p_value"] == pytest.approx(1 / 200)
    assert row["paper_effect"] == pytest.approx(0.198) and row["power"] == "powered"
    assert run.baseline in row["note"] and row["id"] == "error_detection/schema_cache_localises_first_wrong_step"
    (off,) = C.correct_claim_rows(cfg, None)
    assert off["verdict"] == "not evaluated" and "enabled" in off["reason"]
    run.baseline = None
    assert C.correct_claim_rows(cfg, run)[0]["verdict"] == "not evaluated"
    assert {s.id for s in C.CORRECT_CLAIMS}.isdisjoint(s.id for s in C.CLAIMS)


def test_localisation_table_holds_known_accuracies(fit, test):
    cfg = ErrorDetectionConfig.from_dict({"bootstrap_resamples": 100, "models": []})
    run = _known_run(fit, test)
    t = T.localisation_table(cfg, run).set_index("localiser")
    assert t.loc["correct_schema_cache", "natural_exact"] == 1.0
    assert t.loc["correct_schema_cache", "natural_n"] == int(test.localisable.sum())
    keep = test.localisable
    pred, truth = run.predictions["first_low_prob"]["natural"][keep], test.labels()[keep]
    assert t.loc["first_low_prob", "natural_exact"] == 0.0
    assert t.loc["first_low_prob", "natural_within_one"] == pytest.approx(np.mean(np.abs(pred - truth) <= 1))
    assert t.loc["first_low_prob", "natural_within_one_lo"] <= t.loc["first_low_prob", "natural_within_one"] <= \
        t.loc["first_low_prob", "natural_within_one_hi"]
    assert t.loc["correct_schema_cache", "injected_n"] == int(test.subset(np.arange(5)).localisable.sum())
    assert t.loc["correct_schema_cache", "cached_vectors_per_step_fit"] > 0 == t.loc["max_entropy",
                                                                                     "cached_vectors_per_step_fit"]
    assert t.chosen_baseline.sum() == 1
    assert not len(T.localisation_table(cfg, None))


# -- parameters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"n_fit": 0}, "correct.n_fit = 0 is out of range"),
        ({"n_injected": 400}, "correct.n_injected = 400 is out of range"),
        ({"localisers": ["first_low_probability"]}, "unknown 'first_low_probability'"),
        ({"localisers": ["max_entropy", "max_entropy"]}, "distinct localiser names"),
        ({"localiser_params": {"correct_schema_cache": {"k": 0}}}, "correct_schema_cache: k = 0 is out of range"),
        ({"localiser_params": {"correct_schema_cache": {"prefix_weight": -1}}}, "prefix_weight = -1"),
        ({"localiser_params": {"correct_schema_cache": {"neighbours": 3}}}, "has no parameter 'neighbours'"),
        ({"growth_checkpoints": [0, 300]}, "growth_checkpoints = \\[0, 300\\] is not allowed"),
        ({"growth_checkpoints": [10, 5]}, "strictly increasing"),
        ({"fit_split": "dev"}, "fit_split = 'dev' is not allowed"),
    ],
)
def test_bad_parameters_raise_named_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        ErrorDetectionConfig.from_dict({"correct": bad})


def test_localiser_constructor_names_its_parameter():
    with pytest.raises(ValueError, match="k = 2.5"):
        K.build_localiser("correct_schema_cache", k=2.5)
    with pytest.raises(ConfigError, match="unknown step localiser 'cache'"):
        K.build_localiser("cache")
    assert CorrectConfig.from_dict({}).localisers == list(K.LOCALISERS)
