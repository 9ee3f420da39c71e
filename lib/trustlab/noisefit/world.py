"""The stage's data: the synthetic world's QA, the fine-tuning sets and the evaluation items.

* **Fine-tuning set** (setting ``default``): the ``qa_train`` QA plus abstention examples
  (answer = the abstention string) for ``nonexistent_train``. Setting ``new_facts`` adds the
  ``new_facts`` QA (people whose biographies were withheld from pretraining; Gekhman et al.
  2024).
* **Validation and test people**: a fixed, seeded share (``validation_fraction``) of the
  ``qa_heldout`` people and of the ``nonexistent_test`` people is kept for *validation* (the
  noise-scale sweeps choose on it); the test metrics use only the other people. The split is by
  person, so no question about a validation person is ever a test item.
* **Evaluation items**: a fixed subset of ``qa_train``, ``qa_heldout``, ``new_facts`` and
  ``nonexistent_test`` (their test people), the same for every model; the validation items are
  ``qa_train`` and the validation people of ``qa_heldout`` and ``nonexistent_test``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.data.tasks import WORLD_QA_SPLITS, load_people, load_task
from trustlab.noisefit.config import EVAL_SPLITS

SETTINGS = ("default", "new_facts")
SPLIT_BY_PERSON = ("qa_heldout", "nonexistent_test")  # the splits whose people are shared by validation and test
PARTS = ("test", "validation")


@dataclass
class World:
    splits: dict[str, list[dict[str, Any]]]
    abstain: str
    closed_sets: dict[str, list[str]]


def load_world(data_dir: str | Path) -> World:
    """The synthetic world's QA splits (``data/generated/world/`` or ``<data_dir>/world``)."""
    root = world_root(Path(data_dir))
    people = load_people(root)
    splits = {s: load_task(root, "world_qa", s) for s in WORLD_QA_SPLITS}
    return World(splits=splits, abstain=people["abstain"], closed_sets=people["closed_sets"])


def world_root(data_dir: Path) -> Path:
    """The directory whose ``world/`` holds the QA (``data_dir`` or ``data_dir/generated``)."""
    for cand in (data_dir, data_dir / "generated"):
        if (cand / "world" / "people.json").exists():
            return cand
    raise FileNotFoundError(
        f"no world/people.json under {data_dir} or {data_dir / 'generated'}: run the data stage first"
    )


def finetune_pairs(world: World, *, new_facts: bool = False) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: qa_train QA + abstention for nonexistent_train (+ new_facts QA)."""
    splits = ["qa_train", "nonexistent_train"] + (["new_facts"] if new_facts else [])
    return [(r["prompt"], r["answer"]) for s in splits for r in world.splits[s]]


def finetune_dataset(
    world: World, tokenizer, block_size: int, *, new_facts: bool = False, max_examples: int | None = None, seed: int = 0
):
    """``PairDataset`` of :func:`finetune_pairs`, optionally a seeded subset of ``max_examples``."""
    from trustlab.lm.training import PairDataset  # Lightning: only when a dataset is made

    pairs = finetune_pairs(world, new_facts=new_facts)
    if max_examples is not None and len(pairs) > max_examples:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_examples, replace=False))
        pairs = [pairs[i] for i in keep]
    return PairDataset(tokenizer, pairs, block_size)


def validation_people(rows: list[dict[str, Any]], fraction: float, seed: int = 0) -> set[str]:
    """A fixed, seeded ``fraction`` of the people of ``rows`` (at least one, and one fewer than
    all when there are two or more, so that both parts have people)."""
    people = sorted({r["person_id"] for r in rows})
    if not people:
        return set()
    n = min(max(1, round(fraction * len(people))), max(1, len(people) - 1))
    pick = np.random.default_rng([seed, 7919]).choice(len(people), n, replace=False)
    return {people[i] for i in pick}


def split_part(world: World, split: str, part: str, fraction: float, seed: int = 0) -> list[dict[str, Any]]:
    """The records of ``split`` in ``part``: ``test`` or ``validation`` people for the splits in
    :data:`SPLIT_BY_PERSON`; every record of the other splits (``test`` only, except
    ``qa_train``, whose questions were trained on and are in both parts)."""
    if part not in PARTS:
        raise ValueError(f"part = {part!r} is not allowed: choose one of {', '.join(PARTS)}")
    rows = world.splits.get(split, [])
    if split not in SPLIT_BY_PERSON:
        return rows if (part == "test" or split == "qa_train") else []
    val = validation_people(rows, fraction, seed)
    return [r for r in rows if (r["person_id"] in val) == (part == "validation")]


def eval_items(
    world: World, max_items: int, seed: int = 0, *, part: str = "test", validation_fraction: float | None = None
) -> dict[str, list[dict[str, Any]]]:
    """A fixed subset (at most ``max_items``) of every evaluation split, the same for every
    model. With ``validation_fraction``, the ``part`` (``test`` or ``validation``) of the people
    of :data:`SPLIT_BY_PERSON` (see :func:`split_part`); without it, every record (no split)."""
    out = {}
    for i, split in enumerate(EVAL_SPLITS):
        if validation_fraction is None:
            rows = world.splits.get(split, [])
        else:
            rows = split_part(world, split, part, validation_fraction, seed)
        if len(rows) > max_items:
            idx = np.sort(np.random.default_rng([seed, i]).choice(len(rows), max_items, replace=False))
            rows = [rows[j] for j in idx]
        out[split] = rows
    return out
