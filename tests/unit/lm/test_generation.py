"""generate / score_continuations: cache, padding, sampling, statistics, stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from trustlab.lm.generation import generate, process_logits, score_continuations, token_stats
from trustlab.lm.gpt import GPT, GPTConfig, GPTOutput
from trustlab.lm.tokenizer import WordTokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one thread is fastest, and robust on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TEXTS = ["the cat sat on the mat", "a dog ran in the park", "1 2 3 4 5 6 7 8 9 0", "what is 12 plus 7 ?"]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.fit(TEXTS)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()


PROMPTS = ["the cat sat", "what is 12 plus 7 ?", "a dog"]


def test_cached_equals_uncached(model, tok):
    a = generate(model, tok, PROMPTS, max_new_tokens=12, use_cache=True, return_hidden_states="tokens")
    b = generate(model, tok, PROMPTS, max_new_tokens=12, use_cache=False, return_hidden_states="tokens")
    assert a.token_ids == b.token_ids and a.texts == b.texts
    for x, y in zip(a.token_logprobs + a.entropies, b.token_logprobs + b.entropies):
        np.testing.assert_allclose(x, y, atol=1e-5)
    for x, y in zip(a.hidden_states, b.hidden_states):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_left_padded_batch_equals_one_by_one(model, tok):
    batch = generate(model, tok, PROMPTS, max_new_tokens=10, return_hidden_states="mean", return_prompt_hidden=True)
    for i, p in enumerate(PROMPTS):
        one = generate(model, tok, [p], max_new_tokens=10, return_hidden_states="mean", return_prompt_hidden=True)
        assert one.token_ids[0] == batch.token_ids[i]
        np.testing.assert_allclose(one.token_logprobs[0], batch.token_logprobs[i], atol=1e-5)
        np.testing.assert_allclose(one.hidden_states[0], batch.hidden_states[i], atol=1e-4)
        np.testing.assert_allclose(one.prompt_hidden_states[0], batch.prompt_hidden_states[i], atol=1e-4)
    assert batch.hidden_states[0].shape == (3, 32)  # (n_layer + 1, C)


def test_sampling_is_seeded_and_topk1_is_greedy(model, tok):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, num_return_sequences=3)
    a = generate(model, tok, PROMPTS, seed=7, **kw)
    b = generate(model, tok, PROMPTS, seed=7, **kw)
    c = generate(model, tok, PROMPTS, seed=8, **kw)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert a.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(a) == 9
    greedy = generate(model, tok, PROMPTS, max_new_tokens=10)
    top1 = generate(model, tok, PROMPTS, max_new_tokens=10, do_sample=True, top_k=1, seed=3)
    tiny_p = generate(model, tok, PROMPTS, max_new_tokens=10, do_sample=True, top_p=1e-6, seed=3)
    assert top1.token_ids == greedy.token_ids == tiny_p.token_ids
    for x in top1.sampling_logprobs:  # a one-token sampling distribution
        np.testing.assert_allclose(x, 0.0, atol=1e-9)
    # raw log-probs do not depend on temperature
    hot = generate(model, tok, PROMPTS, max_new_tokens=10, do_sample=True, temperature=3.0, top_k=1, seed=3)
    for x, y in zip(hot.token_logprobs, greedy.token_logprobs):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_process_logits_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    kw = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0)
    x = process_logits(logits, None, **{**kw, "top_k": 2})
    assert torch.isfinite(x).tolist() == [[True, True, False, False, False]]
    p = torch.softmax(logits, -1)[0]  # 0.61, 0.22, 0.14, ...
    x = process_logits(logits, None, **{**kw, "top_p": 0.7})
    assert torch.isfinite(x).sum() == 2 and p[:1].sum() < 0.7 <= p[:2].sum()
    seen = torch.tensor([[True, False, False, True, False]])
    x = process_logits(logits, seen, **{**kw, "repetition_penalty": 2.0})
    assert torch.allclose(x, torch.tensor([[1.0, 1.0, 0.5, -2.0, -3.0]]))
    x = process_logits(logits, None, **{**kw, "temperature": 2.0})
    assert torch.allclose(x, logits / 2)


def test_repetition_penalty_changes_greedy_output(model, tok):
    plain = generate(model, tok, PROMPTS, max_new_tokens=12)
    pen = generate(model, tok, PROMPTS, max_new_tokens=12, repetition_penalty=50.0)
    assert plain.token_ids != pen.token_ids
    rep = lambda r: sum(len(t) - len(set(t)) for t in r.token_ids)  # noqa: E731
    assert rep(pen) <= rep(plain)


def test_statistics_match_direct_computation_and_scoring(model, tok):
    res = generate(model, tok, PROMPTS, max_new_tokens=8, return_hidden_states="tokens")
    # direct: one full forward over prompt + generated tokens
    for i in range(len(PROMPTS)):
        ids = res.prompt_ids[i] + res.token_ids[i]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        P = len(res.prompt_ids[i])
        logp = torch.log_softmax(logits[P - 1 : len(ids) - 1], -1)
        ent = -(logp.exp() * logp).sum(-1)
        var = (logp.exp() * logp**2).sum(-1) - ent**2
        chosen = logp.gather(-1, torch.tensor(res.token_ids[i])[:, None]).squeeze(-1)
        np.testing.assert_allclose(res.entropies[i], ent.numpy(), atol=1e-5)
        np.testing.assert_allclose(res.entropy_vars[i], var.numpy(), atol=1e-4)
        np.testing.assert_allclose(res.token_logprobs[i], chosen.numpy(), atol=1e-5)
    sc = score_continuations(model, tok, PROMPTS, res.token_ids, return_hidden_states="tokens")
    for i in range(len(PROMPTS)):
        np.testing.assert_allclose(sc.token_logprobs[i], res.token_logprobs[i], atol=1e-5)
        np.testing.assert_allclose(sc.entropies[i], res.entropies[i], atol=1e-5)
        np.testing.assert_allclose(sc.hidden_states[i], res.hidden_states[i], atol=1e-4)
        assert sc.hidden_states[i].shape == (3, 8, 32)
    # string continuations get <eos> appended; sums/means are consistent
    sc = score_continuations(model, tok, ["the cat"], [" sat on the mat"], return_hidden_states="mean")
    assert sc.token_ids[0][-1] == tok.eos_id and sc.hidden_states[0].shape == (3, 32)
    assert np.isclose(sc.sum_logprobs[0], sc.token_logprobs[0].sum())
    lp, h, v = token_stats(torch.zeros(1, 4), torch.tensor([0]))
    assert torch.allclose(lp, torch.log(torch.tensor([0.25])).double())
    assert torch.allclose(h, torch.log(torch.tensor([4.0])).double())
    assert torch.allclose(v, torch.zeros(1).double())


class CountingLM(nn.Module):
    """Next token = input token + 1 (mod V), certainly. Ignores the cache."""

    def __init__(self, vocab_size, block_size=64):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=4)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, *, position_ids=None, past_key_values=None, use_cache=False,
                output_hidden_states=False, output_attentions=False):  # fmt: skip
        V = self.config.vocab_size
        logits = 20.0 * nn.functional.one_hot((input_ids + 1) % V, V).float()
        return GPTOutput(logits=logits, past_key_values=object() if use_cache else None)


def test_stops_at_eos_and_context(tok):
    lm = CountingLM(tok.vocab_size, block_size=64)
    V = tok.vocab_size
    res = generate(lm, tok, [[V - 3], [V - 1], [5]], max_new_tokens=6)
    # from V-3: V-2, V-1, 0 (pad), 1 (bos), 2 (eos) -> stops
    assert res.token_ids[0] == [V - 2, V - 1, 0, 1, 2] and res.finish_reasons[0] == "eos"
    assert res.token_ids[1] == [0, 1, 2] and res.finish_reasons[1] == "eos"
    assert res.token_ids[2] == [6, 7, 8, 9, 10, 11] and res.finish_reasons[2] == "length"
    assert len(res.token_logprobs[0]) == 5 and np.all(res.token_logprobs[0] > -1e-6)
    short = generate(CountingLM(V, block_size=4), tok, [[5, 6]], max_new_tokens=10)
    assert short.token_ids[0] == [7, 8, 9] and short.finish_reasons[0] == "context"
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(CountingLM(V, block_size=4), tok, [[5] * 5], max_new_tokens=1)


def test_restores_mode_and_uses_eval(tok):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    m.train()
    a = generate(m, tok, PROMPTS, max_new_tokens=5)
    b = generate(m, tok, PROMPTS, max_new_tokens=5)
    assert m.training and a.token_ids == b.token_ids  # dropout was off inside
    m.eval()
    score_continuations(m, tok, ["a"], [" dog"])
    assert not m.training


def test_sharded_generation_is_the_same_for_one_and_two_workers(model, tok):
    """Shards seed themselves: the worker count cannot change a sample; shard i equals a plain
    generate call on its prompts with shard_seed(seed, i)."""
    from trustlab.lm.generation import generate_sharded, shard_seed

    prompts = PROMPTS * 3  # 9 prompts -> shards of 4, 4, 1
    kw = dict(max_new_tokens=6, do_sample=True, num_return_sequences=3, batch_size=5, return_hidden_states="mean")
    one = generate_sharded(model, tok, prompts, shard_prompts=4, workers=1, seed=7, **kw)
    two = generate_sharded(model, tok, prompts, shard_prompts=4, workers=2, seed=7, **kw)
    assert one.token_ids == two.token_ids and one.prompt_index == two.prompt_index
    for x, y in zip(one.token_logprobs + one.hidden_states, two.token_logprobs + two.hidden_states):
        np.testing.assert_array_equal(x, y)
    assert one.prompt_index == [i for i in range(9) for _ in range(3)]
    last = generate(model, tok, prompts[8:], seed=shard_seed(7, 2), **kw)
    assert one.token_ids[-3:] == last.token_ids
    assert shard_seed(7, 0) != shard_seed(7, 1) and shard_seed(None, 3) is None
    with pytest.raises(ValueError, match="shard_prompts = 0"):
        generate_sharded(model, tok, prompts, shard_prompts=0, **kw)
