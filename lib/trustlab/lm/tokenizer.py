"""Deterministic tokenizers with one interface: a word-level one (fit on texts) and a byte one.

Word pieces keep their leading space (`` ?[A-Za-z]+``, `` ?\\d``, `` ?<punct>``, ``\\s``), digits
are single tokens, so ``decode`` is concatenation and ``decode(encode(x)) == x`` whenever every
piece of ``x`` was seen by ``fit``. Special tokens come first: ``<pad> <bos> <eos> <sep> <unk>``.
Special-token strings inside text are *not* parsed as specials.

Example layout (``encode_example``):  ``<bos> prompt <sep> answer <eos>``, loss mask 1 only on the
answer tokens and ``<eos>``. ``encode_prompt`` gives the prefix ``<bos> prompt <sep>`` that
generation continues.

Answers go through ``encode_answer``. A ``WordTokenizer`` built with ``answer_space=True`` encodes
an answer that does not start with whitespace as ``" " + answer``, so that the answer ``Paris``
is the same token as `` Paris`` in running text (a biography); without it the word tokenizer
would give the answer its own, unspaced token and knowledge read from the biographies would
not reach the answer token. Decoded answers then start with a space; the answer checkers
normalise whitespace. The flag is saved with the tokenizer.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from trustlab.core.io import atomic_write_text

SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<unk>")
WORD_PATTERN = r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\s"
TOKENIZER_FILE = "tokenizer.json"


class _Tokenizer:
    """Shared behaviour; subclasses set ``self.specials`` (name -> id) and implement
    ``encode``, ``_piece`` and ``_join``."""

    specials: dict[str, int]
    kind: str

    # special ids
    @property
    def pad_id(self) -> int:
        return self.specials["<pad>"]

    @property
    def bos_id(self) -> int:
        return self.specials["<bos>"]

    @property
    def eos_id(self) -> int:
        return self.specials["<eos>"]

    @property
    def sep_id(self) -> int:
        return self.specials["<sep>"]

    @property
    def unk_id(self) -> int:
        return self.specials["<unk>"]

    @property
    def special_ids(self) -> set[int]:
        return set(self.specials.values())

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_prompt(self, prompt: str) -> list[int]:
        """``<bos> prompt <sep>``: the prefix from which an answer is generated."""
        return [self.bos_id, *self.encode(prompt), self.sep_id]

    def encode_answer(self, answer: str) -> list[int]:
        """The tokens of an answer as it follows ``<sep>`` (see the module docstring)."""
        return self.encode(answer)

    def encode_example(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """``<bos> prompt <sep> answer <eos>`` and a loss mask that is 1 on answer + eos."""
        p = self.encode_prompt(prompt)
        a = [*self.encode_answer(answer), self.eos_id]
        return p + a, [0] * len(p) + [1] * len(a)

    def encode_text(self, text: str) -> tuple[list[int], list[int]]:
        """Raw text for language modelling: ``<bos> text <eos>``, loss on everything after bos."""
        ids = [self.bos_id, *self.encode(text), self.eos_id]
        return ids, [0] + [1] * (len(ids) - 1)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, json.dumps(self._state(), indent=1) + "\n")
        return path


class WordTokenizer(_Tokenizer):
    kind = "word"

    def __init__(self, vocab: Sequence[str], pattern: str = WORD_PATTERN, *, answer_space: bool = False):
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocab must start with the special tokens {SPECIALS}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has duplicate tokens")
        self.pattern = pattern
        self._re = re.compile(pattern)
        self.itos = vocab
        self.stoi = {s: i for i, s in enumerate(vocab)}
        self.specials = {s: self.stoi[s] for s in SPECIALS}
        self.answer_space = bool(answer_space)

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        *,
        min_freq: int = 1,
        max_vocab: int | None = None,
        pattern: str = WORD_PATTERN,
        answer_space: bool = False,
    ):
        """Vocabulary: specials, then pieces by descending count, ties broken lexicographically."""
        counts = Counter()
        rx = re.compile(pattern)
        for text in texts:
            counts.update(rx.findall(text))
        kept = (p for p, c in counts.items() if c >= min_freq and p not in SPECIALS)
        pieces = sorted(kept, key=lambda p: (-counts[p], p))
        if max_vocab is not None:
            pieces = pieces[: max(0, max_vocab - len(SPECIALS))]
        return cls([*SPECIALS, *pieces], pattern, answer_space=answer_space)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        pieces = self._re.findall(text)
        if sum(map(len, pieces)) != len(text):  # only if a custom pattern skips characters
            raise ValueError(f"pattern {self.pattern!r} does not cover all of {text!r}")
        return pieces

    def encode(self, text: str) -> list[int]:
        unk = self.unk_id
        return [self.stoi.get(p, unk) for p in self.tokenize(text)]

    def encode_answer(self, answer: str) -> list[int]:
        if self.answer_space and answer and not answer[0].isspace():
            answer = " " + answer
        return self.encode(answer)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        special = self.special_ids
        return "".join(self.itos[i] for i in map(int, ids) if not (skip_special and i in special))

    def _state(self) -> dict:
        state = {"type": self.kind, "pattern": self.pattern, "vocab": self.itos}
        if self.answer_space:  # written only when set: older tokenizer files stay byte-identical
            state["answer_space"] = True
        return state

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WordTokenizer":
        state = _read_state(directory, cls.kind)
        return cls(state["vocab"], state["pattern"], answer_space=bool(state.get("answer_space", False)))


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes 0..255, then the specials 256..260. Decoding invalid UTF-8 (a sampled
    byte sequence) uses replacement characters."""

    kind = "byte"

    def __init__(self):
        self.specials = {s: 256 + i for i, s in enumerate(SPECIALS)}

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        names = {v: k for k, v in self.specials.items()}
        out, buf = [], bytearray()
        for i in map(int, ids):
            if i < 256:
                buf.append(i)
                continue
            if not skip_special:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(names[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def _state(self) -> dict:
        return {"type": self.kind}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ByteTokenizer":
        _read_state(directory, cls.kind)
        return cls()


TOKENIZERS = {"word": WordTokenizer, "byte": ByteTokenizer}


def _read_state(directory, kind: str | None = None) -> dict:
    path = Path(directory) / TOKENIZER_FILE
    state = json.loads(path.read_text(encoding="utf-8"))
    if kind is not None and state.get("type") != kind:
        raise ValueError(f"{path} holds a {state.get('type')!r} tokenizer, not {kind!r}")
    return state


def load_tokenizer(directory: str | os.PathLike) -> WordTokenizer | ByteTokenizer:
    """Load whichever tokenizer ``save`` wrote into ``directory``."""
    kind = _read_state(directory).get("type")
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer type {kind!r} in {directory}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].load(directory)
