"""The noisefit stage's logic end to end on a tiny world and a tiny untrained base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trustlab.reporting.html import write_summary_html
from trustlab.core.config import ConfigError
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
    # the sampling protocol runs on decoding.sample_splits only; greedy and MC on every split
    assert {"s_halluc_nonexistent_test", "agree_nonexistent_test", "em_qa_train", "mc_qa_train"} <= set(row)
    assert not {"s_em_qa_train", "agree_qa_train", "s_em_new_facts"} & set(row)
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
    assert saved["claims"] and metrics["exported"]
    head = saved["headline"]
    assert head["sft/step_time_vs_sft"] == pytest.approx(1.0) and head["noisefit_largest/step_time_vs_sft"] > 1.2
    assert {"base/hallucination_heldout", "noisefit_largest/hallucination_nonexistent",
            "sft/new_facts/hallucination_heldout", "stage_seconds", "claims_supported"} <= set(head)  # fmt: skip
    assert all(isinstance(v, (int, float)) for v in head.values())
    for name in ("runs", "snr", "curves", "step_time", "hallucination", "claims"):
        assert (tmp_path / "plots" / f"{name}.csv").exists(), name
    figs = {"snr": ex.plot_snr(res), "curves": ex.plot_curves(res), "hallucination": ex.plot_hallucination(res),
            "step_time": ex.plot_step_time(res)}  # fmt: skip
    assert all(f.axes for f in figs.values())
    sections = [("claims", ex.claims_frame(claims)), ("snr", figs["snr"])]
    html = write_summary_html(tmp_path / "summary.html", "t", sections)
    assert "data:image/png;base64," in html.read_text()
    ex.log_summary(res, claims, figs, html_path=html)
    steps = ex.step_time_table(res)
    assert np.isfinite(steps.ratio_to_sft).all()
    assert dict(zip(steps.variant, steps.forward_passes)) == {"sft": 1, "noisefit_largest": 3, "noisefit_lowest": 3}


def test_k_is_checked_against_the_base_model_before_training(data_dir):
    with pytest.raises(ConfigError, match="k = 4 is out of range: the model has 3 decoder layers"):
        ex.run_experiment(small_cfg(k=4), data_dir, track=False, log=None)


def test_missing_base_model_names_the_stage(data_dir, tmp_path):
    cfg = small_cfg(base_model=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"no base model at .*nowhere.*run the base_model stage first"):
        ex.run_experiment(cfg, data_dir, track=False, log=None)


def test_same_seed_same_metrics(data_dir):
    cfg = small_cfg(variants=["sft", "noisefit_largest"], seeds=[0], include_new_facts=False, export=False)
    timing = {"train_s", "eval_s", "step_time", "step_ratio"}

    def metrics():
        rows = ex.run_experiment(cfg, data_dir, track=False, log=None).rows
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    import pandas as pd

    first, second = pd.DataFrame(metrics()), pd.DataFrame(metrics())
    assert first.equals(second)  # NaN (e.g. precision with no abstention) equal to NaN


def test_wandb_logging_keys(data_dir, monkeypatch):
    """Per (variant, seed) runs in group noisefit log every loss component, the SNR and the selected layers."""
    import trustlab.tracking as tracking

    runs = []
    real = tracking.start_run

    def recording(family, job_type, name, config=None, tags=(), mode=None):
        cm = real(family, job_type, name, config, tags, mode="disabled")
        run = cm.__enter__()
        runs.append((family, job_type, name, run))
        run_cm = cm

        class _CM:
            def __enter__(self):
                return run

            def __exit__(self, *exc):
                return run_cm.__exit__(*exc)

        return _CM()

    monkeypatch.setattr(tracking, "start_run", recording)
    cfg = small_cfg(variants=["sft", "rdrop", "noisefit_largest"], seeds=[0], include_new_facts=False, export=False,
                    log_every=1, steps=3)  # fmt: skip
    ex.run_experiment(cfg, data_dir, track=True, log=None)
    by_name = {name: (family, job, run) for family, job, name, run in runs}
    assert set(by_name) == {"sft-seed0", "rdrop-seed0", "noisefit_largest-seed0"}
    assert all(f == "noisefit" and j == "finetune" for f, j, _ in by_name.values())
    nf = by_name["noisefit_largest-seed0"][2]
    logged = set().union(*[set(h) for h in nf.history])
    assert {"noisefit/ce", "noisefit/soft", "noisefit/consistency", "noisefit/total"} <= logged
    assert [h["_step"] for h in nf.history] == [1, 2, 3]
    summary = nf.summary_data
    assert len(summary["noisefit/selected_layers"]) == 2
    assert {"noisefit/snr/layer_0", "noisefit/snr/layer_1", "noisefit/snr/layer_2"} <= set(summary)
    assert sum(r["selected"] for r in nf.tables["noisefit/snr"]) == 2
    assert "eval/halluc_qa_heldout" in summary and summary["noisefit/step_ratio"] > 1.2
    sft = by_name["sft-seed0"][2]
    assert {"noisefit/ce", "noisefit/total"} <= set(sft.history[0])
    assert "noisefit/selected_layers" not in sft.summary_data
    assert "noisefit/consistency" in by_name["rdrop-seed0"][2].history[0]  # R-Drop's symmetric KL


def test_a_hugging_face_model_plugs_in(data_dir, tmp_path):
    """The stage takes any model object + tokenizer: a tiny random GPT-2 through HFCausalLM,
    fine-tuned with NoiseFiT, evaluated and exported with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    from trustlab.lm.hf_backend import HFCausalLM

    _, tok = load_pretrained(data_dir / "models" / "base")
    torch.manual_seed(0)
    gcfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=3, n_head=2)
    model = HFCausalLM(transformers.GPT2LMHeadModel(gcfg)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out_dir = tmp_path / "data"
    out_dir.mkdir()
    (out_dir / "world").symlink_to(data_dir / "world")
    cfg = small_cfg(variants=["sft", "noisefit_largest"], seeds=[0], include_new_facts=False)
    res = ex.run_experiment(cfg, out_dir, model=model, tokenizer=tok, base_name="tiny-gpt2", track=False, log=None)
    row = next(r for r in res.rows if r["variant"] == "noisefit_largest")
    assert row["selected_layers"] and 0 <= row["halluc_qa_heldout"] <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base is not modified
    saved = out_dir / "models" / "noisefit" / "noisefit_largest"
    assert (saved / "config.json").exists() and (saved / "tokenizer.json").exists()
    meta = json.loads((saved / "trustlab.json").read_text())["metadata"]
    assert meta["variant"] == "noisefit_largest" and meta["base_model"] == "tiny-gpt2"
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(saved)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.hf.parameters())


