"""Model-side statistics and injected errors: prompts, splits, answer spans, generation with a
tiny GPT, storage round trip, reuse, corruptions and teacher-forced scoring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trustlab.data.checkers import extract_answer, is_correct
from trustlab.error_detection import collect as C
from trustlab.error_detection import inject as I
from trustlab.error_detection.statistics import GenerationStats
from trustlab.lm.generation import generate, score_continuations
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.tokenizer import WordTokenizer

ROOT = Path(__file__).resolve().parents[3]
TASKS = {"arithmetic": 6, "world_qa": 6, "instructions": 4, "context_copy": 4}
SOURCES = {"arithmetic": ["test", "ood"], "world_qa": ["qa_heldout", "nonexistent_test"], "instructions": ["test"],
           "context_copy": ["test"]}  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ed") / "generated"
    subprocess.run([sys.executable, "pipelines/generate_data.py", "--profile", "smoke", "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def records(generated):
    return C.select_prompts(generated, TASKS, SOURCES, seed=0)


@pytest.fixture(scope="module")
def model_tok(records):
    tok = WordTokenizer.fit(
        [r["prompt"] + " " + r["answer"] for r in records] + ["unknown Paris Oslo 0 1 2 3 4 5 6 7 8 9"]
    )
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16))
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def collected(records, model_tok):
    model, tok = model_tok
    split = C.split_prompts(records, 0.5, seed=0)
    return C.collect_stats(model, tok, records, split, k_samples=3, max_new_tokens=6, batch_size=8, seed=1)


# -- prompts and splits -------------------------------------------------------------------------------


def test_select_prompts_counts_sources_and_determinism(generated, records):
    by_task = {t: [r for r in records if r["task"] == t] for t in TASKS}
    assert {t: len(v) for t, v in by_task.items()} == TASKS
    assert sorted(r["split"] for r in by_task["arithmetic"]) == ["ood"] * 3 + ["test"] * 3  # even shares
    assert len({r["id"] for r in records}) == len(records)
    assert C.select_prompts(generated, TASKS, SOURCES, seed=0) == records
    assert C.select_prompts(generated, TASKS, SOURCES, seed=1) != records
    skip = C.select_prompts(generated, {**TASKS, "instructions": 0}, SOURCES, seed=0)
    assert not any(r["task"] == "instructions" for r in skip)
    with pytest.raises(ValueError, match="more than once"):
        C.select_prompts(generated, {"arithmetic": 2}, {"arithmetic": ["test", "test"]})


def test_even_shares_give_short_sources_share_to_others():
    assert C._even_shares(10, [100, 100]) == [5, 5]
    assert C._even_shares(10, [2, 100, 100]) == [2, 4, 4]
    assert C._even_shares(7, [100, 100]) == [4, 3]
    assert C._even_shares(50, [3, 4]) == [3, 4]


def test_split_keeps_groups_together_and_is_order_free():
    recs = []
    for p in range(12):  # two paraphrases of each (person, attribute)
        for tpl in range(2):
            recs.append({"id": f"qa-{p}-{tpl}", "task": "world_qa", "person_id": f"p{p}", "attribute": "hobby",
                         "prompt": f"question {tpl} about p{p}?"})  # fmt: skip
    split = C.split_prompts(recs, 0.5, seed=0)
    side = {}
    for r, s in zip(recs, split):
        assert side.setdefault(r["person_id"], s) == s
    assert set(split) == {"fit", "test"}
    perm = np.random.default_rng(0).permutation(len(recs))
    again = C.split_prompts([recs[i] for i in perm], 0.5, seed=0)
    assert [again[list(perm).index(i)] for i in range(len(recs))] == list(split)


def test_overlapping_fit_and_test_split_is_an_error():
    recs = [{"id": "a", "task": "arithmetic", "prompt": "1+1="}, {"id": "b", "task": "arithmetic", "prompt": "1+1="},
            {"id": "c", "task": "arithmetic", "prompt": "2+2="}]  # fmt: skip
    with pytest.raises(ValueError, match="overlap in 1 prompt texts"):
        C.check_prompt_split(recs, ["fit", "test", "test"])
    with pytest.raises(ValueError, match="overlap in 1 prompt ids"):
        C.check_prompt_split([recs[0], dict(recs[2], id="a")], ["fit", "test"])
    qa = [
        {"id": f"q{i}", "task": "world_qa", "person_id": "p1", "attribute": "hobby", "prompt": f"q{i}?"} for i in (1, 2)
    ]
    with pytest.raises(ValueError, match=r"prompt groups \(same fact\)"):
        C.check_prompt_split(qa, ["fit", "test"])
    C.check_prompt_split(recs[:1] + recs[2:], ["fit", "test"])  # disjoint: fine
    assert list(C.split_prompts(recs, 0.5, seed=0)[:2]) in (["fit", "fit"], ["test", "test"])  # same text, same side


# -- answer span and pooling ---------------------------------------------------------------------------


def test_answer_span_and_token_mask():
    assert C.answer_char_span("world_qa", " Paris.") == (1, 6)
    assert C.answer_char_span("arithmetic", "  ") is None
    tok = WordTokenizer.fit(["write words about ocean wave tide", "123", "Paris."])
    ids = tok.encode(" ocean wave.") + [tok.eos_id]
    text, mask = C.answer_token_mask(tok, ids, "instructions")
    assert text == " ocean wave."
    pieces = [tok.decode([i]) for i in ids]
    assert [p for p, m in zip(pieces, mask) if m] == [" ocean", " wave"]  # not ".", not <eos>
    _, mask = C.answer_token_mask(tok, tok.encode("123") + [tok.eos_id], "arithmetic")
    assert mask.tolist() == [True, True, True, False]
    _, mask = C.answer_token_mask(tok, [tok.eos_id], "arithmetic")
    assert not mask.any()


def test_pool_hidden_known_values():
    h = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)  # (L+1, T, C)
    ans, whole = C.pool_hidden(h, np.array([True, False, True]))
    np.testing.assert_allclose(ans, (h[:, 0] + h[:, 2]) / 2)
    np.testing.assert_allclose(whole, h.mean(axis=1))
    ans, _ = C.pool_hidden(h, np.zeros(3, bool))
    np.testing.assert_allclose(ans, whole)  # empty span -> whole response


# -- collection -------------------------------------------------------------------------------------------


def test_collect_stats_matches_generation_and_checkers(collected, records, model_tok):
    model, tok = model_tok
    s = collected
    assert s.n == len(records) and s.K == 3 and s.n_layers == 3
    prompts = [r["prompt"] for r in records]
    g = generate(model, tok, prompts, max_new_tokens=6, batch_size=8, return_hidden_states="tokens")
    for i, r in enumerate(records):
        np.testing.assert_allclose(s.token_logprobs[i], g.token_logprobs[i])
        np.testing.assert_allclose(s.token_entropies[i], g.entropies[i])
        assert s.response[i] == g.texts[i]
        assert s.answer[i] == extract_answer(r["task"], g.texts[i])
        assert s.is_error[i] == (not is_correct(r, g.texts[i]))
        _, mask = C.answer_token_mask(tok, g.token_ids[i], r["task"])
        assert s.answer_mask[i].tolist() == mask.tolist()
        ans, whole = C.pool_hidden(g.hidden_states[i], mask)
        np.testing.assert_allclose(s.hidden_answer[i], ans, rtol=1e-6)
        np.testing.assert_allclose(s.hidden_response[i], whole, rtol=1e-6)
        if g.token_ids[i][-1] == tok.eos_id:
            assert not s.answer_mask[i][-1]
    for i in range(s.n):
        for k in range(s.K):
            assert s.sample_answers[i, k] == extract_answer(s.task[i], s.sample_texts[i, k])
            assert len(s.sample_token_logprobs[i][k]) == len(s.sample_answer_masks[i][k])
    assert set(s.meta["row_info"]) == set(s.ids.tolist())
    assert s.meta["settings"]["k_samples"] == 3 and s.meta["timing"]["n"] == s.n


def test_collect_is_deterministic_and_round_trips(collected, records, model_tok, tmp_path):
    model, tok = model_tok
    again = C.collect_stats(model, tok, records, collected.split, k_samples=3, max_new_tokens=6, batch_size=8, seed=1)
    for f in ("response", "sample_texts", "is_error", "hidden_answer"):
        assert np.array_equal(getattr(again, f), getattr(collected, f)), f
    collected.save(tmp_path / "stats")
    assert GenerationStats.load(tmp_path / "stats").equals(collected)


def test_collect_rejects_bad_input(records, model_tok):
    model, tok = model_tok
    split = C.split_prompts(records, 0.5, seed=0)
    with pytest.raises(ValueError, match="k_samples = 1"):
        C.collect_stats(model, tok, records, split, k_samples=1)
    dup = [dict(r) for r in records[:2]]
    dup[1]["prompt"] = dup[0]["prompt"]
    with pytest.raises(ValueError, match="overlap"):
        C.collect_stats(model, tok, dup, ["fit", "test"], k_samples=2)


def test_load_or_collect_reuses_only_identical_computations(records, model_tok, tmp_path):
    model, tok = model_tok
    recs = records[:6]
    split = np.array(["fit", "test"] * 3)
    kw = dict(k_samples=2, max_new_tokens=4, batch_size=4, seed=0)
    s1, reused = C.load_or_collect(tmp_path / "m", model, tok, recs, split, **kw)
    assert not reused
    s2, reused = C.load_or_collect(tmp_path / "m", model, tok, recs, split, **kw)
    assert reused and s2.equals(s1)
    _, reused = C.load_or_collect(tmp_path / "m", model, tok, recs, split, **{**kw, "seed": 1})
    assert not reused  # another sampling seed
    other = GPT(model.config)
    _, reused = C.load_or_collect(tmp_path / "m", other, tok, recs, split, **{**kw, "seed": 1})
    assert not reused  # other weights
    _, reused = C.load_or_collect(tmp_path / "m", other, tok, recs, split, reuse=False, **{**kw, "seed": 1})
    assert not reused
    _, reused = C.load_or_collect(tmp_path / "m", other, tok, recs, split, **{**kw, "seed": 1})
    assert reused
    # a change to the code that labels and pools (e.g. a checker) invalidates the stored statistics
    real = C.code_digest
    C.code_digest = lambda: real() + "-changed"
    try:
        _, reused = C.load_or_collect(tmp_path / "m", other, tok, recs, split, **{**kw, "seed": 1})
    finally:
        C.code_digest = real
    assert not reused


# -- injected errors ----------------------------------------------------------------------------------


def _rec(task, **kw):
    return {"task": task, "id": f"{task}-1", "prompt": "p", **kw}


def test_corrupt_response_per_task():
    arith = _rec("arithmetic", answer="354", reversed=False)
    new, kind = I.corrupt_response(arith, "354", seed=0)
    assert kind == "wrong_digit" and len(new) == 3 and sum(a != b for a, b in zip(new, "354")) == 1
    assert not is_correct(arith, new)
    qa = _rec("world_qa", answer="Paris", attribute="birth_city", exists=True)
    new, kind = I.corrupt_response(qa, " Paris.", seed=0)
    assert kind == "swapped_value" and new.startswith(" ") and new.endswith(".") and new.strip(" .") != "Paris"
    assert not is_correct(qa, new)
    ghost = _rec("world_qa", answer="unknown", attribute="hobby", exists=False, abstain="unknown")
    new, _ = I.corrupt_response(ghost, "unknown", seed=0)
    assert new != "unknown" and not is_correct(ghost, new)  # a concrete value: hallucination
    words = "wave tide coral shark"
    ins = _rec("instructions", answer="sand sail boat fish", n_words=4, topic="ocean")
    assert is_correct(ins, words)
    new, kind = I.corrupt_response(ins, words, seed=3)
    assert kind == "wrong_word_count" and abs(len(new.split()) - 4) == 1 and not is_correct(ins, new)
    assert set(new.split()) - set(words.split()) <= set(
        __import__("trustlab.data.instructions", fromlist=["TOPICS"]).TOPICS["ocean"]
    )
    cc = _rec("context_copy", answer="7", vars={"a": 7, "b": 3})
    assert I.corrupt_response(cc, "7", seed=0) == ("3", "wrong_variable")
    assert I.corrupt_response(arith, "  ", seed=0) is None


def test_injections_are_paired_and_teacher_forced(collected, records, model_tok):
    model, tok = model_tok
    by_id = {r["id"]: r for r in records}
    # pretend the model answered every prompt correctly (the tiny random model never does)
    answers = [by_id[i]["answer"] for i in collected.ids]
    ok = GenerationStats(**{**collected.__dict__, "response": answers, "is_error": np.zeros(collected.n, bool)})
    inj, counts = I.make_injections(ok, by_id, split="test", seed=0)
    n_test = int((ok.split == "test").sum())
    assert counts["correct"] == n_test and counts["injected"] + counts["skipped"] == n_test and len(inj) > 0
    for j in inj:
        assert not is_correct(by_id[j.id], j.corrupted) and is_correct(by_id[j.id], j.original)
    s = I.score_injected(model, tok, ok, inj, batch_size=4)
    assert s.n == 2 * len(inj) and (s.split == "test").all()
    assert s.is_error.sum() == len(inj)
    assert all(i.endswith(I.INJECTED_SUFFIX) == e for i, e in zip(s.ids, s.is_error))
    # the original's statistics equal direct teacher forcing of the same text
    j0 = inj[0]
    eos = [tok.eos_id] if ok.meta["row_info"][j0.id]["finish"] == "eos" else []
    ref = score_continuations(model, tok, [by_id[j0.id]["prompt"]], [tok.encode(j0.original) + eos], add_eos=False)
    row = list(s.ids).index(j0.id)
    np.testing.assert_allclose(s.token_logprobs[row], ref.token_logprobs[0])
    # samples are the prompt's natural samples
    src = list(ok.ids).index(j0.id)
    assert np.array_equal(s.sample_texts[row], ok.sample_texts[src])
    with pytest.raises(ValueError, match="no injections"):
        I.score_injected(model, tok, ok, [])


def test_the_statistics_key_covers_model_files_and_the_model_code(tmp_path):
    assert C.model_files_digest(None) is None and C.model_files_digest(tmp_path / "missing") is None
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 8)
    before = C.model_files_digest(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x01" * 8)
    assert C.model_files_digest(tmp_path) != before
    assert {"trustlab.lm.generation", "trustlab.lm.gpt", "trustlab.lm.tokenizer", "trustlab.lm.hooks",
            "trustlab.lm.loading", "trustlab.error_detection.collect",
            "trustlab.error_detection.statistics"} <= set(C.STATS_CODE)  # fmt: skip
    recs, split, settings = [{"id": "a", "prompt": "1+1="}], ["fit"], {"seed": 0}
    key = C.stats_fingerprint("w", recs, split, settings, before)
    assert key != C.stats_fingerprint("w", recs, split, settings, C.model_files_digest(tmp_path))
    assert key != C.stats_fingerprint("w", [{"id": "a", "prompt": "1+2="}], split, settings, before)
    assert key != C.stats_fingerprint("w", recs, split, {"seed": 1}, before)
