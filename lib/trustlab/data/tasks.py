"""Task names, the on-disk layout and loading helpers for the generated data.

Layout under a data directory (``trustlab.core.paths.data_dir()`` by default)::

    manifest.json                  generate_all: params, counts, sha256 of every file, fingerprint
    world/people.json              closed sets, real people (with split) and non-existent people
    world/bios.jsonl               biographies (task "world_bio"; split = the person's split)
    world/<split>.jsonl            QA (task "world_qa"): qa_train, qa_heldout, new_facts,
                                   nonexistent_train, nonexistent_test
    world/manifest.json
    arithmetic/{train,test,ood}.jsonl + manifest.json
    instructions/{train,test}.jsonl + manifest.json
    context_copy/{train,test}.jsonl + manifest.json
    scratchpad/{train,test}.jsonl  + manifest.json   (column addition with its steps)
    code/files.jsonl               one record per source file (task "code"; split train / val)
    code/manifest.json             + python version, stdlib path, corpus sha256

Every prompt/answer record has at least ``id, task, split, prompt, answer``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from trustlab.core.io import DataFileError, read_json, read_jsonl, sha256_file

# task name -> (sub-directory, splits). File of a split: <dir>/<split>.jsonl.
WORLD_QA_SPLITS = ("qa_train", "qa_heldout", "new_facts", "nonexistent_train", "nonexistent_test")
REAL_SPLITS = ("qa_train", "qa_heldout", "new_facts")
PRETRAIN_SPLITS = ("qa_train", "qa_heldout")  # people whose biographies are in pretraining
NONEXISTENT_SPLITS = ("nonexistent_train", "nonexistent_test")

TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "world_qa": ("world", WORLD_QA_SPLITS),
    "arithmetic": ("arithmetic", ("train", "test", "ood")),
    "instructions": ("instructions", ("train", "test")),
    "context_copy": ("context_copy", ("train", "test")),
    "scratchpad": ("scratchpad", ("train", "test")),
}
CHECKED_TASKS = tuple(TASKS)
GENERATORS = ("world", "arithmetic", "instructions", "context_copy", "scratchpad", "code_corpus")

# Plain text for prompts and answers: letters, digits, single spaces, basic punctuation.
PLAIN_TEXT = re.compile(r"[A-Za-z0-9.,?:;=+*\-]+( [A-Za-z0-9.,?:;=+*\-]+)*")


def sub_seed(seed: int, *names: Any) -> int:
    """A 63-bit seed derived from ``seed`` and a path of names (stable across Python runs)."""
    blob = json.dumps([int(seed), *[str(n) for n in names]]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def is_plain(text: str) -> bool:
    """True if ``text`` is non-empty plain text (no tabs, newlines, double or edge spaces)."""
    return bool(PLAIN_TEXT.fullmatch(text))


def assert_plain(text: str, what: str) -> str:
    if not is_plain(text):
        raise ValueError(f"{what} = {text!r} is not plain text (letters, digits, single spaces, . , ? : ; = + * -)")
    return text


def task_path(data_dir: str | os.PathLike, task: str, split: str) -> Path:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known tasks are {', '.join(TASKS)}")
    sub, splits = TASKS[task]
    if split not in splits:
        raise KeyError(f"task {task!r} has no split {split!r}; its splits are {', '.join(splits)}")
    return Path(data_dir) / sub / f"{split}.jsonl"


def task_splits(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known tasks are {', '.join(TASKS)}")
    return TASKS[task][1]


def load_task(data_dir: str | os.PathLike, task: str, split: str) -> list[dict[str, Any]]:
    """The records of one task split, in file order."""
    path = task_path(data_dir, task, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run pipelines/generate_data.py (or generate_all) first")
    ensure_intact(data_dir)
    return read_jsonl(path)


def pairs(records: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(prompt, answer)`` tuples, e.g. for ``trustlab.lm.training.PairDataset``."""
    return [(r["prompt"], r["answer"]) for r in records]


def load_people(data_dir: str | os.PathLike) -> dict[str, Any]:
    """``world/people.json``: ``{"abstain", "attributes", "closed_sets", "people", "nonexistent"}``."""
    ensure_intact(data_dir)
    return read_json(Path(data_dir) / "world" / "people.json")


def load_bios(data_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Biography records, optionally only of people in ``splits``."""
    ensure_intact(data_dir)
    rows = read_jsonl(Path(data_dir) / "world" / "bios.jsonl")
    if splits is not None:
        bad = sorted(set(splits) - set(REAL_SPLITS))
        if bad:
            raise KeyError(f"bios have no split {bad}; person splits are {', '.join(REAL_SPLITS)}")
        rows = [r for r in rows if r["split"] in splits]
    return rows


def pretraining_texts(data_dir: str | os.PathLike) -> list[str]:
    """Biography texts that belong in pretraining (people in qa_train and qa_heldout; the
    new_facts people's biographies are withheld)."""
    return [r["text"] for r in load_bios(data_dir, PRETRAIN_SPLITS)]


def load_code(data_dir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """Code-corpus file records (``path, text, sha256, n_bytes, split``), optionally one split."""
    ensure_intact(data_dir)
    rows = read_jsonl(Path(data_dir) / "code" / "files.jsonl")
    if split is not None:
        if split not in ("train", "val"):
            raise KeyError(f"code corpus has no split {split!r}; its splits are train, val")
        rows = [r for r in rows if r["split"] == split]
    return rows


def load_manifest(data_dir: str | os.PathLike, sub: str | None = None) -> dict[str, Any]:
    base = Path(data_dir) / sub if sub else Path(data_dir)
    return read_json(base / "manifest.json")


_VERIFIED: set[Path] = set()


def ensure_intact(data_dir: str | os.PathLike) -> None:
    """Check every file the top-level manifest lists against its sha256, once per process and
    data directory; raise :class:`~trustlab.core.io.DataFileError` naming the files that differ."""
    base = Path(data_dir).resolve()
    if base in _VERIFIED or not (base / "manifest.json").exists():
        return
    bad = verify(base)
    if bad:
        raise DataFileError(
            f"{', '.join(str(base / b) for b in bad[:5])}{' ...' if len(bad) > 5 else ''}: missing, or its sha256 "
            f"differs from {base / 'manifest.json'}; the generated data was edited or truncated: regenerate it "
            f"(dvc repro data)"
        )
    _VERIFIED.add(base)


def verify(data_dir: str | os.PathLike, sub: str | None = None) -> list[str]:
    """Files whose sha256 differs from the manifest (or that are missing); empty = intact."""
    base = Path(data_dir) / sub if sub else Path(data_dir)
    manifest = read_json(base / "manifest.json")
    bad = []
    for rel, digest in manifest["files"].items():
        p = base / rel
        if not p.exists() or sha256_file(p) != digest:
            bad.append(rel)
    return bad