def _constructed_results():
    """Three seeds with known per-seed hallucination rates and step times."""
    halluc = {  # variant -> held-out hallucination per seed 0, 1, 2
        "sft": [0.5, 0.6, 0.7],
        "neftune": [0.1, 0.2, 0.3],
        "noisefit_largest": [0.3, 0.4, 0.5],  # SFT - 0.2 in every seed
        "noisefit_lowest": [0.35, 0.3, 0.55],  # differences -0.05, +0.1, -0.05: mean 0
    }
    res = ex.Results(config={})
    res.rows.append({"setting": "base", "variant": "base", "label": "base model", "seed": 0, "halluc_qa_heldout": 0.9})
    for variant, values in halluc.items():
        for seed, h in enumerate(values):
            res.rows.append({"setting": "default", "variant": variant, "label": variant, "seed": seed,
                             "halluc_qa_heldout": h, "halluc_nonexistent_test": 0.5, "em_qa_train": 1.0,
                             "step_time": 0.01 * (3 if variant.startswith("noisefit") else 1), "train_s": 1.0,
                             "step_ratio": 3.0 if variant.startswith("noisefit") else 1.0})  # fmt: skip
    return res


def test_claims_verdicts_and_readings_on_known_values():
    res = _constructed_results()
    claims = {c.claim: c for c in ex.make_claims(res)}
    vs_sft = claims["NoiseFiT lowers hallucination vs SFT (held-out people)"]
    assert vs_sft.effect == pytest.approx(-0.2) and vs_sft.n_seeds == 3 and vs_sft.verdict == "supported"
    vs_neft = claims["NoiseFiT lowers hallucination vs NEFTune (held-out people)"]
    assert vs_neft.effect == pytest.approx(0.2) and vs_neft.verdict == "not supported"
    hi_lo = claims["Largest-SNR layers hallucinate less than Lowest (held-out people)"]
    assert hi_lo.effect == pytest.approx(0.0, abs=1e-12) and hi_lo.verdict == "inconclusive"
    assert hi_lo.ci_low < 0 < hi_lo.ci_high
    # equal non-existent rates in every seed: zero effect, zero-width CI -> inconclusive
    assert claims["NoiseFiT lowers hallucination vs SFT (non-existent people)"].verdict == "inconclusive"
    frame = ex.claims_frame(list(claims.values())).set_index("claim")
    assert frame.loc[vs_sft.claim, "issue"] == 1 and frame.loc[vs_neft.claim, "issue"] == 2
    assert frame.loc[hi_lo.claim, "issue"] == 3
    assert frame.loc[vs_sft.claim, "reading"].startswith("supported: NoiseFiT-Largest - SFT = -20.0 pp")
    assert frame.loc[vs_neft.claim, "reading"].startswith("not supported: the opposite holds here")
    assert "+20.0 pp" in frame.loc[vs_neft.claim, "reading"]
    assert "includes 0" in frame.loc[hi_lo.claim, "reading"]
    # claim 4 needs the KL-only / consistency-only variants, which were not run
    assert ex.missing_issue_claims(list(claims.values())) == [ex.ISSUE_CLAIMS[4]]
    text = ex.findings(ex.Results(rows=res.rows, config=_findings_config()), list(claims.values()))
    assert "not supported" in text and "Not evaluated" in text


