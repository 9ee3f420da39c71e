"""NoiseFiT training module: every variant trains, logs its components; HF GPT-2 path."""

from __future__ import annotations

import pytest
import torch

from trustlab.core.config import ConfigError
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.hooks import decoder_blocks, input_embeddings
from trustlab.lm.tokenizer import WordTokenizer
from trustlab.lm.training import PairDataset, collate, fit
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.module import NoiseFitModule, wandb_row
from trustlab.noisefit.objectives import NoiseFiT
from trustlab.noisefit.variants import VARIANTS

PAIRS = [(f"what is {a} plus {b} ?", f" {a + b}") for a in range(6) for b in range(6)]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.fit([p + a for p, a in PAIRS])


@pytest.fixture(scope="module")
def data(tok):
    return PairDataset(tok, PAIRS, 32)


def gpt(tok, n_layer=3, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=n_layer, n_head=2, n_embd=32))


CFG = NoiseFitConfig.from_dict({"k": 2, "lr": 3e-3, "warmup_steps": 1, "sigma0": 0.5})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_logs(tok, data, variant):
    model = gpt(tok)
    module = NoiseFitModule(model, variant, CFG, pad_id=tok.pad_id)
    res = fit(module, data, pad_id=tok.pad_id, batch_size=12, max_steps=4, seed=0, threads=1, progress=False)
    assert res.steps == 4 and len(module.step_times) == 4
    row = res.curve[-1]
    v = VARIANTS[variant]
    assert "total" in row and row["total"] == pytest.approx(row["loss"])
    keys = set(wandb_row(row))
    assert {"noisefit/total", "noisefit/step_time"} <= keys
    if type(module.objective) is NoiseFiT:  # clean + two noisy passes: every term is logged
        assert {"noisefit/ce", "noisefit/soft", "noisefit/consistency"} <= keys
        assert row["soft"] > 0 and row["consistency"] > 0
    if variant == "rdrop":
        assert row["consistency"] > 0  # the two dropout passes differ
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))  # restored
    if v.selection:
        info = module.selection_info()
        assert len(info["snr"]) == 3 and len(info["selected_layers"]) == 2
        by_snr = sorted(range(3), key=lambda i: info["snr"][i], reverse=(v.selection == "largest"))
        assert sorted(info["selected_layers"]) == sorted(by_snr[:2])
    # after training: no hooks left on the model (exported/evaluated models are plain)
    assert all(len(b._forward_hooks) == 0 for b in decoder_blocks(model))
    assert len(input_embeddings(model)._forward_hooks) == 0


def test_a_model_loaded_in_eval_mode_still_gets_noise(tok, data):
    model = gpt(tok).eval()  # as load_model() returns it
    module = NoiseFitModule(model, "noisefit_largest", CFG)
    fit(module, data, pad_id=tok.pad_id, batch_size=12, max_steps=2, seed=0, threads=1, progress=False)
    assert module.injector.calls == 2 * 2 * 2  # steps x noisy passes x layers


def test_largest_and_lowest_pick_complementary_layers(tok, data):
    b = collate([data[i] for i in range(12)], tok.pad_id)
    hi = NoiseFitModule(gpt(tok), "noisefit_largest", CFG)
    lo = NoiseFitModule(gpt(tok), "noisefit_lowest", CFG)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    hi.snr_generator, lo.snr_generator = g(), g()
    assert set(hi.objective.select_layers(hi, b)) | set(lo.objective.select_layers(lo, b)) <= {0, 1, 2}
    assert hi.objective.snr == lo.objective.snr and hi.objective.layers != lo.objective.layers


def test_invalid_k_and_rdrop_without_dropout(tok):
    with pytest.raises(ConfigError, match="k = 4 is out of range: the model has 3 decoder layers"):
        NoiseFitModule(gpt(tok), "noisefit_largest", NoiseFitConfig.from_dict({"k": 4}))
    NoiseFitModule(gpt(tok), "sft", NoiseFitConfig.from_dict({"k": 4}))  # k only matters for noisefit
    with pytest.raises(ValueError, match="unknown NoiseFiT variant 'bogus'; allowed variants are sft"):
        NoiseFitModule(gpt(tok), "bogus", CFG)
    nodrop = NoiseFitConfig.from_dict({"rdrop_dropout": 0.0, "variants": ["sft"], "new_facts_variants": []})
    with pytest.raises(ValueError, match="R-Drop needs dropout > 0"):
        NoiseFitModule(gpt(tok), "rdrop", nodrop)


def test_hf_gpt2_hooks_register_and_loss_decreases(tok, data):
    transformers = pytest.importorskip("transformers")
    from trustlab.lm.hf_backend import HFCausalLM

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=3, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    model = HFCausalLM(transformers.GPT2LMHeadModel(cfg))
    module = NoiseFitModule(model, "noisefit_largest", CFG, pad_id=tok.pad_id)
    b = collate([data[i] for i in range(12)], tok.pad_id)
    layers = module.objective.select_layers(module, b)
    blocks = decoder_blocks(model)
    assert blocks == list(model.hf.transformer.h)
    assert [len(blk._forward_hooks) for blk in blocks] == [int(i in layers) for i in range(3)]
    model.train()
    with torch.no_grad():
        clean = model(b["input_ids"], b["attention_mask"]).logits
        with module.injector.noisy(b["attention_mask"]):
            noisy = model(b["input_ids"], b["attention_mask"]).logits
        again = model(b["input_ids"], b["attention_mask"]).logits
    assert not torch.allclose(clean, noisy) and torch.equal(clean, again)
    res = fit(module, data, pad_id=tok.pad_id, batch_size=12, max_steps=12, seed=0, threads=1, progress=False)
    ce = [r["ce"] for r in res.curve]
    assert sum(ce[-3:]) / 3 < sum(ce[:3]) / 3 - 0.1
    assert module.injector.calls >= 2 * 12 * 2  # two noisy passes x two layers per step
    # NEFTune on the HF embeddings
    neft = NoiseFitModule(model, "neftune", CFG, pad_id=tok.pad_id)
    fit(neft, data, pad_id=tok.pad_id, batch_size=12, max_steps=2, seed=0, threads=1, progress=False)
    assert neft.objective.neftune.last_magnitude is not None and not neft.objective.neftune.attached
