"""Context faithfulness: copy a variable's value from the prompt.

Prompt ``a=7;b=3;c=9. b?`` -> answer ``3``. Variable names are distinct lowercase letters
in random order, values are integers ``0..value_max`` (they may repeat), the queried
variable is uniform among them. No prompt appears twice in a split or in both splits.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustlab.data.tasks import assert_plain, sub_seed
from trustlab.core.io import write_jsonl, write_manifest
from trustlab.core.seeding import rng

if TYPE_CHECKING:
    from trustlab.data.config import ContextCopyConfig

LETTERS = string.ascii_lowercase


def format_prompt(assignments: list[tuple[str, int]], query: str) -> str:
    return ";".join(f"{k}={v}" for k, v in assignments) + f". {query}?"


def _draw(cfg: ContextCopyConfig, n: int, split: str, seed: int, seen: set[str]) -> list[dict[str, Any]]:
    gen = rng(sub_seed(seed, "context_copy", split))
    rows: list[dict[str, Any]] = []
    attempts, limit = 0, 100 * n + 10_000
    while len(rows) < n:
        attempts += 1
        if attempts > limit:
            raise ValueError(
                f"context_copy {split}: could not draw {n} distinct prompts in {limit} attempts; "
                f"widen n_vars or value_max"
            )
        k = int(gen.integers(cfg.n_vars[0], cfg.n_vars[1] + 1))
        names = [LETTERS[j] for j in gen.choice(len(LETTERS), size=k, replace=False).tolist()]
        values = [int(v) for v in gen.integers(0, cfg.value_max + 1, size=k)]
        q = int(gen.integers(k))
        prompt = format_prompt(list(zip(names, values)), names[q])
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(
            {
                "id": f"context_copy-{split}-{len(rows):06d}",
                "task": "context_copy",
                "split": split,
                "prompt": assert_plain(prompt, "context_copy prompt"),
                "answer": str(values[q]),
                "vars": dict(zip(names, values)),
                "names": names,
                "query": names[q],
                "query_position": q,
                "n_vars": k,
            }
        )
    return rows


def make_context_copy(cfg: ContextCopyConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    seen: set[str] = set()
    train = _draw(cfg, cfg.n_train, "train", seed, seen)
    test = _draw(cfg, cfg.n_test, "test", seed, seen)
    return {"train": train, "test": test}


def generate_context_copy(cfg: ContextCopyConfig, out_dir: str | os.PathLike, seed: int) -> dict[str, Any]:
    """Write ``<out_dir>/{train,test}.jsonl`` and ``manifest.json``."""
    out = Path(out_dir)
    splits = make_context_copy(cfg, seed)
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    counts = {split: len(rows) for split, rows in splits.items()}
    return write_manifest(out, {"seed": seed, **cfg.to_dict()}, counts, generator="context_copy")
