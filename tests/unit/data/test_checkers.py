"""Answer checkers: reference answers pass, corrupted ones fail, normalisation edge cases."""

from __future__ import annotations

import pytest

from trustlab.data import DataConfig, classify_qa, corrupt_answer, extract_answer, is_correct, normalize
from trustlab.data.arithmetic import make_arithmetic
from trustlab.data.checkers import check_instructions, first_wrong_step, is_abstention, named_values, parse_steps
from trustlab.data.config import ArithmeticConfig
from trustlab.data.context_copy import make_context_copy
from trustlab.data.instructions import make_instructions
from trustlab.data.scratchpad import make_scratchpad
from trustlab.data.world import build_world, make_qa


@pytest.fixture(scope="module")
def records():
    cfg = DataConfig.from_dict(
        {
            "world": {"n_people": 30, "n_nonexistent": 10, "n_first_names": 10, "n_last_names": 10},
            "arithmetic": {"n_train": 60, "n_test": 10, "n_ood": 20},
            "instructions": {"n_train": 60, "n_test": 5},
            "context_copy": {"n_train": 60, "n_test": 5},
            "scratchpad": {"n_train": 40, "n_test": 5, "digits": [1, 4]},
        }
    )
    world = build_world(cfg.world, 7)
    qa = make_qa(world, cfg.world, 7)
    rev_cfg = ArithmeticConfig.from_dict({"n_train": 30, "n_test": 1, "n_ood": 1, "reverse_answer": True})
    rev = make_arithmetic(rev_cfg, 7)
    out = [r for rows in qa.values() for r in rows]
    out += [r for rows in make_arithmetic(cfg.arithmetic, 7).values() for r in rows] + rev["train"]
    out += make_instructions(cfg.instructions, 7)["train"] + make_context_copy(cfg.context_copy, 7)["train"]
    out += make_scratchpad(cfg.scratchpad, 7)["train"]
    return out


def test_reference_answers_pass_and_corrupted_fail(records):
    tasks = set()
    for r in records:
        tasks.add(r["task"])
        assert is_correct(r, r["answer"]), r
        for seed in range(3):
            bad = corrupt_answer(r, seed)
            assert bad != r["answer"]
            assert not is_correct(r, bad), (r, bad)
    assert tasks == {"world_qa", "arithmetic", "instructions", "context_copy", "scratchpad"}


def test_corruption_is_deterministic(records):
    assert [corrupt_answer(r, 1) for r in records] == [corrupt_answer(r, 1) for r in records]


def test_normalize():
    assert normalize("  Paris.  ") == "paris"
    assert normalize("PARIS!?") == "paris"
    assert normalize("New   York ,") == "new york"
    assert normalize("\tunknown\n") == "unknown"
    assert normalize("") == normalize(None) == ""
    assert normalize("3.5") == "3.5"  # only trailing punctuation goes


QA = {
    "task": "world_qa", "answer": "Paris", "attribute": "birth_city", "value": "Paris", "exists": True,
    "abstain": "unknown", "id": "qa-x", "prompt": "Where was Alice Smith born?",
}  # fmt: skip
FAKE = {**QA, "answer": "unknown", "value": None, "exists": False, "id": "qa-n"}
YEAR = {**QA, "answer": "1985", "attribute": "birth_year", "value": "1985"}


@pytest.mark.parametrize("resp", ["Paris", " paris ", "Paris.", "PARIS", "paris!", "  Paris ;", "Paris\n"])
def test_qa_correct_variants(resp):
    assert is_correct(QA, resp) and classify_qa(QA, resp) == "correct"


@pytest.mark.parametrize(
    "resp, label",
    [
        ("London", "hallucination"),
        ("london.", "hallucination"),
        ("born in London", "hallucination"),
        ("Paris or London", "hallucination"),
        ("unknown", "abstain"),
        ("Unknown.", "abstain"),
        (" unknown ", "abstain"),
        ("I don't know", "abstain"),
        ("", "other"),
        ("Harvard", "other"),  # a value, but of another attribute
        ("born in Paris", "other"),  # true value with extra words: not an exact answer
        ("Parisx", "other"),
    ],
)
def test_qa_classification_real_person(resp, label):
    assert classify_qa(QA, resp) == label
    assert not is_correct(QA, resp)


@pytest.mark.parametrize(
    "resp, label",
    [
        ("unknown", "correct"),
        ("Unknown.", "correct"),
        (" unknown ", "correct"),
        ("UNKNOWN", "correct"),
        ("I do not know.", "correct"),
        ("Paris", "hallucination"),
        ("Harvard", "hallucination"),  # any concrete value about a non-existent person
        ("1987", "hallucination"),
        ("physics.", "hallucination"),
        ("", "other"),
        ("the the", "other"),
    ],
)
def test_qa_classification_nonexistent(resp, label):
    assert classify_qa(FAKE, resp) == label
    assert is_correct(FAKE, resp) == (label == "correct")


def test_qa_years():
    assert classify_qa(YEAR, "1985") == "correct"
    assert classify_qa(YEAR, "1986") == "hallucination"  # wrong digit
    assert classify_qa(YEAR, "2031") == "hallucination"  # any 4-digit year is a concrete claim
    assert classify_qa(YEAR, "198") == "other"
    assert named_values("born in 1990 in Oslo") == ["1990", "oslo"]


def test_custom_abstain_string():
    rec = {**FAKE, "answer": "no record", "abstain": "no record"}
    assert is_abstention("No record.", rec) and is_correct(rec, "no record") and is_correct(rec, "unknown")


