"""NoiseFiT library: noise function, SNR selection, hooks, hybrid loss, NEFTune, R-Drop, config."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from trustlab.core.config import ConfigError
from trustlab.lm.generation import generate
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.hooks import decoder_blocks, input_embeddings
from trustlab.lm.losses import causal_lm_loss
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.hooks import NoiseInjector
from trustlab.noisefit.losses import NEFTune, hybrid_loss, neftune_magnitude, rdrop_loss, symmetric_kl
from trustlab.noisefit.noise import adaptive_noise, noise_scale, scale_multiplier
from trustlab.noisefit.snr import layer_snr, select_layers, snr_from_hidden
from trustlab.noisefit.objectives import loss_weights
from trustlab.noisefit.variants import VARIANTS

V = 40


def tiny(n_layer=3, seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=32, n_layer=n_layer, n_head=2, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def batch(B=3, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0  # right padding on row 1
    ids[1, 6:] = 0
    loss_mask = torch.zeros(B, T, dtype=torch.long)
    loss_mask[:, 4:] = 1
    loss_mask[1, 6:] = 0
    return ids, mask, loss_mask


# ---------------------------------------------------------------------------------------------
# noise function


def _expected_scale(h: np.ndarray, base: float, beta: float = 0.1) -> np.ndarray:
    """The paper's formula in plain numpy, one token (row) at a time (odd C: unique median)."""
    var = h.var(axis=-1, ddof=1, keepdims=True)
    factor = np.minimum(np.exp(var / (var.mean() + 1e-6)), 5.0)
    med = np.median(h, axis=-1, keepdims=True)
    dev = np.abs(h - med)
    mad = np.median(dev, axis=-1, keepdims=True)
    mad = np.maximum(mad, 1e-6 * np.linalg.norm(h, axis=-1, keepdims=True))
    w = np.exp(-beta * dev / (mad + 1e-6))
    return base * mad * w * factor


def test_noise_scale_follows_formula_on_constructed_inputs():
    h = np.array(
        [
            [[0.0, 1.0, 2.0, 3.0, 10.0],  # med 2, mad 1, large variance -> factor clamped at 5
             [5.0, 5.0, 5.0, 5.0, 5.0],  # mad 0 -> clamped to 1e-6 * ||h||, weight 1
             [-1.0, 0.5, 0.0, 0.25, 1.0]],  # small variance -> factor ~ 1
        ]
    )  # fmt: skip
    got = noise_scale(torch.tensor(h, dtype=torch.float64), 0.3, beta=0.1).numpy()
    want = _expected_scale(h, 0.3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert want[0, 0, 0] == pytest.approx(0.3 * 1.0 * math.exp(-0.1 * 2 / (1 + 1e-6)) * 5.0)  # clamp hit
    assert want[0, 1, 0] == pytest.approx(0.3 * 1e-6 * math.sqrt(125.0) * 1.0)  # var 0 -> factor exp(0) = 1


def test_noise_has_zero_mean_and_the_formula_std():
    g = torch.Generator().manual_seed(0)
    token = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4, 1.1, 0.0])
    h = token.expand(1, 20000, 7).clone()  # identical tokens: factor = clamp(e^1) = e
    s = 0.2
    noise = adaptive_noise(h, s, beta=0.1, generator=g)
    scale = _expected_scale(h[0, :1].double().numpy()[None], s * float(h.std()))[0, 0]
    assert np.allclose(noise_scale(h, s * h.std())[0, 0].numpy(), scale, rtol=1e-5)
    emp_mean = noise[0].mean(0).numpy()
    emp_std = noise[0].std(0).numpy()
    assert np.all(np.abs(emp_mean) < 4 * scale / math.sqrt(20000))  # zero mean
    np.testing.assert_allclose(emp_std, scale, rtol=0.03)  # per-element std = the formula


