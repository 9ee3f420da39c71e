"""The noisefit stage end to end on a tiny world and a tiny untrained base model: plan,
fine-tune, evaluate, export, the outputs on disk, W&B logging, an HF model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from trustlab.core.claims import audit
from trustlab.core.config import ConfigError
from trustlab.data.config import WorldConfig
from trustlab.data.world import generate_world
from trustlab.lm.checkpoint import load_pretrained, save_model
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.tokenizer import WordTokenizer
from trustlab.noisefit import figures, report, tables, tuning
from trustlab.noisefit import tracker as nf_tracker
from trustlab.noisefit.claims import claim_rows
from trustlab.noisefit.config import EVAL_SPLITS, NoiseFitConfig
from trustlab.noisefit.evaluation import abstained, abstention_pr, classify, is_hallucination, rates
from trustlab.noisefit.run import plan, run_experiment
from trustlab.noisefit.tracker import WandbTracker
from trustlab.noisefit.world import SPLIT_BY_PERSON, eval_items, finetune_pairs, load_world
from trustlab.reporting.html import write_summary_html
from trustlab.reporting.outputs import write_outputs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nf")
    attributes = ["birth_city", "birth_year", "employer"]
    wc = WorldConfig.from_dict({"n_people": 24, "n_nonexistent": 8, "attributes": attributes})
    generate_world(wc, root / "world", seed=0)
    world = load_world(root)
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
        "workers": 1,
        "tune": False,  # the sweeps have their own tests below
    }
    base.update(kw)
    return NoiseFitConfig.from_dict(base)


def test_data_and_classification(data_dir):
    world = load_world(data_dir)
    pairs = finetune_pairs(world)
    n_train, n_abstain = len(world.splits["qa_train"]), len(world.splits["nonexistent_train"])
    assert len(pairs) == n_train + n_abstain
    assert sum(a == world.abstain for _, a in pairs) == n_abstain
    assert len(finetune_pairs(world, new_facts=True)) == len(pairs) + len(world.splits["new_facts"])
    items = eval_items(world, 4)
    assert set(items) == set(EVAL_SPLITS) and all(len(v) <= 4 for v in items.values())
    assert eval_items(world, 4) == items  # the same items every time
    real = world.splits["qa_heldout"][0]
    fake = world.splits["nonexistent_test"][0]
    wrong = next(v for v in world.closed_sets[real["attribute"]] if v != real["value"])
    assert is_hallucination(classify(wrong, real), real)
    assert not is_hallucination(classify(real["value"], real), real)
    assert not is_hallucination(classify("unknown", real), real)  # abstaining is not hallucinating
    assert is_hallucination(classify("banana", fake), fake)  # non-existent: anything but abstention
    assert not is_hallucination(classify("unknown", fake), fake)
    assert abstained(classify("unknown", fake), fake)
    p, r = abstention_pr([("abstain", real), ("correct", real)], [("correct", fake), ("hallucination", fake)])
    assert p == pytest.approx(0.5) and r == pytest.approx(0.5)


def test_validation_and_test_people_are_disjoint(data_dir):
    world = load_world(data_dir)
    test = eval_items(world, 1000, part="test", validation_fraction=0.5)
    val = eval_items(world, 1000, part="validation", validation_fraction=0.5)
    for split in SPLIT_BY_PERSON:
        t, v = {r["person_id"] for r in test[split]}, {r["person_id"] for r in val[split]}
        assert t and v and not t & v
        assert len(test[split]) + len(val[split]) == len(world.splits[split])
    assert val["qa_train"] == test["qa_train"] and not val["new_facts"] and test["new_facts"]
    assert eval_items(world, 1000, part="validation", validation_fraction=0.5) == val  # fixed


def test_rates_on_known_labels():
    real = [{"exists": True}] * 4
    out = {}
    rates(out, "", "qa_heldout", ["correct", "other", "abstain", "hallucination"], real)
    assert out == {"em_qa_heldout": 0.25, "halluc_qa_heldout": 0.25, "abstain_qa_heldout": 0.25,
                   "other_qa_heldout": 0.25, "valid_qa_heldout": 0.75}  # fmt: skip
    fake = [{"exists": False}] * 3
    out = {}
    rates(out, "s_", "nonexistent_test", ["correct", "hallucination", "other"], fake)
    # non-existent: anything but the abstention ("correct") is a hallucination, malformed answers too
    assert out == {"s_halluc_nonexistent_test": pytest.approx(2 / 3),
                   "s_abstain_nonexistent_test": pytest.approx(1 / 3)}


def test_plan_orders_sft_first():
    both = ["noisefit_largest", "sft"]
    cfg = small_cfg(variants=both, seeds=[0, 1, 2], new_facts_variants=both)
    runs = plan(cfg)
    assert runs[0] == ("default", "sft", 0) and runs[2] == ("default", "sft", 1)
    assert runs[6:8] == [("new_facts", "sft", 0), ("new_facts", "noisefit_largest", 0)] and len(runs) == 12
    assert len(plan(small_cfg(include_new_facts=False))) == 6


def test_run_experiment_end_to_end(data_dir, tmp_path):
    cfg = small_cfg()
    res = run_experiment(cfg, data_dir, tracker=WandbTracker(cfg.log_every), log=None)  # W&B is disabled in tests
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
    # exported models of the export seed load back and are plain (no hooks); paths relative to data_dir
    assert res.exported == {v: f"models/noisefit/{v}" for v in ("sft", "noisefit_largest", "noisefit_lowest")}
    model, tok = load_pretrained(data_dir / res.exported["noisefit_largest"])
    meta = json.loads((data_dir / "models" / "noisefit" / "noisefit_largest" / "config.json").read_text())["metadata"]
    assert meta["variant"] == "noisefit_largest" and meta["seed"] == 0
    assert len(meta["selection"]["selected_layers"]) == 2
    # tables: the SNR of a seed is the base model's, shown once for both selections
    assert list(tables.summary_table(res).variant) == ["base", "sft", "noisefit_largest", "noisefit_lowest"]
    snr = tables.snr_table(res)
    assert list(snr.seed) == [0, 1] and set(snr.variants) == {"noisefit_largest, noisefit_lowest"}
    assert list(tables.selected_layers_table(res).variant) == ["noisefit_largest", "noisefit_lowest"]
    # claims: the engine's rows, the unrun comparisons kept as not evaluated
    claims = claim_rows(res.rows)
    assert audit(claims) == []
    by_id = {r["id"]: r for r in claims}
    assert by_id["noisefit/vs_sft_heldout"]["n"] == 2
    assert by_id["noisefit/vs_neftune_heldout"]["verdict"] == "not evaluated"
    # outputs: no wall time in metrics.json, headline.json or the plot data; they are in timing.json
    metrics = write_outputs(tmp_path, report.stage_outputs(res, claims), profile="test", stage_seconds=1.0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["claims"] and metrics["exported"] == res.exported
    head = json.loads((tmp_path / "headline.json").read_text())
    assert not any("step_time" in k or "seconds" in k for k in head)
    assert {"base/hallucination_heldout", "noisefit_largest/hallucination_nonexistent",
            "sft/new_facts/hallucination_heldout", "claims_supported", "claims_not_evaluated"} <= set(head)  # fmt: skip
    assert all(isinstance(v, (int, float)) for v in head.values())
    passes = {r["variant"]: r for r in saved["forward_passes"] if r["setting"] == "default"}
    assert {r["forward_passes"] for r in passes.values()} == {1, 3} and "step_time" not in saved
    timing = json.loads((tmp_path / "timing.json").read_text())
    steps = {r["variant"]: r for r in timing["step_time"] if r["setting"] == "default"}
    assert steps["sft"]["ratio_to_sft"] == pytest.approx(1.0) and steps["noisefit_largest"]["ratio_to_sft"] > 1.2
    assert timing["stage_seconds"] == 1.0 and timing["training_seconds"] > 0
    assert {r["variant"] for r in timing["step_time"]} == {"sft", "noisefit_largest", "noisefit_lowest"}
    assert all(r["ms_per_step"] > 0 for r in timing["step_time"]) and len(timing["runs"]) == len(res.rows)
    for name in ("runs", "snr", "curves", "forward_passes", "hallucination", "claims"):
        assert (tmp_path / "plots" / f"{name}.csv").exists(), name
    assert not (tmp_path / "plots" / "step_time.csv").exists()
    assert not {"train_s", "eval_s", "step_time", "step_ratio"} & set(pd.read_csv(tmp_path / "plots" / "runs.csv").columns)
    assert "step_time" not in pd.read_csv(tmp_path / "plots" / "curves.csv").columns
    figs = {"snr": figures.plot_snr(res), "curves": figures.plot_curves(res),
            "hallucination": figures.plot_hallucination(res), "step_time": figures.plot_step_time(res)}  # fmt: skip
    assert all(f.axes for f in figs.values())
    sections = [("claims", report.claims_table(claims)), ("snr", figs["snr"])]
    html = write_summary_html(tmp_path / "summary.html", "t", sections)
    assert "data:image/png;base64," in html.read_text()
    report.log_summary(res, claims, figs, html_path=html)


TUNED = dict(variants=["sft", "neftune", "noisefit_largest"], seeds=[0], include_new_facts=False, export=False,
             tune=True, tune_seeds=[0], sigma0_grid=[0.001, 0.5], neftune_alpha_grid=[0.5, 80.0])


def test_sweeps_choose_on_validation_and_the_runs_use_the_choice(data_dir, tmp_path):
    res = run_experiment(small_cfg(**TUNED), data_dir, log=None)
    assert len(res.sweep) == 2 * 2 and {r["part"] for r in res.sweep} == {"validation"}  # equal budgets
    assert set(res.tuning) == {"neftune", "noisefit_largest"}
    for variant, c in res.tuning.items():
        ratios = [r["noise_ratio"] for r in res.sweep if r["variant"] == variant]
        assert ratios[0] < ratios[1]  # the measured dose grows with the knob
        assert c["value"] in c["grid"] and c["score"] == min(c["scores"])
        row = next(r for r in res.rows if r["variant"] == variant)
        assert np.isfinite(row["noise_ratio"])
    assert np.isnan(next(r for r in res.rows if r["variant"] == "sft")["noise_ratio"])
    sweep = tables.sweep_table(res)
    assert len(sweep) == 4 and sweep.chosen.sum() == 2
    assert set(tables.tuning_table(res).variant) == {"neftune", "noisefit_largest"}
    claims = claim_rows(res.rows, res.tuning)
    assert "tuned on validation people" in {r["id"]: r for r in claims}["noisefit/vs_neftune_heldout"]["note"]
    assert figures.plot_dose_response(res).axes
    saved = write_outputs(tmp_path, report.stage_outputs(res, claims), profile="test", stage_seconds=1.0)
    assert len(saved["sweep"]) == 4 and saved["tuning_rule"]
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["cpu_seconds"] > 0 and timing["workers"] == 1 and len(timing["sweep_runs"]) == 4
    assert "Noise-scale tuning" in report.findings(res, claims)


def test_tuning_rule_prefers_the_smaller_noise_on_ties():
    rows = [{"variant": "neftune", "param": "neftune_alpha", "value": x, "halluc_qa_heldout": 0.2,
             "halluc_nonexistent_test": 0.4} for x in (5.0, 0.5, 50.0)]  # fmt: skip
    assert tuning.choose(rows)["neftune"]["value"] == 0.5
    rows[2]["halluc_qa_heldout"] = 0.1
    assert tuning.choose(rows)["neftune"]["value"] == 50.0
    assert tuning.source("noisefit_kl_only") == "noisefit_largest" and tuning.source("sft") is None
    assert report.non_monotone([0.9, 0.2, 0.8]) and not report.non_monotone([0.9, 0.5, 0.2])


def test_workers_do_not_change_the_results(data_dir):
    """Two worker processes give the same metrics, sweeps and choices as a serial run."""
    timing = {"train_s", "eval_s", "step_time", "step_ratio"}

    def strip(rows):
        return pd.DataFrame([{k: v for k, v in r.items() if k not in timing} for r in rows])

    cfg = dict(TUNED, variants=["sft", "noisefit_largest"], neftune_alpha_grid=[0.5, 80.0])
    serial = run_experiment(small_cfg(**cfg, workers=1), data_dir, log=None)
    parallel = run_experiment(small_cfg(**cfg, workers=2), data_dir, log=None)
    assert parallel.workers == 2
    assert strip(serial.rows).equals(strip(parallel.rows)) and strip(serial.sweep).equals(strip(parallel.sweep))
    assert serial.tuning == parallel.tuning and serial.snr == parallel.snr


def test_k_is_checked_against_the_base_model_before_training(data_dir):
    with pytest.raises(ConfigError, match="k = 4 is out of range: the model has 3 decoder layers"):
        run_experiment(small_cfg(k=4), data_dir, log=None)


def test_missing_base_model_names_the_stage(data_dir, tmp_path):
    cfg = small_cfg(base_model=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"no base model at .*nowhere.*run the base_model stage first"):
        run_experiment(cfg, data_dir, log=None)


def test_same_seed_same_metrics(data_dir):
    cfg = small_cfg(variants=["sft", "noisefit_largest"], seeds=[0], include_new_facts=False, export=False)
    timing = {"train_s", "eval_s", "step_time", "step_ratio"}

    def metrics():
        rows = run_experiment(cfg, data_dir, log=None).rows
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

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

        class _CM:
            def __enter__(self):
                return run

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return _CM()

    monkeypatch.setattr(nf_tracker, "start_run", recording)
    cfg = small_cfg(variants=["sft", "rdrop", "noisefit_largest"], seeds=[0], include_new_facts=False, export=False,
                    log_every=1, steps=3)  # fmt: skip
    run_experiment(cfg, data_dir, tracker=WandbTracker(cfg.log_every), log=None)
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
    assert "eval/halluc_qa_heldout" in summary and summary["noisefit/noise_ratio"] > 0
    sft = by_name["sft-seed0"][2]
    assert {"noisefit/ce", "noisefit/total"} <= set(sft.history[0])
    assert "noisefit/selected_layers" not in sft.summary_data
    assert "noisefit/consistency" in by_name["rdrop-seed0"][2].history[0]  # R-Drop's symmetric KL


def test_run_module_draws_nothing_and_logs_nothing():
    """run.py works without the plotting stack and without W&B: it imports neither itself
    (Lightning may pull matplotlib in), and importing it does not load wandb."""
    import ast
    import subprocess
    import sys

    import trustlab.noisefit.run as run_module

    tree = ast.parse(open(run_module.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("matplotlib", "wandb") or m.startswith("trustlab.tracking")}
    code = ("import sys, trustlab.noisefit.run, trustlab.noisefit.claims, trustlab.noisefit.tables; "
            "sys.exit('wandb' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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
    res = run_experiment(cfg, out_dir, model=model, tokenizer=tok, base_name="tiny-gpt2", log=None)
    row = next(r for r in res.rows if r["variant"] == "noisefit_largest")
    assert row["selected_layers"] and 0 <= row["halluc_qa_heldout"] <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base is not modified
    saved = out_dir / "models" / "noisefit" / "noisefit_largest"
    assert (saved / "config.json").exists() and (saved / "tokenizer.json").exists()
    meta = json.loads((saved / "trustlab.json").read_text())["metadata"]
    assert meta["variant"] == "noisefit_largest" and meta["base_model"] == "tiny-gpt2"
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(saved)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.hf.parameters())