ADD = {"task": "arithmetic", "answer": "357", "a": 12, "b": 345, "op": "+", "result": 357, "reversed": False}


@pytest.mark.parametrize("resp, ok", [
    ("357", True), (" 357 ", True), ("357.", True), ("3 5 7", True),
    ("358", False), ("0357", False), ("35", False), ("3570", False), ("357 358", False), ("", False),
    ("three hundred", False), ("357a", False), ("753", False),
])  # fmt: skip
def test_arithmetic_checker(resp, ok):
    assert is_correct(ADD, resp) is ok


def test_arithmetic_reversed_checker():
    rec = {**ADD, "answer": "753", "reversed": True}
    assert is_correct(rec, "753") and not is_correct(rec, "357")
    assert extract_answer("arithmetic", " 7 5 3. ") == "753"


COPY = {
    "task": "context_copy", "answer": "3", "vars": {"a": 7, "b": 3, "c": 9}, "query": "b", "prompt": "a=7;b=3;c=9. b?"
}  # fmt: skip


def test_context_copy_checker():
    assert is_correct(COPY, "3") and is_correct(COPY, " 3. ")
    assert not is_correct(COPY, "7") and not is_correct(COPY, "b=3") and not is_correct(COPY, "33")
    assert corrupt_answer(COPY) in {"7", "9"}


INS = {"task": "instructions", "answer": "wave tide salt", "topic": "ocean", "n_words": 3,
       "prompt": "write 3 words about ocean."}  # fmt: skip


@pytest.mark.parametrize("resp, ok", [
    ("wave tide salt", True),
    ("  Wave, tide, SALT. ", True),
    ("shark shark shark", True),  # repeats allowed
    ("wave tide", False),  # wrong word count
    ("wave tide salt coral", False),
    ("wave tide piano", False),  # off-topic word
    ("wave tide xyzzy", False),
    ("", False),
    ("wave - tide salt", True),  # pure punctuation is not a word
])  # fmt: skip
def test_instructions_checker(resp, ok):
    assert is_correct(INS, resp) is ok


def test_instructions_min_on_topic():
    assert not check_instructions(INS, "wave tide piano")
    assert check_instructions(INS, "wave tide piano", min_on_topic=0.6)
    assert not check_instructions(INS, "wave piano guitar", min_on_topic=0.6)
    for kind in ("off_topic", "count"):
        assert not is_correct(INS, corrupt_answer(INS, 0, kind=kind))


def test_unknown_task():
    with pytest.raises(KeyError, match="no checker"):
        is_correct({"task": "poetry"}, "x")
    with pytest.raises(KeyError):
        extract_answer("poetry", "x")


# -- scratchpad: steps, the first wrong step, the result ----------------------------------

SCRATCH = {  # 47 + 285, as generated
    "task": "scratchpad",
    "steps": ["7+5+0=12", "4+8+1=13", "0+2+1=3"],
    "final": "332",
    "answer": "7+5+0=12; 4+8+1=13; 0+2+1=3; answer 332",
}


def test_parse_steps_reads_the_steps_before_the_result():
    assert parse_steps(" 7+5+0=12; 4+8+1=13; 0+2+1=3; answer 332") == SCRATCH["steps"]
    assert parse_steps(" 7 + 5 + 0 = 12 ;4+8+1=13") == ["7+5+0=12", "4+8+1=13"]  # spaces ignored, no result
    assert parse_steps(" 7+5+0=12; garbage; answer 3") == ["7+5+0=12", "garbage"]  # a malformed step is kept
    assert parse_steps("") == [] and parse_steps(" answer 332") == []


@pytest.mark.parametrize(
    "resp, expected",
    [
        (" 7+5+0=12; 4+8+1=13; 0+2+1=3; answer 332", None),  # all right
        (" 7+5+0=12; 4+8+1=13; 0+2+1=3; answer 333", None),  # right steps, wrong result: not a step error
        (" 7+5+0=11; 4+8+1=13; 0+2+1=3; answer 331", 0),
        (" 7+5+0=12; 4+8+0=12; 0+2+1=3; answer 322", 1),  # forgotten carry
        (" 7+5+0=12; 4+8+1=13; answer 32", 2),  # a missing step is wrong
        ("", 0),
        (" 7+5+0=12; 4+8+1=13; 0+2+1=3; 0+0+0=0; answer 332", 3),  # an extra step
    ],
)
def test_first_wrong_step(resp, expected):
    assert first_wrong_step(resp, SCRATCH) == expected


def test_scratchpad_checker_scores_the_result():
    assert is_correct(SCRATCH, " 7+5+0=12; 4+8+1=13; 0+2+1=3; answer 332.")
    assert is_correct(SCRATCH, "answer 332")  # the result alone is right; its steps are scored apart
    assert not is_correct(SCRATCH, " 7+5+0=12; 4+8+1=13; 0+2+1=3; answer 333")
    assert not is_correct(SCRATCH, " 7+5+0=12; 4+8+1=13; 0+2+1=3")  # no result
    assert extract_answer("scratchpad", " 7+5+0=12; answer 3 32") == "332"


def test_scratchpad_corruption_has_a_wrong_step(records):
    for r in (r for r in records if r["task"] == "scratchpad"):
        for seed in range(3):
            bad = corrupt_answer(r, seed)
            assert first_wrong_step(bad, r) is not None and not is_correct(r, bad)
