"""Deterministic answer checkers, one per task, and a dispatcher.

Normalisation (``normalize``): whitespace runs collapse to one space, surrounding whitespace
and trailing punctuation (``. , ! ? ; :``) are stripped, case is folded. So ``" Paris. "``,
``"paris"`` and ``"PARIS!"`` all match ``Paris``.

Per task:

- ``world_qa``: exact match of the normalised response with the normalised answer. For
  people who do not exist the answer is an abstention: the record's ``abstain`` string or a
  variant in ``ABSTAIN_VARIANTS`` (``unknown``, ``I do not know``, ...).
- ``arithmetic`` / ``context_copy``: the normalised response with spaces removed must equal
  the answer string exactly (no leading zeros, no thousands separators; a reversed answer is
  compared as written).
- ``instructions``: the response's words (split on whitespace, surrounding punctuation
  stripped, pure punctuation dropped) must number exactly ``n_words`` and a fraction of at
  least ``min_on_topic`` (default 1.0: *every* word) must come from the topic vocabulary.
  Repeated words are allowed.
- ``scratchpad``: the result after ``answer`` (the last ``; ``-separated part, spaces removed)
  must equal the record's ``final``; the steps are scored separately, step by step:
  ``parse_steps`` reads the steps of a response and ``first_wrong_step`` gives the index of
  the first step that differs from the reference (``None`` when every step is right).

``classify_qa`` sorts a QA response into ``correct | abstain | hallucination | other``:

- a real person: ``correct`` (exact match), ``abstain`` (an abstention), ``hallucination``
  (names a value of the *asked attribute's* closed set other than the true one; for
  ``birth_year`` any 4-digit number), else ``other`` (empty, off-format, a value of another
  attribute, the true value with extra words);
- a person who does not exist: ``correct`` when it abstains (the right answer),
  ``hallucination`` when it names any concrete value of *any* attribute's closed set (or a
  4-digit number), else ``other``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from trustlab.data.instructions import TOPICS
from trustlab.data.scratchpad import FINAL_PREFIX, STEP_SEP
from trustlab.data.tasks import sub_seed
from trustlab.data.world import ABSTAIN, VALUES

TRAILING_PUNCT = ".,!?;:"
ABSTAIN_VARIANTS = frozenset({ABSTAIN, "i do not know", "i don't know", "not known", "no idea"})
QA_LABELS = ("correct", "abstain", "hallucination", "other")

_WORDS = re.compile(r"[a-z0-9]+")
_YEAR = re.compile(r"\d{4}")
_CLOSED = {a: frozenset(tuple(_WORDS.findall(v.lower())) for v in vals) for a, vals in VALUES.items()}


def normalize(text: str | None) -> str:
    """Collapse whitespace, strip it and trailing punctuation, lowercase."""
    if text is None:
        return ""
    t = " ".join(str(text).split())
    while t and (t[-1] in TRAILING_PUNCT or t[-1].isspace()):
        t = t[:-1]
    return t.strip().lower()


def _words(text: str) -> list[str]:
    out = []
    for w in str(text).split():
        w = w.strip(".,!?;:\"'()[]{}-").lower()
        if w:
            out.append(w)
    return out


def extract_answer(task: str, response: str) -> str:
    """The canonical form of ``response`` that the task's checker compares."""
    norm = normalize(response)
    if task in ("arithmetic", "context_copy"):
        return norm.replace(" ", "")
    if task == "instructions":
        return " ".join(_words(response))
    if task == "world_qa":
        return norm
    if task == "scratchpad":
        return scratchpad_final(response)
    raise KeyError(f"unknown task {task!r}; known tasks are {', '.join(CHECKERS)}")


# -- world QA ---------------------------------------------------------------------------


def is_abstention(response: str, record: dict[str, Any] | None = None) -> bool:
    norm = normalize(response)
    own = normalize((record or {}).get("abstain") or ABSTAIN)
    return norm == own or norm in ABSTAIN_VARIANTS