def _findings_config():
    cfg = small_cfg(seeds=[0, 1, 2])
    return cfg.to_dict()


def test_tables_on_known_values():
    res = _constructed_results()
    t = ex.hallucination_table(res, sampled=False).set_index("variant")
    assert list(t.index) == ["base", "sft", "neftune", "noisefit_largest", "noisefit_lowest"]
    assert t.loc["sft", "halluc_qa_heldout"] == pytest.approx(0.6)
    assert t.loc["sft", "halluc_qa_heldout_std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert t.loc["base", "n_seeds"] == 1 and t.loc["base", "halluc_qa_heldout_std"] == 0.0
    fmt = ex.hallucination_table(res, fmt=True, sampled=False).set_index("variant")
    assert fmt.loc["sft", "halluc_qa_heldout"] == "0.600 ± 0.100"
    steps = ex.step_time_table(res).set_index("variant")
    assert steps.loc["noisefit_largest", "ratio_to_sft"] == pytest.approx(3.0)
    assert steps.loc["noisefit_largest", "ms_per_step"] == pytest.approx(30.0)
    assert steps.loc["noisefit_largest", "forward_passes"] == 3 and steps.loc["neftune", "forward_passes"] == 1
    assert ex.hallucination_column("s_halluc_qa_heldout") == "sampled: held-out people"
    assert ex.hallucination_column("halluc_nonexistent_test_std") == "greedy: non-existent people (std)"
    long = ex.hallucination_long(res)
    row = long[(long.variant == "noisefit_largest") & (long.split == "qa_heldout")].iloc[0]
    assert row["mean"] == pytest.approx(0.4) and row.protocol == "greedy"
    head = ex.headline(res, ex.make_claims(res))
    assert head["noisefit_largest/hallucination_heldout"] == pytest.approx(0.4)
    assert head["noisefit_largest/step_time_vs_sft"] == pytest.approx(3.0)
    assert head["claims_supported"] == 1 and head["claims_not_supported"] == 1


def test_rates_on_known_labels():
    real = [{"exists": True}] * 4
    out = {}
    ex._rates(out, "", "qa_heldout", ["correct", "other", "abstain", "hallucination"], real)
    assert out == {"em_qa_heldout": 0.25, "halluc_qa_heldout": 0.25, "abstain_qa_heldout": 0.25,
                   "other_qa_heldout": 0.25, "valid_qa_heldout": 0.75}  # fmt: skip
    fake = [{"exists": False}] * 3
    out = {}
    ex._rates(out, "s_", "nonexistent_test", ["correct", "hallucination", "other"], fake)
    # non-existent: anything but the abstention ("correct") is a hallucination, malformed answers too
    assert out == {"s_halluc_nonexistent_test": pytest.approx(2 / 3), "s_abstain_nonexistent_test": pytest.approx(1 / 3)}


def test_collapse_claim_uses_well_formed_answers():
    res = _constructed_results()
    for seed, valid in enumerate([0.0, 0.1, 0.0]):
        res.rows.append({"setting": "default", "variant": "noisefit_kl_only", "label": "KL-only", "seed": seed,
                         "em_qa_train": 0.0, "valid_qa_heldout": valid})  # fmt: skip
    for r in res.rows:
        if r["variant"] == "noisefit_largest":
            r["valid_qa_heldout"] = 1.0
    claims = {c.claim: c for c in ex.make_claims(res)}
    collapse = claims["KL-only training degrades the model (well-formed answers vs NoiseFiT, held-out people)"]
    assert collapse.effect == pytest.approx(-29 / 30) and collapse.verdict == "supported"
    em = claims["KL-only training degrades the model (train-QA accuracy vs NoiseFiT)"]
    assert em.effect == pytest.approx(-1.0)
    assert ex.missing_issue_claims(list(claims.values())) == []
