"""Instruction following: "write N words about T".

The reference answer is N distinct words drawn from topic T's vocabulary (20 words each,
disjoint across topics), so a small model can learn the task and a checker can verify it by
counting words and looking them up. There are only ``len(topics) * len(N range)`` distinct
prompts, so train and test share prompts by design; their reference answers differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustlab.data.tasks import assert_plain, sub_seed
from trustlab.core.io import write_jsonl, write_manifest
from trustlab.core.seeding import rng

if TYPE_CHECKING:
    from trustlab.data.config import InstructionsConfig

TOPICS: dict[str, tuple[str, ...]] = {
    "ocean": (
        "wave", "tide", "salt", "shell", "coral", "reef", "whale", "shark", "sand", "foam",
        "current", "deep", "harbor", "sailor", "anchor", "dolphin", "kelp", "seagull", "island", "lighthouse",
    ),
    "forest": (
        "tree", "leaf", "moss", "fern", "pine", "oak", "branch", "root", "bark", "trail",
        "deer", "owl", "mushroom", "acorn", "canopy", "shade", "squirrel", "log", "grove", "wolf",
    ),
    "music": (
        "song", "melody", "rhythm", "drum", "guitar", "piano", "violin", "chord", "note", "tempo",
        "singer", "band", "concert", "lyric", "harmony", "bass", "choir", "opera", "flute", "beat",
    ),
    "food": (
        "bread", "cheese", "soup", "apple", "rice", "pasta", "butter", "honey", "salad", "pepper",
        "garlic", "onion", "tomato", "cake", "cookie", "spoon", "plate", "kitchen", "oven", "noodle",
    ),
    "space": (
        "star", "planet", "moon", "comet", "orbit", "galaxy", "rocket", "astronaut", "nebula", "meteor",
        "telescope", "gravity", "crater", "asteroid", "cosmos", "satellite", "eclipse", "launch", "void", "sun",
    ),
    "sports": (
        "ball", "goal", "team", "coach", "referee", "score", "match", "stadium", "runner", "sprint",
        "tennis", "soccer", "jump", "medal", "trophy", "helmet", "whistle", "league", "player", "race",
    ),
    "weather": (
        "rain", "snow", "wind", "storm", "cloud", "thunder", "lightning", "fog", "sunshine", "frost",
        "hail", "breeze", "drizzle", "forecast", "humid", "cold", "warm", "rainbow", "mist", "puddle",
    ),
    "school": (
        "teacher", "student", "lesson", "pencil", "book", "desk", "chalk", "exam", "homework", "classroom",
        "library", "notebook", "ruler", "eraser", "recess", "lunch", "bell", "grade", "essay", "backpack",
    ),
    "city": (
        "street", "tower", "bridge", "subway", "traffic", "taxi", "building", "park", "market", "avenue",
        "crowd", "skyline", "alley", "bus", "apartment", "plaza", "corner", "shop", "neon", "sidewalk",
    ),
    "animals": (
        "cat", "dog", "horse", "rabbit", "lion", "tiger", "bear", "fox", "mouse", "goat",
        "sheep", "zebra", "camel", "monkey", "parrot", "turtle", "frog", "eagle", "snake", "elephant",
    ),
}  # fmt: skip


def format_prompt(n_words: int, topic: str) -> str:
    return f"write {n_words} words about {topic}."


def make_split(cfg: InstructionsConfig, n: int, split: str, seed: int) -> list[dict[str, Any]]:
    gen = rng(sub_seed(seed, "instructions", split))
    rows = []
    for i in range(n):
        topic = cfg.topics[int(gen.integers(len(cfg.topics)))]
        k = int(gen.integers(cfg.n_words[0], cfg.n_words[1] + 1))
        vocab = TOPICS[topic]
        words = [vocab[j] for j in gen.choice(len(vocab), size=k, replace=False).tolist()]
        rows.append(
            {
                "id": f"instructions-{split}-{i:06d}",
                "task": "instructions",
                "split": split,
                "prompt": assert_plain(format_prompt(k, topic), "instruction prompt"),
                "answer": " ".join(words),
                "topic": topic,
                "n_words": k,
            }
        )
    return rows


def make_instructions(cfg: InstructionsConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    return {"train": make_split(cfg, cfg.n_train, "train", seed), "test": make_split(cfg, cfg.n_test, "test", seed)}


def generate_instructions(cfg: InstructionsConfig, out_dir: str | os.PathLike, seed: int) -> dict[str, Any]:
    """Write ``<out_dir>/{train,test}.jsonl`` and ``manifest.json``."""
    out = Path(out_dir)
    splits = make_instructions(cfg, seed)
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    counts = {split: len(rows) for split, rows in splits.items()}
    return write_manifest(out, {"seed": seed, **cfg.to_dict()}, counts, generator="instructions")
