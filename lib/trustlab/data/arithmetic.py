"""Addition and multiplication problems with exact answers.

In-distribution problems (``train``, ``test``) have operands of ``add_digits`` /
``mul_digits`` digits; ``ood`` has longer operands. Each operand's length is drawn
uniformly from the range and its value uniformly among numbers of that length (so short
operands are not swamped by long ones). No (a, b, op) triple appears twice in a split or in
both ``train`` and ``test``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trustlab.data.tasks import assert_plain, sub_seed
from trustlab.core.io import write_jsonl, write_manifest
from trustlab.core.seeding import rng

if TYPE_CHECKING:
    from trustlab.data.config import ArithmeticConfig

OPS = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}


def format_prompt(a: int, b: int, op: str, style: str = "compact") -> str:
    if style == "compact":
        return f"{a}{op}{b}="
    if style == "question":
        return f"what is {a} {op} {b}?"
    raise ValueError(f"prompt_style = {style!r} is not allowed: choose 'compact' or 'question'")


def format_answer(result: int, reverse: bool = False) -> str:
    s = str(result)
    return s[::-1] if reverse else s


def _count_numbers(digits: tuple[int, int]) -> int:
    lo, hi = digits
    return 10**hi - (0 if lo == 1 else 10 ** (lo - 1))


def _operand(gen: np.random.Generator, digits: tuple[int, int]) -> int:
    d = int(gen.integers(digits[0], digits[1] + 1))
    return int(gen.integers(0 if d == 1 else 10 ** (d - 1), 10**d))


def _sample(
    gen: np.random.Generator,
    n: int,
    add_digits: tuple[int, int],
    mul_digits: tuple[int, int],
    mul_fraction: float,
    exclude: set[tuple[int, int, str]],
    what: str,
) -> list[tuple[int, int, str]]:
    """``n`` distinct triples not in ``exclude`` (which is updated)."""
    capacity = (_count_numbers(add_digits) ** 2 if mul_fraction < 1 else 0) + (
        _count_numbers(mul_digits) ** 2 if mul_fraction > 0 else 0
    )
    if n + len(exclude) > capacity:
        raise ValueError(
            f"arithmetic {what}: {n} distinct problems requested (plus {len(exclude)} excluded) but the digit "
            f"ranges allow only {capacity}: lower n_train/n_test/n_ood or widen the digit ranges"
        )
    out: list[tuple[int, int, str]] = []
    attempts, limit = 0, 100 * n + 10_000
    while len(out) < n:
        attempts += 1
        if attempts > limit:
            raise ValueError(
                f"arithmetic {what}: could not draw {n} distinct problems in {limit} attempts; "
                f"the digit ranges are too narrow for n_train/n_test/n_ood (or mul_fraction)"
            )
        op = "*" if gen.random() < mul_fraction else "+"
        digits = mul_digits if op == "*" else add_digits
        a, b = _operand(gen, digits), _operand(gen, digits)
        if (a, b, op) in exclude:
            continue
        exclude.add((a, b, op))
        out.append((a, b, op))
    return out


def make_record(a: int, b: int, op: str, split: str, index: int, cfg: ArithmeticConfig) -> dict[str, Any]:
    result = OPS[op](a, b)
    return {
        "id": f"arithmetic-{split}-{index:06d}",
        "task": "arithmetic",
        "split": split,
        "prompt": assert_plain(format_prompt(a, b, op, cfg.prompt_style), "arithmetic prompt"),
        "answer": format_answer(result, cfg.reverse_answer),
        "a": a,
        "b": b,
        "op": op,
        "result": result,
        "digits": [len(str(a)), len(str(b))],
        "reversed": cfg.reverse_answer,
    }


def make_arithmetic(cfg: ArithmeticConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    seen: set[tuple[int, int, str]] = set()
    gen = rng(sub_seed(seed, "arithmetic", "in_distribution"))
    train = _sample(gen, cfg.n_train, cfg.add_digits, cfg.mul_digits, cfg.mul_fraction, seen, "train")
    test = _sample(gen, cfg.n_test, cfg.add_digits, cfg.mul_digits, cfg.mul_fraction, seen, "test")
    gen_ood = rng(sub_seed(seed, "arithmetic", "ood"))
    ood = _sample(gen_ood, cfg.n_ood, cfg.add_ood_digits, cfg.mul_ood_digits, cfg.mul_fraction, set(), "ood")
    return {
        split: [make_record(a, b, op, split, i, cfg) for i, (a, b, op) in enumerate(triples)]
        for split, triples in (("train", train), ("test", test), ("ood", ood))
    }


def generate_arithmetic(cfg: ArithmeticConfig, out_dir: str | os.PathLike, seed: int) -> dict[str, Any]:
    """Write ``<out_dir>/{train,test,ood}.jsonl`` and ``manifest.json``."""
    out = Path(out_dir)
    splits = make_arithmetic(cfg, seed)
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    counts = {split: len(rows) for split, rows in splits.items()}
    counts["multiplications"] = {split: sum(r["op"] == "*" for r in rows) for split, rows in splits.items()}
    return write_manifest(out, {"seed": seed, **cfg.to_dict()}, counts, generator="arithmetic")