def test_noise_scale_convention():
    assert scale_multiplier(0.1, "sigma0") == pytest.approx(0.1)
    assert scale_multiplier(0.1, "sigma0_squared") == pytest.approx(0.01)
    assert scale_multiplier(0.1, "sigma0_squared", training=False) == pytest.approx(0.1)  # SNR uses sigma0
    with pytest.raises(ValueError, match="noise_scale"):
        scale_multiplier(0.1, "sigma")
    model = tiny()
    a = NoiseInjector(model, [0], sigma0=0.1, noise_scale="sigma0")
    b = NoiseInjector(model, [0], sigma0=0.1, noise_scale="sigma0_squared")
    assert a.s == pytest.approx(0.1) and b.s == pytest.approx(0.01)


# ---------------------------------------------------------------------------------------------
# SNR


class ScaledStack(nn.Module):
    """A toy 'model' whose block i multiplies the stream by c_i: block outputs have known
    scales, and since the adaptive noise grows with scale**2 the SNR falls as 1/scale."""

    def __init__(self, factors, dim=16):
        super().__init__()
        self.emb = nn.Embedding(V, dim)
        self.blocks = nn.ModuleList([_Scale(c) for c in factors])

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        x = self.emb(input_ids)
        hidden = [x]
        for b in self.blocks:
            x = b(x)
            hidden.append(x)
        return SimpleNamespace(logits=x, hidden_states=tuple(hidden) if output_hidden_states else None)


class _Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


def test_snr_selection_on_a_model_with_known_ordering():
    torch.manual_seed(0)
    model = ScaledStack([1.0, 3.0, 1 / 6, 4.0])  # cumulative scales 1, 3, 0.5, 2
    ids, mask, _ = batch(B=4, T=12)
    model.train()
    g = torch.Generator().manual_seed(0)
    res = layer_snr(model, ids, mask, sigma0=0.1, generator=g)
    assert model.training  # mode restored
    snr = res["snr"]
    assert snr.shape == (4,)
    np.testing.assert_allclose((snr * torch.tensor([1.0, 3.0, 0.5, 2.0])).numpy() / float(snr[0]), 1.0, rtol=0.05)
    assert select_layers(snr, 2, "largest") == [2, 0]
    assert select_layers(snr, 2, "lowest") == [1, 3]
    assert select_layers(snr, 4, "largest") == [2, 0, 3, 1]
    with pytest.raises(ValueError, match="1 <= k <= 4"):
        select_layers(snr, 5)
    with pytest.raises(ValueError, match="selection"):
        select_layers(snr, 1, "middle")


def test_snr_on_gpt_excludes_embeddings_and_is_deterministic():
    model = tiny(n_layer=3)
    ids, mask, _ = batch()
    with torch.no_grad():
        hidden = model(ids, mask, output_hidden_states=True).hidden_states
    a = layer_snr(model, ids, mask, sigma0=0.1, generator=torch.Generator().manual_seed(3))
    b = snr_from_hidden(hidden[1:], sigma0=0.1, token_mask=mask, generator=torch.Generator().manual_seed(3))
    assert a["snr"].shape == (3,) and torch.equal(a["snr"], b["snr"])
    assert torch.all(a["snr"] > 0) and not a["snr"].requires_grad


# ---------------------------------------------------------------------------------------------
# hooks


