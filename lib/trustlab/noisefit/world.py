"""The stage's data: the synthetic world's QA, the fine-tuning sets and the evaluation items.

* **Fine-tuning set** (setting ``default``): the ``qa_train`` QA plus abstention examples
  (answer = the abstention string) for ``nonexistent_train``. Setting ``new_facts`` adds the
  ``new_facts`` QA (people whose biographies were withheld from pretraining; Gekhman et al.
  2024).
* **Evaluation items**: a fixed subset of ``qa_train``, ``qa_heldout``, ``new_facts`` and
  ``nonexistent_test``, the same for every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.data.tasks import WORLD_QA_SPLITS, load_people, load_task
from trustlab.noisefit.config import EVAL_SPLITS

SETTINGS = ("default", "new_facts")


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


def eval_items(world: World, max_items: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """A fixed subset (at most ``max_items``) of every evaluation split, the same for every model."""
    out = {}
    for i, split in enumerate(EVAL_SPLITS):
        rows = world.splits.get(split, [])
        if len(rows) > max_items:
            idx = np.sort(np.random.default_rng([seed, i]).choice(len(rows), max_items, replace=False))
            rows = [rows[j] for j in idx]
        out[split] = rows
    return out
