"""Training data: ready items, the datasets that make them, and the collate function.

Every item is a dict with ``input_ids`` and ``loss_mask`` lists (other keys are carried
along); ``collate`` right-pads them and adds ``attention_mask``. ``PairDataset`` (prompt,
answer pairs), ``TextDataset`` (one text per item), ``PackedTextDataset`` (texts concatenated
and cut into full windows, for pretraining). Mix them with ``torch.utils.data.ConcatDataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


class ExampleDataset(Dataset):
    """A list of ready items: dicts with ``input_ids`` and ``loss_mask`` (lists of ints)."""

    def __init__(self, items: Sequence[dict[str, Any]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]

    @property
    def n_tokens(self) -> int:
        return sum(len(it["input_ids"]) for it in self.items)


class PairDataset(ExampleDataset):
    """``<bos> prompt <sep> answer <eos>``; loss on answer + eos (or on everything after bos
    with ``loss_on_prompt``). Examples longer than ``block_size`` are cut (counted in
    ``n_truncated``)."""

    def __init__(self, tokenizer, pairs: Sequence[tuple[str, str]], block_size: int, *, loss_on_prompt: bool = False):
        items, self.n_truncated = [], 0
        for prompt, answer in pairs:
            ids, mask = tokenizer.encode_example(prompt, answer)
            if loss_on_prompt:
                mask = [0] + [1] * (len(ids) - 1)
            if len(ids) > block_size:
                self.n_truncated += 1
                ids, mask = ids[:block_size], mask[:block_size]
            items.append({"input_ids": ids, "loss_mask": mask})
        super().__init__(items)


class TextDataset(ExampleDataset):
    """One item per text, ``<bos> text <eos>``; texts longer than ``block_size`` are split into
    consecutive windows (loss on every token after the first of the window)."""

    def __init__(self, tokenizer, texts: Sequence[str], block_size: int):
        items = []
        for text in texts:
            ids, _ = tokenizer.encode_text(text)
            for s in range(0, max(len(ids) - 1, 1), block_size):
                chunk = ids[s : s + block_size]
                if len(chunk) >= 2:
                    items.append({"input_ids": chunk, "loss_mask": [0] + [1] * (len(chunk) - 1)})
        super().__init__(items)


class PackedTextDataset(ExampleDataset):
    """All texts as one stream ``<bos> t1 <eos> <bos> t2 <eos> ...`` cut into non-overlapping
    windows of ``block_size`` tokens (the incomplete tail is dropped unless it is all there
    is). No padding; attention crosses document boundaries, as in nanoGPT."""

    def __init__(self, tokenizer, texts: Sequence[str], block_size: int):
        stream: list[int] = []
        for text in texts:
            stream.extend(tokenizer.encode_text(text)[0])
        n = max(len(stream) // block_size, 1)
        items = []
        for i in range(n):
            chunk = stream[i * block_size : (i + 1) * block_size]
            items.append({"input_ids": chunk, "loss_mask": [0] + [1] * (len(chunk) - 1)})
        super().__init__(items)


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad ``input_ids`` (with ``pad_id``) and ``loss_mask`` (with 0); add
    ``attention_mask``. Other keys: numbers become a tensor, anything else a list."""
    T = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(items), T), dtype=torch.long)
    loss = torch.zeros((len(items), T), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        attn[i, :n] = 1
        loss[i, :n] = torch.as_tensor(it["loss_mask"], dtype=torch.long)
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}
    for key in items[0]:
        if key in batch:
            continue
        values = [it[key] for it in items]
        is_num = all(isinstance(v, (int, float, bool)) for v in values)
        batch[key] = torch.tensor(values) if is_num else values
    return batch


class Collate:
    """Picklable ``collate`` with a fixed pad id (for DataLoader workers)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        return collate(items, self.pad_id)

