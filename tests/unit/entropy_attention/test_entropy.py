"""Per-head attention entropy: exact values, masking, summaries."""

from __future__ import annotations

import math

import pytest
import torch

from trustlab.entropy_attention.entropy import (
    attention_entropy,
    collapsed_fraction,
    head_bins,
    overloaded_fraction,
    row_entropy,
    uniform_causal_entropy,
)


def causal_uniform(T: int, L: int = 1, B: int = 1, H: int = 1) -> torch.Tensor:
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    probs = mask.double() / mask.sum(-1, keepdim=True).double()
    return probs.expand(L, B, H, T, T).clone()


def test_uniform_causal_max_value():
    assert uniform_causal_entropy(1) == 0.0
    assert uniform_causal_entropy(128) == pytest.approx(3.878, abs=5e-4)
    assert uniform_causal_entropy(128) < math.log(128)


@pytest.mark.parametrize("T", [1, 7, 128])
def test_uniform_causal_attention_gives_exactly_the_max(T):
    stats = attention_entropy(causal_uniform(T, L=2, B=3, H=4))
    expected = math.fsum(math.log(i) for i in range(1, T + 1)) / T
    assert stats.mean.shape == (2, 4) and stats.per_query.shape == (2, 4, T) and stats.per_element.shape == (2, 3, 4, T)
    assert torch.allclose(stats.mean, torch.full_like(stats.mean, expected), rtol=0, atol=1e-12)
    assert stats.max_uniform == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(stats.normalised, torch.ones(2, 4, dtype=torch.float64), atol=1e-12) or T == 1
    # per query i (1-based) the entropy is log i
    assert torch.allclose(stats.per_query[0, 0], torch.log(torch.arange(1, T + 1, dtype=torch.float64)), atol=1e-12)


def test_one_hot_attention_gives_zero():
    T = 16
    probs = torch.zeros(1, 2, 3, T, T)
    probs[..., torch.arange(T), torch.zeros(T, dtype=torch.long)] = 1.0  # every query on key 0 (causal)
    stats = attention_entropy(probs)
    assert torch.equal(stats.mean, torch.zeros(1, 3))
    assert torch.equal(stats.per_element, torch.zeros(1, 2, 3, T))


def test_masked_positions_contribute_nothing():
    T = 6
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    probs = torch.rand(T, T, dtype=torch.float64) * mask
    probs = probs / probs.sum(-1, keepdim=True)
    clean = row_entropy(probs)
    garbage = probs + 0.37 * (~mask)  # junk in the masked entries
    assert torch.equal(row_entropy(garbage, mask), clean)
    # and the explicit zeros of a real model's attention equal the masked computation
    from trustlab.entropy_attention.model import build_model

    torch.manual_seed(0)
    model = build_model("SM+LN+G", vocab_size=261, block_size=T, n_layer=2, n_head=2, n_embd=16).eval()
    ids = torch.randint(0, 256, (2, T))
    attn_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding in row 0
    out = model(ids, attn_mask, output_attentions=True)
    from trustlab.lm.gpt import build_attention_mask

    kmask = build_attention_mask(attn_mask, 2, T, 0, ids.device)
    a = attention_entropy(out.attentions, query_mask=attn_mask)
    b = attention_entropy(out.attentions, mask=kmask, query_mask=attn_mask)
    assert torch.equal(a.per_element, b.per_element)
    # padding queries are left out of every mean: changing them changes nothing
    att = [t.clone() for t in out.attentions]
    for t in att:
        t[0, :, :2] = torch.eye(T)[:2]
    c = attention_entropy(att, query_mask=attn_mask)
    assert torch.allclose(c.mean, a.mean)
    # the uniform-causal max of a padded batch counts only the real keys of real queries
    lengths = [1, 2, 3, 4] + list(range(1, T + 1))
    assert b.max_uniform == pytest.approx(sum(math.log(n) for n in lengths) / len(lengths))


def test_entropy_is_differentiable_through_masked_zeros():
    scores = torch.randn(1, 1, 5, 5, requires_grad=True)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    probs = torch.softmax(torch.where(mask, scores, torch.finfo(scores.dtype).min), -1)
    row_entropy(probs).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert torch.equal(scores.grad[..., ~mask], torch.zeros_like(scores.grad[..., ~mask]))


def test_paper_eps_differs_negligibly():
    probs = causal_uniform(128)[0, 0, 0]
    assert (row_entropy(probs) - row_entropy(probs, eps=1e-9)).abs().max() < 1e-6


def test_bins_and_fractions():
    norm = torch.tensor([[0.1, 0.3, 0.6, 0.99], [0.25, 0.5, 0.75, 1.0]])
    assert head_bins(norm) == pytest.approx([1 / 8, 2 / 8, 2 / 8, 3 / 8])
    assert overloaded_fraction(norm, 0.95) == pytest.approx(2 / 8)
    assert collapsed_fraction(torch.tensor([0.05, 0.2, 3.0, 0.0]), 0.1) == pytest.approx(0.5)
    assert math.isnan(overloaded_fraction(torch.tensor([float("nan")])))
