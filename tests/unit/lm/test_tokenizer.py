"""Tokenizers: determinism, round trip, example layout, save/load."""

from __future__ import annotations

import pytest

from trustlab.lm.tokenizer import SPECIALS, ByteTokenizer, WordTokenizer, load_tokenizer

TEXTS = [
    "Alice Smith was born in Paris in 1987. She works for Acme!",
    "Who wrote Brave New World? Aldous Huxley wrote Brave New World.",
    "12+34=46\n  x = f(a, b)  # done",
]


def test_word_pieces_and_round_trip():
    tok = WordTokenizer.fit(TEXTS)
    assert tok.itos[: len(SPECIALS)] == list(SPECIALS)
    assert tok.tokenize("born in 1987.") == ["born", " in", " 1", "9", "8", "7", "."]
    for t in TEXTS:
        assert tok.decode(tok.encode(t)) == t
        assert tok.unk_id not in tok.encode(t)
    assert tok.decode(tok.encode(" Paris was born")) == " Paris was born"
    assert tok.encode("Zebra") == [tok.unk_id]


def test_vocab_is_deterministic_frequency_then_lexicographic():
    a = WordTokenizer.fit(TEXTS)
    b = WordTokenizer.fit(list(reversed(TEXTS)))
    assert a.itos == b.itos
    body = a.itos[len(SPECIALS) :]
    counts = {p: sum(WordTokenizer.fit([t]).tokenize(t).count(p) for t in TEXTS) for p in body}
    assert body == sorted(body, key=lambda p: (-counts[p], p))
    small = WordTokenizer.fit(TEXTS, max_vocab=10)
    assert small.vocab_size == 10


def test_example_layout_and_mask():
    tok = WordTokenizer.fit(TEXTS)
    ids, mask = tok.encode_example("Who wrote Brave New World?", " Aldous Huxley")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    sep = ids.index(tok.sep_id)
    assert mask == [0] * (sep + 1) + [1] * (len(ids) - sep - 1)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == " Aldous Huxley"
    assert tok.decode(ids, skip_special=False).startswith("<bos>Who")
    assert ids[: sep + 1] == tok.encode_prompt("Who wrote Brave New World?")


@pytest.mark.parametrize("make", [lambda: WordTokenizer.fit(TEXTS), ByteTokenizer])
def test_save_load(tmp_path, make):
    tok = make()
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    for t in TEXTS:
        assert again.encode(t) == tok.encode(t)


def test_byte_tokenizer():
    tok = ByteTokenizer()
    assert tok.vocab_size == 261 and tok.pad_id == 256
    s = "déjà vu\n\tprint(1)"
    assert tok.decode(tok.encode(s)) == s
    ids, mask = tok.encode_example("a", "é")
    assert tok.decode(ids) == "aé" and sum(mask) == len("é".encode()) + 1
    assert tok.decode(ids, skip_special=False) == "<bos>a<sep>é<eos>"
