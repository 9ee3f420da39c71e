"""The noisefit stage's logic end to end on a tiny world and a tiny untrained base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trustlab.config import ConfigError
from trustlab.data.config import WorldConfig
from trustlab.data.world import generate_world
from trustlab.lm.checkpoint import load_pretrained, save_model
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.tokenizer import WordTokenizer
from trustlab.noisefit import experiment as ex
from trustlab.noisefit.config import NoiseFitConfig


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nf")
    attributes = ["birth_city", "birth_year", "employer"]
    wc = WorldConfig.from_dict({"n_people": 24, "n_nonexistent": 8, "attributes": attributes})
    generate_world(wc, root / "world", seed=0)
    world = ex.load_world(root)
    texts = [r["prompt"] + " " + r["answer"] for rows in world.splits.values() for r in rows]
    texts += [r["answer"] for rows in world.splits.values() for r in rows]
    texts += [c for rows in world.splits.values() for r in rows for c in r["choices"]]
    tok = WordTokenizer.fit(texts)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=3, n_head=2, n_embd=32))
    save_model(model, root / "models" / "base", tok)
    return root


def small_cfg(**kw):
    base = {
        "variants": ["sft", "noisefit_largest", "noisefit_lowest"],
        "seeds": [0, 1],
        "new_facts_variants": ["sft"],
        "steps": 3,
        "batch_size": 8,
        "warmup_steps": 1,
        "max_eval_items": 6,
        "decoding": {"n_samples": 2, "max_new_tokens": 5},
        "threads": 1,
    }
    base.update(kw)
    return NoiseFitConfig.from_dict(base)


def test_data_and_classification(data_dir):
    world = ex.load_world(data_dir)
    pairs = ex.finetune_pairs(world)
    n_train, n_abstain = len(world.splits["qa_train"]), len(world.splits["nonexistent_train"])
    assert len(pairs) == n_train + n_abstain
    assert sum(a == world.abstain for _, a in pairs) == n_abstain
    assert len(ex.finetune_pairs(world, new_facts=True)) == len(pairs) + len(world.splits["new_facts"])
    items = ex.eval_items(world, 4)
    assert set(items) == set(ex.EVAL_SPLITS) and all(len(v) <= 4 for v in items.values())
    assert ex.eval_items(world, 4) == items  # the same items every time
    real = world.splits["qa_heldout"][0]
    fake = world.splits["nonexistent_test"][0]
    wrong = next(v for v in world.closed_sets[real["attribute"]] if v != real["value"])
    assert ex.is_hallucination(ex.classify(wrong, real), real)
    assert not ex.is_hallucination(ex.classify(real["value"], real), real)
    assert not ex.is_hallucination(ex.classify("unknown", real), real)  # abstaining is not hallucinating
    assert ex.is_hallucination(ex.classify("banana", fake), fake)  # non-existent: anything but abstention
    assert not ex.is_hallucination(ex.classify("unknown", fake), fake)
    assert ex.abstained(ex.classify("unknown", fake), fake)
    p, r = ex.abstention_pr([("abstain", real), ("correct", real)], [("correct", fake), ("hallucination", fake)])
    assert p == pytest.approx(0.5) and r == pytest.approx(0.5)


def test_plan_orders_sft_first():
    both = ["noisefit_largest", "sft"]
    cfg = small_cfg(variants=both, seeds=[0, 1, 2], new_facts_variants=both)
    runs = ex.plan(cfg)
    assert runs[0] == ("default", "sft", 0) and runs[2] == ("default", "sft", 1)
    assert runs[6:8] == [("new_facts", "sft", 0), ("new_facts", "noisefit_largest", 0)] and len(runs) == 12
    assert len(ex.plan(small_cfg(include_new_facts=False))) == 6


def test_run_experiment_end_to_end(data_dir, tmp_path):
    cfg = small_cfg()
    res = ex.run_experiment(cfg, data_dir, track=True, log=None)  # W&B is disabled in tests
    runs = [r for r in res.rows if r["setting"] != "base"]
    assert len(runs) == 2 * 3 + 2 * 1 and res.rows[0]["variant"] == "base"
    row = next(r for r in runs if r["variant"] == "noisefit_largest")
    for key in ("em_qa_train", "em_qa_heldout", "halluc_qa_heldout", "halluc_nonexistent_test", "abstain_precision",
                "abstain_recall", "mc_qa_heldout", "mc_abstain_nonexistent_test", "s_em_qa_heldout",
                "agree_qa_heldout", "step_ratio"):  # fmt: skip
        assert key in row, key
    assert all(0 <= row[k] <= 1 for k in ("halluc_qa_heldout", "agree_qa_heldout", "mc_qa_heldout"))
    assert next(r for r in runs if r["variant"] == "sft")["step_ratio"] == pytest.approx(1.0)
    assert row["step_ratio"] > 1.2  # three forward passes per step
    assert len(res.snr) == 2 * 2 * 3  # (largest, lowest) x seeds x layers
    for seed in (0, 1):
        hi = {s["layer"] for s in res.snr if s["variant"] == "noisefit_largest" and s["seed"] == seed and s["selected"]}
        lo = {s["layer"] for s in res.snr if s["variant"] == "noisefit_lowest" and s["seed"] == seed and s["selected"]}
        assert len(hi) == len(lo) == 2 and hi != lo
    assert {c["variant"] for c in res.curves} == {"sft", "noisefit_largest", "noisefit_lowest"}
    # exported models of the export seed load back and are plain (no hooks)
    assert set(res.exported) == {"sft", "noisefit_largest", "noisefit_lowest"}
    model, tok = load_pretrained(res.exported["noisefit_largest"])
    meta = json.loads((data_dir / "models" / "noisefit" / "noisefit_largest" / "config.json").read_text())["metadata"]
    assert meta["variant"] == "noisefit_largest" and meta["seed"] == 0
    assert len(meta["selection"]["selected_layers"]) == 2
    # tables, claims, outputs, figures
    table = ex.summary_table(res)
    assert list(table.variant) == ["base", "sft", "noisefit_largest", "noisefit_lowest"]
    claims = ex.make_claims(res)
    names = {c.claim for c in claims}
    assert any("vs SFT" in n for n in names) and any("Largest" in n for n in names)
    assert all(c.n_seeds == 2 and c.verdict in ("supported", "not supported", "inconclusive") for c in claims)
    metrics = ex.write_outputs(res, tmp_path, claims)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["claims"] and "sft/step_ratio" in saved["headline"] and metrics["exported"]
    assert (tmp_path / "plots" / "runs.csv").exists() and (tmp_path / "plots" / "snr.csv").exists()
    figs = {"snr": ex.plot_snr(res), "curves": ex.plot_curves(res), "hallucination": ex.plot_hallucination(res)}
    assert all(f.axes for f in figs.values())
    ex.log_summary(res, claims, figs)
    steps = ex.step_time_table(res)
    assert np.isfinite(steps.ratio_to_sft).all()


def test_k_is_checked_against_the_base_model_before_training(data_dir):
    with pytest.raises(ConfigError, match="k = 4 is out of range: the model has 3 decoder layers"):
        ex.run_experiment(small_cfg(k=4), data_dir, track=False, log=None)