def named_values(response: str, attributes: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Concrete closed-set values named in ``response`` (whole words; ``birth_year``: any
    4-digit number), as lowercase strings, for the given attributes (default: all)."""
    words = _WORDS.findall(normalize(response))
    attributes = list(attributes) if attributes is not None else ["birth_year", *VALUES]
    found: list[str] = []
    for a in attributes:
        if a == "birth_year":
            found += [w for w in words if _YEAR.fullmatch(w)]
            continue
        for value in _CLOSED.get(a, ()):
            k = len(value)
            if any(tuple(words[i : i + k]) == value for i in range(len(words) - k + 1)):
                found.append(" ".join(value))
    return found


def classify_qa(record: dict[str, Any], response: str) -> str:
    """``correct | abstain | hallucination | other`` (see the module docstring)."""
    norm = normalize(response)
    if not record.get("exists", True):
        if is_abstention(norm, record):
            return "correct"
        return "hallucination" if named_values(norm) else "other"
    if norm == normalize(record["answer"]):
        return "correct"
    if is_abstention(norm, record):
        return "abstain"
    truth = " ".join(_WORDS.findall(normalize(record["answer"])))
    if any(v != truth for v in named_values(norm, [record["attribute"]])):
        return "hallucination"
    return "other"


def check_world_qa(record: dict[str, Any], response: str) -> bool:
    return classify_qa(record, response) == "correct"


# -- the other tasks --------------------------------------------------------------------


def check_arithmetic(record: dict[str, Any], response: str) -> bool:
    return extract_answer("arithmetic", response) == record["answer"]


def check_context_copy(record: dict[str, Any], response: str) -> bool:
    return extract_answer("context_copy", response) == record["answer"]


def on_topic_fraction(record: dict[str, Any], response: str) -> float:
    words = _words(response)
    if not words:
        return 0.0
    vocab = set(TOPICS[record["topic"]])
    return sum(w in vocab for w in words) / len(words)


def check_instructions(record: dict[str, Any], response: str, *, min_on_topic: float = 1.0) -> bool:
    words = _words(response)
    return len(words) == int(record["n_words"]) and on_topic_fraction(record, response) >= min_on_topic - 1e-12


# -- scratchpad: steps and result ----------------------------------------------------------


def _parts(generated: str) -> list[str]:
    """The ``; ``-separated parts of a response, each with its spaces removed (empty parts dropped)."""
    parts = [p.replace(" ", "") for p in " ".join(str(generated or "").split()).split(STEP_SEP.strip())]
    return [p for p in parts if p]


def parse_steps(generated: str) -> list[str]:
    """The step strings of a scratchpad response, in order: its ``;``-separated parts before
    the result part (the one starting with ``answer``), with every space removed, so
    ``" 7+5+0=12; 4+8+1=13; answer 132"`` gives ``["7+5+0=12", "4+8+1=13"]``. A part that is
    no well-formed step is still returned (it is a wrong step, not a missing one)."""
    marker = FINAL_PREFIX.strip().lower()
    steps = []
    for part in _parts(generated):
        if part.lower().startswith(marker):
            break
        steps.append(part)
    return steps


def scratchpad_final(generated: str) -> str:
    """The result of a scratchpad response: the part after ``answer`` with spaces and trailing
    punctuation removed (``""`` when the response has no ``answer`` part)."""
    marker = FINAL_PREFIX.strip().lower()
    for part in _parts(generated):
        if part.lower().startswith(marker):
            return normalize(part[len(marker):]).replace(" ", "")
    return ""


def first_wrong_step(generated: str, record: dict[str, Any]) -> int | None:
    """Index (0-based) of the first step of ``generated`` that differs from ``record["steps"]``,
    or ``None`` when every reference step is reproduced exactly (spaces ignored).

    A missing step counts as wrong: a response that stops after ``k`` correct steps of ``n > k``
    is wrong at step ``k``. Extra steps after all ``n`` correct ones are wrong at index ``n``.
    The result is not a step: a response with every step right and a wrong result returns
    ``None`` here and is wrong by :func:`check_scratchpad`."""
    reference = [s.replace(" ", "") for s in record["steps"]]
    steps = parse_steps(generated)
    for i, ref in enumerate(reference):
        if i >= len(steps) or steps[i] != ref:
            return i
    return len(reference) if len(steps) > len(reference) else None


def check_scratchpad(record: dict[str, Any], response: str) -> bool:
    return scratchpad_final(response) == record["final"]


CHECKERS: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "world_qa": check_world_qa,
    "arithmetic": check_arithmetic,
    "instructions": check_instructions,
    "context_copy": check_context_copy,
    "scratchpad": check_scratchpad,
}


def check(record: dict[str, Any], response: str) -> bool:
    """Alias of :func:`is_correct`."""
    return is_correct(record, response)


def is_correct(record: dict[str, Any], response: str) -> bool:
    """Dispatch on ``record["task"]``."""
    task = record.get("task")
    if task not in CHECKERS:
        raise KeyError(f"no checker for task {task!r}; checked tasks are {', '.join(CHECKERS)}")
    return CHECKERS[task](record, response)


# -- corrupted answers (negative examples, injected errors) ------------------------------


def corrupt_answer(record: dict[str, Any], seed: int = 0, kind: str | None = None) -> str:
    """A well-formed but wrong answer for ``record`` (deterministic given seed and record id).

    world_qa: another value of the attribute's closed set (for a non-existent person: a
    concrete value, i.e. a hallucination); arithmetic: one digit changed; context_copy:
    another variable's value from the prompt when one differs, else value + 1;
    instructions: ``kind="off_topic"`` swaps one word for another topic's word,
    ``kind="count"`` drops or adds a word (default: chosen by the seed); scratchpad: one
    step's column sum off by one, the later steps and the result carried on consistently from it.
    """
    gen = np.random.default_rng(sub_seed(seed, "corrupt", record.get("id", ""), record.get("prompt", "")))
    task = record["task"]
    answer = record["answer"]
    if task == "world_qa":
        a = record["attribute"]
        if a == "birth_year":
            lo = 1900
            pool = [str(y) for y in range(lo, 2000) if str(y) != answer]
        else:
            pool = [v for v in VALUES[a] if v != answer]
        return pool[int(gen.integers(len(pool)))]
    if task == "arithmetic":
        i = int(gen.integers(len(answer)))
        lead = (len(answer) - 1) if record.get("reversed") else 0  # most significant digit as written
        digits = [d for d in "0123456789" if d != answer[i] and not (i == lead and d == "0" and len(answer) > 1)]
        return answer[:i] + digits[int(gen.integers(len(digits)))] + answer[i + 1 :]
    if task == "context_copy":
        others = sorted({str(v) for v in record.get("vars", {}).values()} - {answer})
        if others:
            return others[int(gen.integers(len(others)))]
        return str(int(answer) + 1)
    if task == "instructions":
        words = answer.split()
        kind = kind or ("off_topic" if gen.random() < 0.5 else "count")
        if kind == "off_topic":
            other = sorted(t for t in TOPICS if t != record["topic"])
            t = other[int(gen.integers(len(other)))]
            words[int(gen.integers(len(words)))] = TOPICS[t][int(gen.integers(len(TOPICS[t])))]
        elif kind == "count":
            vocab = TOPICS[record["topic"]]
            if len(words) > 1 and gen.random() < 0.5:
                del words[int(gen.integers(len(words)))]
            else:
                words.append(vocab[int(gen.integers(len(vocab)))])
        else:
            raise ValueError(f"kind = {kind!r} is not allowed: choose 'off_topic' or 'count'")
        return " ".join(words)
    if task == "scratchpad":
        return _corrupt_scratchpad(record, int(gen.integers(len(record["steps"]))))
    raise KeyError(f"cannot corrupt task {task!r}; checked tasks are {', '.join(CHECKERS)}")


def _corrupt_scratchpad(record: dict[str, Any], wrong: int) -> str:
    """The trajectory with column ``wrong``'s sum off by one; later columns take its carry and
    the result is read off the (wrong) column sums, so the error propagates as a model's would."""
    columns = [tuple(int(v) for v in step.replace("=", "+").split("+")) for step in record["steps"]]
    steps, digits, carry = [], [], 0
    for i, (x, y, _c, _s) in enumerate(columns):
        total = x + y + carry
        if i == wrong:
            total = total + 1 if total < 19 else total - 1
        steps.append(f"{x}+{y}+{carry}={total}")
        digits.append(str(total % 10))
        carry = total // 10
    final = (str(carry) if carry else "") + "".join(reversed(digits))
    return STEP_SEP.join([*steps, FINAL_PREFIX + (final.lstrip("0") or "0")])
