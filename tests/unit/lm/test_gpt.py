"""The tiny GPT: causality, attention paths, masks, hooks, cache, seams, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trustlab.lm.gpt import (
    FFN,
    GPT,
    AttentionKernel,
    GPTConfig,
    SoftmaxAttention,
    masked_softmax,
    no_weight_decay,
    register_attention,
    register_ffn,
    register_norm,
)
from trustlab.lm.hooks import add_block_hook, decoder_blocks, input_embeddings
from trustlab.lm.losses import causal_lm_loss, token_losses


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one thread is fastest, and robust on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def ids(B=2, T=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 50, (B, T), generator=g)


def test_shapes_and_outputs():
    m = tiny()
    x = ids()
    out = m(x, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (2, 10, 50)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 10, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 10, 10)
    assert out.past_key_values is None
    assert m.lm_head.weight is m.wte.weight
    assert m.num_params() == sum(p.numel() for p in m.parameters()) - m.wpe.weight.numel()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("need_probs", [False, True])
def test_causality(need_probs):
    m = tiny()
    x = ids()
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % 50
    a = m(x, output_attentions=need_probs).logits
    b = m(y, output_attentions=need_probs).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    # with right padding too: changing a padded token changes nothing before it
    mask = torch.ones_like(x)
    mask[0, 8:] = 0
    y2 = x.clone()
    y2[0, 9] = 3
    a = m(x, mask, output_attentions=need_probs).logits
    b = m(y2, mask, output_attentions=need_probs).logits
    assert torch.allclose(a[0, :9], b[0, :9], atol=1e-6)


def test_left_padding_matches_unpadded():
    m = tiny()
    x = ids(B=1, T=7)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], dim=1)
    for probs in (False, True):
        a = m(x, output_attentions=probs).logits
        b = m(padded, mask, output_attentions=probs).logits[:, 3:]
        assert torch.allclose(a, b, atol=1e-5)


def test_sdpa_and_explicit_paths_agree():
    m = tiny()
    x = ids(B=3, T=12)
    mask = torch.ones_like(x)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    for am in (None, mask):
        fast = m(x, am).logits
        slow = m(x, am, output_attentions=True).logits
        assert torch.allclose(fast, slow, atol=1e-5)
    # kernel level, random mask with a guaranteed diagonal
    k = SoftmaxAttention(m.config, 0)
    q, kk, v = (torch.randn(2, 2, 5, 16) for _ in range(3))
    msk = (torch.rand(2, 1, 5, 5) > 0.5) | torch.eye(5, dtype=torch.bool)
    o1, _ = k(q, kk, v, msk, False)
    o2, p = k(q, kk, v, msk, True)
    assert torch.allclose(o1, o2, atol=1e-5)
    assert torch.all(p[~msk.expand_as(p)] == 0)


def test_probs_rows_sum_to_one_and_masked_entries_are_zero():
    m = tiny()
    x = ids(B=2, T=8)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    att = m(x, mask, output_attentions=True).attentions
    for a in att:
        assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5)
        causal_forbidden = torch.triu(torch.ones(8, 8, dtype=torch.bool), 1)
        assert torch.all(a[:, :, causal_forbidden] == 0)
        # real queries of row 0 give exactly zero weight to the padded keys
        assert torch.all(a[0, :, 3:, :3] == 0)
    assert masked_softmax(torch.randn(3, 4), torch.tensor([[True, False, True, False]] * 3))[:, 1].eq(0).all()


def test_explicit_path_is_differentiable():
    m = tiny().train()
    out = m(ids(), output_attentions=True)
    ent = -(out.attentions[0] * torch.log(out.attentions[0] + 1e-9)).sum(-1).mean()
    ent.backward()
    assert m.blocks[0].attn.c_attn.weight.grad is not None
    assert m.blocks[0].attn.c_attn.weight.grad.abs().sum() > 0


def test_hook_replacing_block_output_changes_downstream():
    m = tiny()
    x = ids()
    base = m(x, output_hidden_states=True)
    handle = add_block_hook(m.blocks[0], lambda h: h + 1.0)
    hooked = m(x, output_hidden_states=True)
    handle.remove()
    assert torch.allclose(hooked.hidden_states[1], base.hidden_states[1] + 1.0)
    assert torch.allclose(hooked.hidden_states[0], base.hidden_states[0])
    assert not torch.allclose(hooked.hidden_states[2], base.hidden_states[2])
    assert not torch.allclose(hooked.logits, base.logits)
    # a plain torch forward hook works too (Block.forward returns the tensor)
    h = m.blocks[1].register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    out = m(x, output_hidden_states=True)
    h.remove()
    assert torch.all(out.hidden_states[2] == 0)
    assert torch.allclose(m(x).logits, base.logits)  # removed hooks leave no trace
    assert decoder_blocks(m) == list(m.blocks) and input_embeddings(m) is m.wte


def test_kv_cache_matches_full_forward():
    m = tiny()
    x = ids(B=2, T=12)
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    full = m(x, mask).logits
    out = m(x[:, :7], mask[:, :7], use_cache=True)
    cache = out.past_key_values
    step_logits = [out.logits]
    for t in range(7, 12):
        o = m(x[:, t : t + 1], mask[:, : t + 1], past_key_values=cache, use_cache=True, output_attentions=True)
        assert o.attentions[0].shape == (2, 2, 1, t + 1)
        step_logits.append(o.logits)
    assert len(cache) == 12
    assert torch.allclose(torch.cat(step_logits, 1), full, atol=1e-5)


def test_masked_loss_ignores_prompt_and_padding():
    m = tiny()
    x = ids(B=2, T=10)
    loss_mask = torch.zeros_like(x)
    loss_mask[:, 5:8] = 1  # answer tokens at 5..7, padding after
    logits = m(x).logits
    base = causal_lm_loss(logits, x, loss_mask)
    y = x.clone()
    y[:, 2] = 7  # a prompt-position target (logits held fixed)
    y[:, 9] = 8  # a padding-position target
    assert torch.allclose(causal_lm_loss(logits, y, loss_mask), base)
    y[:, 6] = (y[:, 6] + 1) % 50
    assert not torch.allclose(causal_lm_loss(logits, y, loss_mask), base)
    losses, mask = token_losses(logits, x, loss_mask)
    assert losses.shape == mask.shape == (2, 9)
    assert torch.equal(mask, loss_mask[:, 1:].float())
    assert torch.allclose((losses * mask).sum() / mask.sum(), base)
    ref = nn.functional.cross_entropy(logits[:, 4:7].reshape(-1, 50), x[:, 5:8].reshape(-1))
    assert torch.allclose(base, ref, atol=1e-6)


def test_optimizer_groups_and_no_weight_decay():
    m = tiny()
    m.blocks[0].attn.kernel.theta = no_weight_decay(nn.Parameter(torch.ones(2, 2)))
    groups = m.param_groups_summary(no_decay_names=["blocks.1.attn.c_proj.weight"])
    assert "wte.weight" in groups["decay"] and "blocks.0.attn.c_attn.weight" in groups["decay"]
    assert "blocks.0.attn.kernel.theta" in groups["no_decay"]
    assert "blocks.1.attn.c_proj.weight" in groups["no_decay"]
    assert "blocks.0.ln_1.weight" in groups["no_decay"] and "blocks.0.attn.c_attn.bias" in groups["no_decay"]
    opt = m.configure_optimizers(weight_decay=0.1, lr=1e-3, no_decay_names=["*.c_proj.weight"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in m.parameters())
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_registries_and_variants():
    @register_attention("test_uniform")
    class Uniform(AttentionKernel):
        def forward(self, q, k, v, mask, need_weights=False, *, positions=None, is_causal=False):
            probs = mask.to(q.dtype).expand(-1, q.size(1), -1, -1)
            probs = probs / probs.sum(-1, keepdim=True)
            return probs @ v, (probs if need_weights else None)

    @register_ffn("test_scaled")
    class Scaled(FFN):
        def __init__(self, config, layer_idx):
            super().__init__()
            self.fc = nn.Linear(config.n_embd, config.n_embd, bias=False)
            self.alpha = no_weight_decay(nn.Parameter(torch.ones(())))
            self.beta = no_weight_decay(nn.Parameter(torch.ones(())))

        def forward(self, h):
            return self.fc(h)

        def residual(self, x, h):
            return self.beta * x + self(h) / self.alpha

    @register_norm("test_scale2")
    def scale2(config):
        class Two(nn.Module):
            def forward(self, x):
                return 2 * x

        return Two()

    m = tiny(attention="test_uniform", ffn="test_scaled", norm="test_scale2", final_norm=False)
    out = m(ids(), output_attentions=True)
    assert torch.allclose(out.attentions[0][0, 0, 3, :4], torch.full((4,), 0.25))
    assert torch.isfinite(out.logits).all()
    assert isinstance(m.ln_f, nn.Identity)
    with pytest.raises(KeyError, match="not registered"):
        tiny(attention="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_attention("softmax")(Uniform)
    for kw in (dict(norm="none"), dict(norm="rmsnorm", activation="relu"), dict(norm="none", activation="none")):
        m = tiny(**kw)
        assert torch.isfinite(m(ids()).logits).all()
    assert isinstance(tiny(norm="none").ln_f, nn.LayerNorm)  # final norm kept by default


def test_config_round_trip_and_validation():
    cfg = GPTConfig(vocab_size=60, attention_kwargs={"p": 3})
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({"vocab": 3})
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
