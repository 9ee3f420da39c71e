"""Multi-digit addition written digit by digit: a task with step-level ground truth.

Prompt ``add by columns: 47+285=`` (the prefix keeps it apart from the ``arithmetic`` task,
whose prompts ask for the result alone); the answer is the column addition from the least significant digit,
one step per column, then the result::

    7+5+0=12; 4+8+1=13; 0+2+1=3; answer 332

Step ``i`` reads ``x+y+c=s``: digit ``i`` (from the right) of each operand (0 past an
operand's end), the carry ``c`` into the column (0 in the first) and the column sum ``s =
x + y + c``, whose last digit is the result's digit ``i`` and whose tens digit (0 or 1) is
the carry into the next column. There are ``max(len(a), len(b))`` steps; a final carry of 1
becomes the result's leading digit. A model that picks the wrong column digit, forgets a
carry or adds wrongly makes a wrong *step*, so errors can be located in the trajectory
(``trustlab.data.checkers.first_wrong_step``).

Record (one JSON line)::

    {"id", "task": "scratchpad", "split", "prompt", "answer", "steps": [str, ...], "final": str,
     "a": int, "b": int, "n_steps": int}

``answer == STEP_SEP.join(steps) + STEP_SEP + FINAL_PREFIX + final``. Operand lengths are
uniform in ``digits``, values uniform among numbers of that length. No (a, b) pair appears
twice in a split or in both splits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trustlab.core.io import write_jsonl, write_manifest
from trustlab.core.seeding import rng
from trustlab.data.tasks import assert_plain, sub_seed

if TYPE_CHECKING:
    from trustlab.data.config import ScratchpadConfig

PROMPT_PREFIX = "add by columns: "  # arithmetic's "47+285=" asks for the result alone
STEP_SEP = "; "  # between steps, and between the last step and the result
FINAL_PREFIX = "answer "  # marks the result after the steps


def format_prompt(a: int, b: int) -> str:
    return f"{PROMPT_PREFIX}{a}+{b}="


def column_steps(a: int, b: int) -> list[str]:
    """The column-addition steps of ``a + b``, least significant column first."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return steps


def format_answer(steps: list[str], final: str) -> str:
    return STEP_SEP.join([*steps, FINAL_PREFIX + final])


def make_record(a: int, b: int, split: str, index: int) -> dict[str, Any]:
    steps = column_steps(a, b)
    final = str(a + b)
    return {
        "id": f"scratchpad-{split}-{index:06d}",
        "task": "scratchpad",
        "split": split,
        "prompt": assert_plain(format_prompt(a, b), "scratchpad prompt"),
        "answer": assert_plain(format_answer(steps, final), "scratchpad answer"),
        "steps": steps,
        "final": final,
        "a": a,
        "b": b,
        "n_steps": len(steps),
    }


def _operand(gen: np.random.Generator, digits: tuple[int, int]) -> int:
    d = int(gen.integers(digits[0], digits[1] + 1))
    return int(gen.integers(0 if d == 1 else 10 ** (d - 1), 10**d))


def _draw(gen: np.random.Generator, n: int, digits: tuple[int, int], seen: set[tuple[int, int]], what: str):
    out: list[tuple[int, int]] = []
    attempts, limit = 0, 100 * n + 10_000
    while len(out) < n:
        attempts += 1
        if attempts > limit:
            raise ValueError(
                f"scratchpad {what}: could not draw {n} distinct problems in {limit} attempts; widen digits "
                f"or lower n_train/n_test"
            )
        pair = (_operand(gen, digits), _operand(gen, digits))
        if pair in seen:
            continue
        seen.add(pair)
        out.append(pair)
    return out


def make_scratchpad(cfg: ScratchpadConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    gen = rng(sub_seed(seed, "scratchpad"))
    seen: set[tuple[int, int]] = set()
    train = _draw(gen, cfg.n_train, cfg.digits, seen, "train")
    test = _draw(gen, cfg.n_test, cfg.digits, seen, "test")
    return {
        split: [make_record(a, b, split, i) for i, (a, b) in enumerate(pairs)]
        for split, pairs in (("train", train), ("test", test))
    }


def generate_scratchpad(cfg: ScratchpadConfig, out_dir: str | os.PathLike, seed: int) -> dict[str, Any]:
    """Write ``<out_dir>/{train,test}.jsonl`` and ``manifest.json``."""
    out = Path(out_dir)
    splits = make_scratchpad(cfg, seed)
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    counts = {split: len(rows) for split, rows in splits.items()}
    return write_manifest(out, {"seed": seed, **cfg.to_dict()}, counts, generator="scratchpad")
