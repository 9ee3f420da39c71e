"""The pretraining mix, built from the generated data (``<data>/generated``):

===================  ==============================================================
component            what (``mix.<name>`` = copies per pass; 0 leaves it out)
===================  ==============================================================
``bios``             biographies of the ``qa_train`` and ``qa_heldout`` people
``qa_train``         QA pairs of ``qa_train`` people (mixed training: it is what lets a
                     small model answer questions about people it only read about)
``arithmetic``       ``arithmetic/train``
``instructions``     ``instructions/train``
``context_copy``     ``context_copy/train``
``scratchpad``       ``scratchpad/train`` (column addition, trained on every step and the result)
``nonexistent_train``  abstention examples (default 0: the base model is *not* taught to
                     abstain, so its answers about non-existent people are the
                     hallucination baseline that fine-tuning starts from)
``code``             a slice of the code corpus (``code_max_chars`` characters)
===================  ==============================================================

Every text or example is one segment (``<bos> ... <eos>``); the segments of all components
are shuffled (seeded) and packed into rows of ``block_size`` tokens (:func:`pack_segments`:
texts may continue in the next row, examples never do), so no step is spent on padding.

Never in the mix, by construction (there is no key for them): the biographies of
``new_facts`` people, and the QA of ``qa_heldout`` (held-out knowledge extraction),
``new_facts`` and ``nonexistent_test``. Prompt/answer components are trained on the answer
only (``<bos> prompt <sep> answer <eos>``, loss on answer + eos); text is trained on every
token. A fractional copy count takes a seeded subset for the last copy. The copies are
relative weights: training runs ``steps`` batches, cycling over the mix as often as that takes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.core.config import ConfigError
from trustlab.data import tasks as T
from trustlab.lm.base_model.config import MIX_COMPONENTS, BaseModelConfig
from trustlab.lm.base_model.corpus import code_texts

# components made of (prompt, answer) records: name -> (task, split)
PAIR_COMPONENTS: dict[str, tuple[str, str]] = {
    "qa_train": ("world_qa", "qa_train"),
    "arithmetic": ("arithmetic", "train"),
    "instructions": ("instructions", "train"),
    "context_copy": ("context_copy", "train"),
    "scratchpad": ("scratchpad", "train"),
    "nonexistent_train": ("world_qa", "nonexistent_train"),
}
# every (task, split) the checkers can score


@dataclass
class Mix:
    """The pretraining dataset and what it is made of."""

    dataset: Any  # an ExampleDataset of rows (packed) or a ConcatDataset of per-component datasets
    components: dict[str, dict[str, Any]]  # name -> {copies, source_items, segments, tokens, trained_tokens}
    trained_splits: list[tuple[str, str]]  # (task, split) whose prompt/answer pairs are trained on
    bio_splits: list[str]  # person splits whose biographies are trained on

    @property
    def n_items(self) -> int:
        return len(self.dataset)

    def table(self) -> list[dict[str, Any]]:
        return [{"component": k, **v} for k, v in self.components.items()]


@dataclass(frozen=True)
class Segment:
    """One training document: ``input_ids`` with its ``loss_mask``. A text (``splittable``) may
    be cut across rows; a prompt/answer example never is (its answer needs its prompt)."""

    input_ids: list[int]
    loss_mask: list[int]
    splittable: bool
    component: str


def _copies(items: list, copies: float, seed: int, name: str) -> list:
    """``copies`` copies of ``items``; the fractional part is a seeded subset."""
    whole, frac = int(copies), copies - int(copies)
    out = [x for _ in range(whole) for x in items]
    if frac > 0 and items:
        k = round(frac * len(items))
        pick = np.sort(np.random.default_rng(T.sub_seed(seed, "mix", name)).choice(len(items), k, replace=False))
        out += [items[i] for i in pick]
    return out


def pack_segments(segments: Sequence[Segment], block_size: int) -> list[dict[str, Any]]:
    """Greedy packing, in order, into rows of at most ``block_size`` tokens: texts fill the
    room left in a row and continue in the next one; an example that does not fit in the
    room left starts a new row (the short row is padded by ``collate``). Attention crosses
    segment boundaries within a row, as in nanoGPT; every segment starts with ``<bos>``."""
    rows: list[dict[str, Any]] = []
    ids: list[int] = []
    mask: list[int] = []

    def flush():
        nonlocal ids, mask
        if len(ids) >= 2:
            rows.append({"input_ids": ids, "loss_mask": mask})
        ids, mask = [], []

    for seg in segments:
        if len(seg.input_ids) > block_size and not seg.splittable:
            raise ValueError(
                f"a {seg.component} example of {len(seg.input_ids)} tokens does not fit block_size = {block_size}"
            )
        if not seg.splittable and len(ids) + len(seg.input_ids) > block_size:
            flush()
        pos = 0
        while pos < len(seg.input_ids):
            room = block_size - len(ids)
            ids = ids + seg.input_ids[pos : pos + room]
            mask = mask + seg.loss_mask[pos : pos + room]
            pos += room
            if len(ids) == block_size:
                flush()
    flush()
    return rows


def component_segments(
    gen_dir: str | os.PathLike, tokenizer, cfg: BaseModelConfig, name: str
) -> tuple[list[Segment], int]:
    """The segments of one mix component (its copies included) and its number of source items."""
    if name in ("bios", "code"):
        source = T.pretraining_texts(gen_dir) if name == "bios" else code_texts(gen_dir, cfg.code_max_chars)
        segs = []
        for text in source:
            ids, mask = tokenizer.encode_text(text)
            segs.append(Segment(ids, mask, True, name))
    else:
        task, split = PAIR_COMPONENTS[name]
        source = T.load_task(gen_dir, task, split)
        segs = []
        for r in source:
            ids, mask = tokenizer.encode_example(r["prompt"], r["answer"])
            if len(ids) > cfg.block_size:
                raise ConfigError(
                    f"base_model.block_size = {cfg.block_size} is too small: the {task}/{split} example "
                    f"{r['id']} has {len(ids)} tokens; raise block_size"
                )
            segs.append(Segment(ids, mask, False, name))
    return _copies(segs, cfg.mix_copies(name), cfg.seed, name), len(source)


def build_mix(gen_dir: str | os.PathLike, tokenizer, cfg: BaseModelConfig) -> Mix:
    """The pretraining mix (see the module docstring); deterministic given ``cfg.seed``.

    ``packing`` (default): all segments in one seeded random order, packed into rows of
    ``block_size`` tokens (:func:`pack_segments`) — no compute is spent on padding. Without
    packing: one row per example, texts cut into ``block_size`` windows."""
    from torch.utils.data import ConcatDataset

    from trustlab.lm.training import ExampleDataset

    gen_dir = Path(gen_dir)
    components, trained, bio_splits = {}, [], []
    all_segments: list[Segment] = []
    per_component: dict[str, list[Segment]] = {}
    for name in MIX_COMPONENTS:
        if cfg.mix_copies(name) <= 0:
            continue
        segs, n_source = component_segments(gen_dir, tokenizer, cfg, name)
        if not segs:
            continue
        if name == "bios":
            bio_splits = list(T.PRETRAIN_SPLITS)
        elif name in PAIR_COMPONENTS:
            trained.append(PAIR_COMPONENTS[name])
        per_component[name] = segs
        all_segments.extend(segs)
        components[name] = {
            "copies": cfg.mix_copies(name),
            "source_items": n_source,
            "segments": len(segs),
            "tokens": sum(len(x.input_ids) for x in segs),
            "trained_tokens": sum(sum(x.loss_mask) for x in segs),
        }
    if not all_segments:
        raise ConfigError("base_model.mix selects no training data (every selected component is empty)")
    total = sum(c["tokens"] for c in components.values())
    for c in components.values():
        c["token_share"] = round(c["tokens"] / total, 4)
    if cfg.packing:
        order = np.random.default_rng(T.sub_seed(cfg.seed, "pack")).permutation(len(all_segments))
        dataset = ExampleDataset(pack_segments([all_segments[i] for i in order], cfg.block_size))
    else:
        parts = []
        for segs in per_component.values():
            rows = []
            for seg in segs:
                if seg.splittable:
                    rows += pack_segments([seg], cfg.block_size)
                else:
                    rows.append({"input_ids": seg.input_ids, "loss_mask": seg.loss_mask})
            parts.append(ExampleDataset(rows))
        dataset = ConcatDataset(parts)
    return Mix(dataset, components, trained, bio_splits)

