"""The base model's tokenizer recipe and the texts it covers.

:func:`fit_tokenizer` fits a word-level tokenizer on every generated prompt, answer and
biography (so every split decodes exactly), with ``answer_space=True``: an answer is encoded
as ``" " + answer``, so that the answer ``Zurich`` is the same token as `` Zurich`` in the
biographies. Without this, the knowledge read from the biographies sits on a token the answer
never uses, and held-out extraction fails.
"""

from __future__ import annotations

import os
from pathlib import Path

from trustlab.data import tasks as T
from trustlab.lm.base_model.config import BaseModelConfig
from trustlab.lm.tokenizer import WordTokenizer


def generated_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/generated`` when it exists, else ``data_dir`` itself (already the generated dir)."""
    d = Path(data_dir)
    return d / "generated" if (d / "generated").is_dir() else d


def corpus_texts(gen_dir: str | os.PathLike, code_max_chars: int = 0, answer_space: bool = True) -> list[str]:
    """Every text the tokenizer must cover: all biographies, all prompts and answers of every
    task split (so that evaluation never meets an unknown piece), and the code slice."""
    gen_dir = Path(gen_dir)
    answer_prefix = " " if answer_space else ""
    texts = [b["text"] for b in T.load_bios(gen_dir)]
    for task in T.CHECKED_TASKS:
        for split in T.task_splits(task):
            for r in T.load_task(gen_dir, task, split):
                texts.append(r["prompt"])
                texts.append(answer_prefix + r["answer"])  # as encode_answer will see it
    texts.extend(code_texts(gen_dir, code_max_chars))
    return texts


def code_texts(gen_dir: str | os.PathLike, max_chars: int) -> list[str]:
    """The first ``max_chars`` characters of the code corpus's train split, whole files in
    file order (the last one cut)."""
    if max_chars <= 0:
        return []
    out, used = [], 0
    for r in T.load_code(gen_dir, "train"):
        if used >= max_chars:
            break
        text = r["text"][: max_chars - used]
        out.append(text)
        used += len(text)
    return out


def fit_tokenizer(gen_dir: str | os.PathLike, cfg: BaseModelConfig) -> WordTokenizer:
    """The tokenizer of a base model trained with ``cfg`` on the data in ``gen_dir``."""
    code_chars = cfg.code_max_chars if cfg.mix_copies("code") > 0 else 0
    return WordTokenizer.fit(
        corpus_texts(gen_dir, code_chars, cfg.answer_space), min_freq=cfg.min_freq, answer_space=cfg.answer_space
    )