def test_hooks_off_are_bit_identical_and_on_only_in_training_noisy_pass():
    model = tiny().train()  # dropout 0: train mode itself is deterministic
    ids, mask, _ = batch()
    ref = model(ids, mask).logits.detach().clone()
    inj = NoiseInjector(model, [0, 2], sigma0=0.5).attach()
    assert all(len(decoder_blocks(model)[i]._forward_hooks) == 1 for i in (0, 2))
    assert len(decoder_blocks(model)[1]._forward_hooks) == 0
    inj.attach()  # idempotent
    assert len(decoder_blocks(model)[0]._forward_hooks) == 1
    state = torch.get_rng_state()
    assert torch.equal(model(ids, mask).logits, ref)  # attached, not in a noisy pass
    assert torch.equal(torch.get_rng_state(), state)  # and no random numbers drawn
    with inj.noisy(mask):
        noisy = model(ids, mask).logits
    assert not torch.allclose(noisy, ref) and inj.calls == 2
    assert torch.equal(model(ids, mask).logits, ref)  # off again after the context
    model.eval()
    with inj.noisy(mask), torch.no_grad():
        assert torch.equal(model(ids, mask).logits, ref)  # eval mode: never noise
    assert inj.calls == 2
    with pytest.raises(RuntimeError, match="already has a NoiseFiT"):
        NoiseInjector(model, [2], sigma0=0.1).attach()
    inj.detach()
    assert all(len(b._forward_hooks) == 0 for b in decoder_blocks(model))
    with pytest.raises(ValueError, match="decoder layers"):
        NoiseInjector(model, [3], sigma0=0.1)


class _Tok:
    pad_id, bos_id, eos_id, sep_id = 0, 1, 2, 3

    def decode(self, ids, skip_special=True):
        return " ".join(map(str, ids))


def test_no_noise_during_generation():
    model = tiny().train()
    prompts = [[1, 7, 8, 9, 3], [1, 12, 3]]
    model.eval()
    clean = generate(model, _Tok(), prompts, max_new_tokens=6)
    model.train()
    inj = NoiseInjector(model, [0, 1, 2], sigma0=5.0).attach()
    neft = NEFTune(model, alpha=50.0, pad_id=0).attach()
    with inj.noisy():
        out = generate(model, _Tok(), prompts, max_new_tokens=6)
    assert out.token_ids == clean.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(out.token_logprobs, clean.token_logprobs))
    assert inj.calls == 0 and neft.last_magnitude is None
    assert model.training  # generate restored the mode


# ---------------------------------------------------------------------------------------------
# hybrid loss


def _logits(seed, B=3, T=9):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g)


def test_hybrid_equals_ce_when_alpha_1_lambda_0():
    ids, _, loss_mask = batch()
    clean, n1, n2 = _logits(0), _logits(1), _logits(2)
    out = hybrid_loss(clean, [n1, n2], ids, loss_mask, alpha=1.0, lambda_consistency=0.0)
    assert torch.allclose(out["total"], causal_lm_loss(clean, ids, loss_mask), atol=1e-7, rtol=0)
    assert out["soft"] > 0 and out["consistency"] > 0  # still computed for logging
    full = hybrid_loss(clean, [n1, n2], ids, loss_mask, alpha=0.5, lambda_consistency=0.1)
    want = 0.5 * full["ce"] + 0.5 * full["soft"] + 0.1 * full["consistency"]
    assert torch.allclose(full["total"], want)


def test_kl_terms_are_shifted_and_masked_like_ce():
    ids, _, loss_mask = batch()
    clean = _logits(0)
    noisy = clean.clone()
    counted = loss_mask[:, 1:].bool()  # logits position t predicts target t+1
    noisy[:, :-1][~counted] += 10 * _logits(5)[:, :-1][~counted]  # differ only where no target counts
    noisy[:, -1] += 10.0  # the last position predicts nothing
    out = hybrid_loss(clean, [noisy, clean], ids, loss_mask)
    assert out["soft"].abs() < 1e-6 and out["consistency"].abs() < 1e-6
    noisy2 = clean.clone()
    noisy2[0, 5] += 3 * _logits(6)[0, 5]  # predicts target 6 of row 0, which counts
    assert hybrid_loss(clean, [noisy2, clean], ids, loss_mask)["soft"] > 1e-3


