"""Variants by name, training every variant a few steps, divergence handling, bad input."""

from __future__ import annotations

import math
import re

import pytest
import torch

from trustlab.entropy_attention import run, tables
from trustlab.entropy_attention.config import EntropyAttentionConfig
from trustlab.entropy_attention.model import build_model
from trustlab.entropy_attention.results import Results
from trustlab.entropy_attention.variants import DEFAULT_VARIANTS, VARIANTS, get_variant, variant_names
from trustlab.core.config import ConfigError, load_section

TINY = {"seeds": [0], "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "steps": 2, "batch_size": 4,
        "warmup_steps": 0, "log_every": 1, "probe_windows": 2, "val_windows": 4, "eval_batch_size": 4,
        "max_train_bytes": 8000, "max_val_bytes": 4000, "overhead_steps": 1, "gamma_sweep": [0.0, 0.2],
        "wandb_images": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from trustlab.data.config import CodeCorpusConfig
    from trustlab.data.code_corpus import generate_code_corpus

    root = tmp_path_factory.mktemp("data")
    generate_code_corpus(CodeCorpusConfig(max_bytes=60000, max_file_bytes=20000, val_fraction=0.3), root / "code", 0)
    cfg = EntropyAttentionConfig.from_dict(TINY)
    return cfg, run.load_corpus(cfg, root)


def test_variant_table_maps_names_to_gpt_fields():
    v = get_variant("EReg(SM(t)+ScFuFFN)-noFLN")
    assert v.gpt_fields() == {"norm": "none", "activation": "none", "ffn": "scfu", "attention": "softmax_t",
                              "attention_kwargs": {}, "final_norm": False}
    assert v.entropy_reg and not get_variant("SM(t)+ScFuFFN").entropy_reg
    assert get_variant("SM+LN+G").gpt_fields()["norm"] == "layernorm"
    assert get_variant("SM+R").activation == "relu" and get_variant("SM").activation == "none"
    assert set(DEFAULT_VARIANTS) <= set(variant_names())
    model = build_model("SM+ScFuFFN-noFLN", vocab_size=261, block_size=8, n_layer=1, n_head=1, n_embd=8)
    assert isinstance(model.ln_f, torch.nn.Identity)
    assert isinstance(build_model("SM+ScFuFFN", vocab_size=261, block_size=8, n_layer=1, n_head=1, n_embd=8).ln_f,
                      torch.nn.LayerNorm)


def test_every_variant_builds_and_steps():
    """Every name (including the -noFLN forms): forward, backward and one optimizer step."""
    ids = torch.randint(0, 256, (2, 8))
    for name in variant_names():
        torch.manual_seed(0)
        model = build_model(name, vocab_size=261, block_size=8, n_layer=2, n_head=2, n_embd=16)
        opt = model.configure_optimizers(lr=1e-3)
        out = model(ids, output_attentions=get_variant(name).entropy_reg)
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 261), ids[:, 1:].reshape(-1))
        if get_variant(name).entropy_reg:
            loss = loss + 0.1 * model.entropy_reg(out.attentions)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), name


def test_every_variant_trains_a_few_steps(tiny):
    cfg, corpus = tiny
    for name in VARIANTS:
        r = run.train_run(cfg, corpus, name, 0)
        assert r.status == "ok", (name, r.reason)
        assert r.steps == 2 and math.isfinite(r.val_ppl)
        assert len(r.history) == 3  # steps 0, 1, 2
        assert len(r.entropy) == 2 and len(r.entropy[0]) == 2
        assert (r.learned["theta"] is not None) == get_variant(name).entropy_reg
        if get_variant(name).entropy_reg:
            assert "ent_reg" in r.curve[-1]


def test_divergence_is_caught_recorded_and_does_not_crash(tiny):
    cfg, corpus = tiny
    cfg = cfg.replace(steps=6, variants=["SM+LN+G", "SM"])
    for name in ("SM+LN+G", "SM"):
        r = run.train_run(cfg, corpus, name, 0, lr=1e4)
        assert r.status == "diverged", (name, r.status, r.curve)
        assert r.diverged_step is not None and r.steps < 6 and r.reason
    # a NaN anywhere in the forward is caught as a non-finite loss
    from trustlab.entropy_attention.module import EntropyAttentionModule
    from trustlab.lm.training import fit

    model = build_model("SM+G", vocab_size=corpus.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model.blocks[1].register_forward_hook(lambda mod, args, out: out * float("nan"))
    module = EntropyAttentionModule(model, lam=0.0, divergence_loss=20.0, warmup_steps=0)
    fit(module, corpus.train, pad_id=corpus.pad_id, batch_size=4, max_steps=5, threads=1, progress=False)
    assert module.diverged == {"step": 1, "loss": module.diverged["loss"], "reason": "non-finite loss"}
    assert math.isnan(module.diverged["loss"])
    # diverged runs appear in the divergence table and are dropped from the claims' pairs
    results = Results(config=cfg.to_dict(), runs=[r], sweep=[])
    assert math.isnan(tables.run_metrics(r, cfg.to_dict())["early_norm_entropy"]) and tables.heatmap_frame(results).empty
    summary, runs = tables.divergence_table(results)
    assert int(summary.diverged.sum()) == 1 and len(runs) == 1
    assert tables.perplexity_table(results).seeds_diverged.tolist() == [1]


def test_bad_variant_name_and_gamma_give_clear_errors():
    with pytest.raises(ValueError, match=re.escape("unknown entropy-attention variant 'SM+LN+X'; allowed variants are SM+LN+G")):
        get_variant("SM+LN+X")
    with pytest.raises(ConfigError, match="entropy_attention.variants: unknown entropy-attention variant 'nope'"):
        load_section(EntropyAttentionConfig, params={"entropy_attention": {"variants": ["SM+LN+G", "nope"]}})
    for bad in (1.0, -0.01, 2):
        with pytest.raises(ConfigError, match=r"entropy_attention.gamma = .* allowed 0 <= gamma < 1"):
            load_section(EntropyAttentionConfig, params={"entropy_attention": {"gamma": bad}})
    with pytest.raises(ConfigError, match="gamma_sweep"):
        EntropyAttentionConfig.from_dict({"gamma_sweep": [0.0, 1.0]})
    with pytest.raises(ConfigError, match="gamma_sweep_variant"):
        EntropyAttentionConfig.from_dict({"gamma_sweep": [0.1], "gamma_sweep_variant": "SM+G"})
    with pytest.raises(ConfigError, match="lam_sweep_variant"):
        EntropyAttentionConfig.from_dict({"lam_sweep_variant": "SM+G"})
    with pytest.raises(ConfigError, match="lam_sweep"):
        EntropyAttentionConfig.from_dict({"lam_sweep": [0.1, -1.0]})
    with pytest.raises(ConfigError, match="tune_seeds"):
        EntropyAttentionConfig.from_dict({"tune_seeds": []})
    with pytest.raises(ConfigError, match="workers"):
        EntropyAttentionConfig.from_dict({"workers": -1})
    assert EntropyAttentionConfig.from_dict({"lam_sweep": [], "tune_seeds": []}).lam_sweep == []
    with pytest.raises(ConfigError, match="unknown key"):
        EntropyAttentionConfig.from_dict({"gama": 0.2})
    assert EntropyAttentionConfig.from_dict({}).variants == DEFAULT_VARIANTS
