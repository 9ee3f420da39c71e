"""Attention kernels (temperature, position-aware, softplus) and FFN variants."""

from __future__ import annotations

import math

import pytest
import torch

from trustlab.entropy_attention.model import build_model, gpt_config
from trustlab.lm.gpt import build_attention_mask, build_attention_kernel

KW = dict(vocab_size=261, block_size=12, n_layer=2, n_head=2, n_embd=16)


def twin(variant_a: str, variant_b: str):
    """Two models with identical shared weights."""
    torch.manual_seed(0)
    a = build_model(variant_a, **KW).eval()
    b = build_model(variant_b, **KW).eval()
    missing, unexpected = b.load_state_dict(a.state_dict(), strict=False)
    assert not unexpected and all("temperature" in m for m in missing)
    return a, b


def test_temperature_one_reproduces_softmax_bit_for_bit():
    base, temp = twin("SM+LN+G", "SM(t)+LN+G")
    assert all(torch.equal(blk.attn.kernel.temperature, torch.ones(2, 12)) for blk in temp.blocks)
    ids = torch.randint(0, 256, (3, 12))
    assert torch.equal(base(ids).logits, temp(ids).logits)  # fused fast path
    oa, ob = base(ids, output_attentions=True), temp(ids, output_attentions=True)
    assert torch.equal(oa.logits, ob.logits)
    assert all(torch.equal(x, y) for x, y in zip(oa.attentions, ob.attentions))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :3] = 0  # padded path too
    assert torch.equal(base(ids, mask, output_attentions=True).attentions[1], temp(ids, mask, output_attentions=True).attentions[1])


def test_temperature_divides_the_logits_per_head_and_position():
    cfg = gpt_config("SM(t)+LN+G", **KW)
    kernel = build_attention_kernel(cfg, 0)
    with torch.no_grad():
        kernel.log_temperature[1, 5:] = math.log(2.0)
    q, k, v = (torch.randn(1, 2, 8, 8) for _ in range(3))
    mask = build_attention_mask(None, 1, 8, 0, "cpu")
    _, probs = kernel(q, k, v, mask, need_weights=True, positions=torch.arange(8)[None])
    t = torch.ones(2, 8, 1)
    t[1, 5:] = 2.0
    scores = (q @ k.transpose(-2, -1)) / (t * math.sqrt(8))
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    assert torch.allclose(probs, expected, atol=1e-6)


def test_position_aware_temperature_formula():
    cfg = gpt_config("SM(pa)+LN+G", **KW)
    kernel = build_attention_kernel(cfg, 0)
    assert kernel.beta.item() == 1.5
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    mask = build_attention_mask(None, 1, 6, 0, "cpu")
    _, probs = kernel(q, k, v, mask, need_weights=True)
    n = torch.arange(1, 7, dtype=torch.float32)[:, None]
    scale = 1 + math.exp(-math.exp(1.5)) * torch.log(n)
    expected = torch.softmax((scale * q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, float("-inf")), -1)
    assert torch.allclose(probs, expected, atol=1e-6)


@pytest.mark.parametrize("variant", ["Softplus", "Softplus+RW"])
def test_softplus_rows_sum_to_one_and_respect_the_mask(variant):
    torch.manual_seed(0)
    model = build_model(variant, **KW)
    ids = torch.randint(0, 256, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4] = 0
    out = model(ids, mask, output_attentions=True)
    allowed = build_attention_mask(mask, 3, 12, 0, "cpu")
    for probs in out.attentions:
        assert torch.allclose(probs.sum(-1), torch.ones(3, 2, 12), atol=1e-5)
        assert torch.equal(probs.masked_select(~allowed.expand_as(probs)), torch.zeros(int((~allowed.expand_as(probs)).sum())))
        assert (probs >= 0).all()
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # fast path (no weights requested) computes the same outputs
    assert torch.allclose(model(ids, mask).logits, out.logits, atol=1e-6)


def test_softplus_reweighting_formula():
    cfg = gpt_config("Softplus+RW", **KW)
    kernel = build_attention_kernel(cfg, 0)
    q, k, v = (torch.randn(1, 1, 6, 8) for _ in range(3))
    mask = build_attention_mask(None, 1, 6, 0, "cpu")
    _, probs = kernel(q, k, v, mask, need_weights=True)
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    n = torch.arange(1, 7, dtype=torch.float64)[:, None]
    a = torch.nn.functional.softplus(math.log(8) * torch.log(n) * (qn @ kn.transpose(-2, -1)).double()) * mask
    a = a / a.sum(-1, keepdim=True)
    r = torch.relu(a * n - 1.0) ** 15
    expected = torch.where(r.sum(-1, keepdim=True) > 0, r / r.sum(-1, keepdim=True).clamp(min=1e-300), a)
    assert torch.allclose(probs.double(), expected, atol=1e-5)
    assert torch.equal(probs[0, 0, 0], torch.tensor([1.0, 0, 0, 0, 0, 0]))  # first row: kept as LSSA


def test_softplus_lssa_formula_without_reweighting():
    cfg = gpt_config("Softplus", **KW)
    kernel = build_attention_kernel(cfg, 0)
    q, k, v = (torch.randn(1, 1, 5, 8) for _ in range(3))
    mask = build_attention_mask(None, 1, 5, 0, "cpu")
    _, probs = kernel(q, k, v, mask, need_weights=True)
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    n = torch.arange(1, 6, dtype=torch.float32)[:, None]
    a = torch.nn.functional.softplus(math.log(8) * torch.log(n) * (qn @ kn.transpose(-2, -1))) * mask
    assert torch.allclose(probs, a / a.sum(-1, keepdim=True), atol=1e-6)


def test_scfu_ffn_computes_the_formula():
    torch.manual_seed(0)
    model = build_model("SM+ScFuFFN", **KW)
    ffn = model.blocks[0].ffn
    assert ffn.alpha.item() == 1.0 and ffn.beta.item() == 1.0
    x = torch.randn(2, 5, 16)
    W, b = ffn.fused.weight, ffn.fused.bias
    assert torch.allclose(ffn.residual(x, x), x + x @ W.T + b, atol=1e-6)
    with torch.no_grad():
        ffn.alpha.fill_(2.0)
        ffn.beta.fill_(0.5)
    assert torch.allclose(ffn.residual(x, x), 0.5 * x + (x @ W.T + b) / 2.0, atol=1e-6)
    # with norm = "none" the block's FFN input is the attention output itself
    assert isinstance(model.blocks[0].ln_2, torch.nn.Identity)
    with pytest.raises(ValueError, match="activation"):
        from trustlab.lm.gpt import GPT, GPTConfig

        GPT(GPTConfig(**KW, norm="none", ffn="scfu", activation="gelu"))


def test_weight_and_spectral_normalised_ffns():
    torch.manual_seed(0)
    wn = build_model("SM+G+WN", **KW)
    w = wn.blocks[0].ffn.c_fc.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.2)  # initialised like the plain MLP
    assert "blocks.0.ffn.c_fc.parametrizations.weight.original0" in wn.param_groups_summary()["no_decay"]
    sn = build_model("SM+G+SN", **KW).train()
    ids = torch.randint(0, 256, (2, 12))
    for _ in range(5):  # power iterations converge towards sigma_max = 1
        sn(ids)
    sigma = torch.linalg.matrix_norm(sn.blocks[0].ffn.c_fc.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, rel=0.1)
    assert torch.isfinite(wn(ids).logits).all() and torch.isfinite(sn(ids).logits).all()