def test_teacher_is_detached_by_default_and_not_in_the_paper_variant():
    ids, _, loss_mask = batch()
    n1, n2 = _logits(1).requires_grad_(), _logits(2).requires_grad_()

    def clean_grad(**kw):
        clean = _logits(0).requires_grad_()
        hybrid_loss(clean, [n1, n2], ids, loss_mask, alpha=0.5, lambda_consistency=0.1, **kw)["total"].backward()
        return clean.grad

    ce_only = _logits(0).requires_grad_()
    (0.5 * causal_lm_loss(ce_only, ids, loss_mask)).backward()
    assert torch.allclose(clean_grad(), ce_only.grad, atol=1e-7)  # only the CE reaches the clean pass
    assert not torch.allclose(clean_grad(detach_teacher=False), ce_only.grad, atol=1e-5)
    teacher_only = _logits(0).requires_grad_()
    hybrid_loss(teacher_only, [n1, n2], ids, loss_mask, weights=(0.0, 1.0, 0.0))["total"].backward()
    assert teacher_only.grad is None  # KL-only: no gradient at all into the detached teacher
    assert n1.grad is not None and n1.grad.abs().sum() > 0


def test_temperature_and_weight_errors():
    ids, _, loss_mask = batch()
    clean, n1, n2 = _logits(0), _logits(1), _logits(2)
    t2 = hybrid_loss(clean, [n1, n2], ids, loss_mask, temperature=2.0)["soft"]
    assert not torch.allclose(t2, hybrid_loss(clean, [n1, n2], ids, loss_mask)["soft"])
    with pytest.raises(ValueError, match="two noisy passes"):
        hybrid_loss(clean, [n1], ids, loss_mask)
    with pytest.raises(ValueError, match="temperature"):
        hybrid_loss(clean, [n1, n2], ids, loss_mask, temperature=0.0)
    ce_noisy = hybrid_loss(None, [n1], ids, loss_mask, weights=loss_weights("ce_only", 0.5, 0.1))
    assert torch.allclose(ce_noisy["total"], causal_lm_loss(n1, ids, loss_mask))


# ---------------------------------------------------------------------------------------------
# R-Drop


def test_rdrop_kl_is_symmetric():
    ids, _, loss_mask = batch()
    a, b = _logits(1), _logits(2)
    m = loss_mask[:, 1:].float()
    ab, ba = symmetric_kl(a[:, :-1], b[:, :-1], m), symmetric_kl(b[:, :-1], a[:, :-1], m)
    assert torch.allclose(ab, ba) and ab > 0
    assert symmetric_kl(a[:, :-1], a[:, :-1], m).abs() < 1e-6
    out = rdrop_loss(a, b, ids, loss_mask, weight=2.0)
    ce = 0.5 * (causal_lm_loss(a, ids, loss_mask) + causal_lm_loss(b, ids, loss_mask))
    assert torch.allclose(out["total"], ce + 2.0 * ab)
    assert torch.allclose(rdrop_loss(b, a, ids, loss_mask)["consistency"], ab)


# ---------------------------------------------------------------------------------------------
# NEFTune


@pytest.mark.parametrize("use_mask", [True, False])
def test_neftune_magnitude_and_padding(use_mask):
    model = tiny(n_embd=32).train()
    ids, mask, _ = batch(B=3, T=9)  # row 1 has 6 real tokens, the others 9
    emb = input_embeddings(model)
    neft = NEFTune(model, alpha=5.0, pad_id=None if use_mask else 0).attach()
    with torch.no_grad(), neft.batch(mask if use_mask else None):
        noise = emb(ids) - emb.weight[ids]
    m = torch.tensor([neftune_magnitude(5.0, L, 32) for L in (9, 6, 9)])
    assert torch.allclose(neft.last_magnitude, m)
    assert m[1] == pytest.approx(5.0 / math.sqrt(6 * 32))  # true length, not the padded 9
    assert torch.all(noise[1, 6:] == 0)  # padding: exactly zero
    for i in range(3):
        real = noise[i][mask[i].bool()]
        assert real.abs().max() <= m[i] + 1e-6 and real.abs().max() > 0.9 * m[i]  # uniform(-m, m)
        assert abs(float(real.std()) - float(m[i]) / math.sqrt(3)) < 0.15 * float(m[i])
    model.eval()
    with torch.no_grad():
        assert torch.equal(emb(ids), emb.weight[ids])  # eval: no noise


def test_neftune_is_not_registered_twice():
    model = tiny()
    neft = NEFTune(model, alpha=5.0).attach()
    neft.attach()
    assert len(input_embeddings(model)._forward_hooks) == 1
    with pytest.raises(RuntimeError, match="already registered"):
        NEFTune(model, alpha=5.0).attach()
    neft.detach()
    assert len(input_embeddings(model)._forward_hooks) == 0
    NEFTune(model, alpha=5.0).attach()  # fine after detaching
    with pytest.raises(ValueError, match="alpha"):
        NEFTune(model, alpha=0.0)


# ---------------------------------------------------------------------------------------------
# config


def test_config_defaults_and_clear_errors():
    cfg = NoiseFitConfig.from_dict({})
    assert len(cfg.seeds) >= 5 and cfg.noise_scale == "sigma0" and cfg.detach_teacher and cfg.workers == 0
    assert set(cfg.variants) <= set(VARIANTS)
    # the default variants are exactly those that answer a claim
    from trustlab.noisefit.claims import CLAIMS, arm

    answered = {arm(n)[0] for c in CLAIMS for n in (c.method, c.baseline)} - {"base"}
    assert set(cfg.variants) == answered and set(cfg.new_facts_variants) <= answered
    assert len(cfg.sigma0_grid) == len(cfg.neftune_alpha_grid) >= 4  # equal tuning budgets
    with pytest.raises(ConfigError, match="neftune_alpha_grid"):
        NoiseFitConfig.from_dict({"neftune_alpha_grid": [1.0, 2.0]})
    assert cfg.decoding.n_samples == 5 and cfg.decoding.temperature == 0.5 and cfg.decoding.top_p == 0.9
    assert cfg.decoding.top_k == 40 and cfg.decoding.repetition_penalty == 1.2
    with pytest.raises(ConfigError, match=r"noisefit.sigma0 = 0.0 is out of range: allowed 0 < sigma0"):
        NoiseFitConfig.from_dict({"sigma0": 0.0})
    with pytest.raises(ConfigError, match=r"sigma0 = -1"):
        NoiseFitConfig.from_dict({"sigma0": -1})
    with pytest.raises(ConfigError, match=r"unknown 'noisefit_bogus'; allowed values are 'sft', 'neftune'"):
        NoiseFitConfig.from_dict({"variants": ["sft", "noisefit_bogus"]})
    with pytest.raises(ConfigError, match="alpha"):
        NoiseFitConfig.from_dict({"alpha": 1.5})
    with pytest.raises(ConfigError, match="rdrop_dropout"):
        NoiseFitConfig.from_dict({"rdrop_dropout": 0.0, "variants": ["sft", "rdrop"]})  # R-Drop needs dropout > 0
    NoiseFitConfig.from_dict({"rdrop_dropout": 0.0, "variants": ["sft"], "new_facts_variants": []})
    with pytest.raises(ConfigError, match="export_seed"):
        NoiseFitConfig.from_dict({"seeds": [1, 2, 3], "export_seed": 0})
    with pytest.raises(ConfigError, match="noise_scale"):
        NoiseFitConfig.from_dict({"noise_scale": "sigma"})
    with pytest.raises(ConfigError, match=r"noisefit.k = 5 is out of range: the model has 4 decoder layers"):
        NoiseFitConfig.from_dict({"k": 5}).check_model(4)
    NoiseFitConfig.from_dict({"k": 4}).check_model(4)
    assert NoiseFitConfig.from_dict({}).decoding.sample_splits == ["qa_heldout", "nonexistent_test"]
    with pytest.raises(ConfigError, match=r"noisefit.decoding.sample_splits = \['qa_test'\]: unknown 'qa_test'"):
        NoiseFitConfig.from_dict({"decoding": {"sample_splits": ["qa_test"]}})
    with pytest.raises(ConfigError, match="at least one protocol"):
        NoiseFitConfig.from_dict({"decoding": {"greedy": False, "sample_splits": []}})
