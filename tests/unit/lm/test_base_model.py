"""The base_model stage: config validation, the pretraining mix, packing, determinism,
the saved model directory and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trustlab.core.config import ConfigError
from trustlab.data import tasks as T
from trustlab.data.config import DataConfig
from trustlab.data.generate import generate_all
from trustlab.lm import base_model as bm
from trustlab.lm.base_model import report, tables
from trustlab.lm.checkpoint import load_pretrained

ROOT = Path(__file__).resolve().parents[3]

# a model small enough to train a few steps in well under a second
TINY = {
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 16,
    "block_size": 64,
    "steps": 4,
    "batch_size": 8,
    "warmup_steps": 1,
    "max_eval_items": 4,
    "max_new_tokens": 6,
    "threads": 1,
}


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory) -> Path:
    """Smoke-sized generated data (no code corpus: the mix does not use it by default)."""
    smoke = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())["data"]
    smoke["generators"] = ["world", "arithmetic", "instructions", "context_copy", "scratchpad"]
    out = tmp_path_factory.mktemp("bm") / "generated"
    generate_all(DataConfig.from_dict(smoke), out)
    return out


def tiny(**changes) -> bm.BaseModelConfig:
    return bm.BaseModelConfig.from_dict({**TINY, **changes})


# -- configuration ---------------------------------------------------------------------------


def test_defaults_are_valid_and_absent_section_works():
    cfg = bm.BaseModelConfig.from_dict({})
    assert cfg.mix_copies("nonexistent_train") == 0.0  # never taught to abstain by default
    assert cfg.mix_copies("bios") > 0 and cfg.mix_copies("qa_train") > 0
    # the class defaults are the default (cpu) values of params.yaml, so an absent section works
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["base_model"]
    assert bm.BaseModelConfig.from_dict(section).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"mix": {"qa_heldout": 1.0}}, ["base_model.mix", "'qa_heldout'", "never trained"]),
        ({"mix": {"bios": -1.0}}, ["base_model.mix.bios", "out of range"]),
        ({"mix": {k: 0.0 for k in bm.MIX_COMPONENTS}}, ["trains on nothing"]),
        ({"n_embd": 30, "n_head": 4}, ["base_model.n_embd = 30", "multiple of n_head = 4"]),
        ({"max_new_tokens": 62}, ["base_model.max_new_tokens = 62", "out of range"]),
        ({"lr": 0.0}, ["base_model.lr = 0.0", "out of range"]),
        ({"steps": "many"}, ["base_model.steps = 'many'", "expected an integer"]),
        ({"learning_rate": 0.1}, ["unknown key", "'learning_rate'", "allowed keys"]),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(changes, words):
    with pytest.raises(ConfigError) as err:
        bm.BaseModelConfig.from_dict(changes)
    for w in words:
        assert w in str(err.value)


# -- tokenizer and packing ------------------------------------------------------------------


def test_answer_token_is_the_biography_token(gen_dir):
    tok = bm.fit_tokenizer(gen_dir, tiny())
    assert tok.answer_space
    rec = T.load_task(gen_dir, "world_qa", "qa_heldout")[0]
    bio = next(b["text"] for b in T.load_bios(gen_dir) if b["person_id"] == rec["person_id"])
    ids, mask = tok.encode_example(rec["prompt"], rec["answer"])
    answer_ids = [i for i, m in zip(ids, mask) if m][:-1]  # without <eos>
    bio_ids = tok.encode(bio)
    assert tok.unk_id not in ids
    # the answer's token sequence occurs verbatim in the person's biography
    assert any(bio_ids[i : i + len(answer_ids)] == answer_ids for i in range(len(bio_ids)))
    assert tok.decode(answer_ids) == " " + rec["answer"]


def test_pack_segments_keeps_examples_whole_and_texts_continuous():
    S = bm.Segment
    segs = [
        S([1, 10, 11, 12, 13, 2], [0, 1, 1, 1, 1, 1], True, "bios"),  # 6 tokens, splittable
        S([1, 20, 3, 21, 2], [0, 0, 0, 1, 1], False, "qa_train"),  # 5 tokens, whole
        S([1, 30, 31, 2], [0, 1, 1, 1], True, "bios"),
    ]
    rows = bm.pack_segments(segs, block_size=8)
    # row 0: the 6-token text, then the 5-token example does not fit in the 2 left -> new row
    assert rows[0]["input_ids"] == [1, 10, 11, 12, 13, 2]
    # row 1: the example, then the next text fills the row and continues in row 2
    assert rows[1]["input_ids"] == [1, 20, 3, 21, 2, 1, 30, 31]
    assert rows[1]["loss_mask"] == [0, 0, 0, 1, 1, 0, 1, 1]
    assert len(rows) == 2  # the 1-token tail [2] is dropped: nothing to predict from it
    assert all(len(r["input_ids"]) <= 8 and len(r["input_ids"]) == len(r["loss_mask"]) for r in rows)
    with pytest.raises(ValueError, match="does not fit"):
        bm.pack_segments([S([1] * 9, [0] * 9, False, "qa_train")], block_size=8)


def test_wilson_interval_known_values():
    lo, hi = bm.wilson_ci(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    for n in (7, 20, 300):
        assert bm.wilson_ci(0, n)[0] == 0.0 and bm.wilson_ci(n, n)[1] == 1.0
    assert bm.wilson_ci(0, 300)[1] == pytest.approx(3.8415 / (300 + 3.8415), rel=1e-4)  # z²/(n+z²)


# -- the mix ----------------------------------------------------------------------------------


def _decoded_rows(mix, tok) -> list[str]:
    rows = [mix.dataset[i] for i in range(len(mix.dataset))]
    return [tok.decode(r["input_ids"], skip_special=False) for r in rows]


@pytest.mark.parametrize("packing", [True, False])
def test_mix_composition_never_trains_on_heldout_qa(gen_dir, packing):
    cfg = tiny(
        packing=packing,
        mix={
            "bios": 1.0,
            "qa_train": 2.0,
            "arithmetic": 1.0,
            "instructions": 0.5,
            "context_copy": 1.0,
            "nonexistent_train": 0.0,
        },
    )
    tok = bm.fit_tokenizer(gen_dir, cfg)
    mix = bm.build_mix(gen_dir, tok, cfg)
    assert set(mix.components) == {"bios", "qa_train", "arithmetic", "instructions", "context_copy", "scratchpad"}
    assert ("world_qa", "qa_heldout") not in mix.trained_splits
    assert set(mix.trained_splits) == {
        ("world_qa", "qa_train"),
        ("arithmetic", "train"),
        ("instructions", "train"),
        ("context_copy", "train"),
        ("scratchpad", "train"),
    }
    assert mix.bio_splits == ["qa_train", "qa_heldout"]
    # counts: whole copies, and a seeded half of instructions
    n_qa = len(T.load_task(gen_dir, "world_qa", "qa_train"))
    assert mix.components["qa_train"]["segments"] == 2 * n_qa
    assert mix.components["instructions"]["segments"] == round(0.5 * len(T.load_task(gen_dir, "instructions", "train")))
    assert mix.components["bios"]["segments"] == len(T.pretraining_texts(gen_dir))

    text = "\n".join(_decoded_rows(mix, tok))
    # every trained QA example appears whole: prompt, separator, spaced answer, eos
    for r in T.load_task(gen_dir, "world_qa", "qa_train")[:20]:
        assert f"<bos>{r['prompt']}<sep> {r['answer']}<eos>" in text
    # held-out QA prompts never appear; nor do new_facts or non-existent people at all
    people = T.load_people(gen_dir)
    for r in T.load_task(gen_dir, "world_qa", "qa_heldout"):
        assert r["prompt"] not in text
    for split in ("new_facts", "nonexistent_train", "nonexistent_test"):
        for r in T.load_task(gen_dir, "world_qa", split):
            assert r["name"] not in text, (split, r["name"])
    heldout_names = {p["name"] for p in people["people"] if p["split"] == "qa_heldout"}
    assert any(n in text for n in heldout_names)  # ... but held-out people's biographies are there
    # trained tokens: answers + eos of the examples, every token after <bos> of the texts
    if packing:
        total = sum(sum(r["loss_mask"]) for r in (mix.dataset[i] for i in range(len(mix.dataset))))
        assert total <= sum(c["trained_tokens"] for c in mix.components.values())


def test_abstention_component_is_opt_in(gen_dir):
    cfg = tiny(mix={"bios": 1.0, "nonexistent_train": 1.0})
    tok = bm.fit_tokenizer(gen_dir, cfg)
    mix = bm.build_mix(gen_dir, tok, cfg)
    assert ("world_qa", "nonexistent_train") in mix.trained_splits
    text = "\n".join(_decoded_rows(mix, tok))
    assert "<sep> unknown<eos>" in text
    assert not any(r["name"] in text for r in T.load_task(gen_dir, "world_qa", "nonexistent_test"))


def test_mix_is_deterministic_and_seed_dependent(gen_dir):
    from collections import Counter

    whole = {"bios": 2.0, "qa_train": 1.0, "arithmetic": 1.0, "instructions": 1.0, "context_copy": 1.0}
    cfg = tiny(mix=whole)
    tok = bm.fit_tokenizer(gen_dir, cfg)
    a = _decoded_rows(bm.build_mix(gen_dir, tok, cfg), tok)
    b = _decoded_rows(bm.build_mix(gen_dir, tok, cfg), tok)
    c = _decoded_rows(bm.build_mix(gen_dir, tok, tiny(seed=1, mix=whole)), tok)
    assert a == b and a != c
    # another seed reorders the same content (only a final 1-token tail may be dropped)
    diff = (Counter("".join(a)) - Counter("".join(c))) + (Counter("".join(c)) - Counter("".join(a)))
    assert sum(diff.values()) <= 2 * len("<eos>")


def test_block_size_too_small_is_a_config_error(gen_dir):
    cfg = tiny(block_size=16, max_new_tokens=4)
    tok = bm.fit_tokenizer(gen_dir, cfg)
    with pytest.raises(ConfigError, match="block_size = 16 is too small"):
        bm.build_mix(gen_dir, tok, cfg)


# -- training, evaluation, saving -----------------------------------------------------------


def test_same_seed_same_weights_and_metrics(gen_dir):
    cfg = tiny()
    r1 = bm.pretrain(gen_dir, cfg, progress=False)
    r2 = bm.pretrain(gen_dir, cfg, progress=False)
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [r["loss"] for r in r1.curve] == [r["loss"] for r in r2.curve]
    e1 = bm.evaluate(r1.model, r1.tokenizer, gen_dir, cfg)
    e2 = bm.evaluate(r2.model, r2.tokenizer, gen_dir, cfg)
    assert e1.summary == e2.summary and e1.items == e2.items
    r3 = bm.pretrain(gen_dir, tiny(seed=3), progress=False)
    assert not torch.equal(r3.model.lm_head.weight, r1.model.lm_head.weight)


def test_evaluation_scores_with_the_checkers(gen_dir):
    """A model that answers through a lookup table of the true answers is scored as such."""
    from trustlab.data.checkers import is_correct

    cfg = tiny(max_eval_items=5)
    res = bm.pretrain(gen_dir, cfg, progress=False)
    ev = bm.evaluate(
        res.model,
        res.tokenizer,
        gen_dir,
        cfg,
        splits=[("world_qa", "qa_train"), ("arithmetic", "test")],
        trained_splits=res.mix.trained_splits,
    )
    assert [(r["task"], r["split"]) for r in ev.summary] == [("world_qa", "qa_train"), ("arithmetic", "test")]
    assert ev.summary[0]["trained"] and not ev.summary[1]["trained"]
    recs = {
        r["id"]: r for t, s in [("world_qa", "qa_train"), ("arithmetic", "test")] for r in T.load_task(gen_dir, t, s)
    }
    for it in ev.items:
        assert it["correct"] == is_correct(recs[it["id"]], it["response"])
    for row in ev.summary:
        items = [it for it in ev.items if it["split"] == row["split"] and it["task"] == row["task"]]
        assert row["n"] == len(items) == 5
        assert row["accuracy"] == pytest.approx(sum(it["correct"] for it in items) / 5)
        assert row["error_rate"] == pytest.approx(1 - row["accuracy"])
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    qa = ev.summary[0]
    assert qa["correct"] + qa["abstain"] + qa["hallucination"] + qa["other"] == pytest.approx(1.0)
    assert "qa_train_accuracy" in ev.headline() and "arithmetic_test_accuracy" in ev.headline()


def test_run_stage_saves_a_loadable_model_atomically(gen_dir, tmp_path):
    cfg = tiny()
    out = tmp_path / "models" / "base"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an earlier run")
    stage = bm.run_stage(cfg, gen_dir.parent, out)  # data dir = parent of generated/
    assert not (out / "stale.txt").exists()  # replaced as a whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["base"]  # no temporary leftovers
    for name in (*bm.MODEL_FILES, "metrics.json", "curve.csv", "eval_summary.csv", "eval_items.jsonl", "mix.json"):
        assert (out / name).exists(), name
    model, tok = load_pretrained(out)
    assert tok.answer_space and tok.vocab_size == stage.result.tokenizer.vocab_size
    x = torch.tensor([tok.encode_prompt("Who employs Pablo Costa?")])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, stage.result.model(x).logits)
    m = bm.load_metrics(out)
    assert m["headline"]["steps"] == cfg.steps
    assert ["world_qa", "qa_heldout"] not in m["trained_splits"]
    assert {(r["task"], r["split"]) for r in m["eval"]} == set(bm.EVAL_SPLITS)
    curve = bm.load_curve(out)
    assert [r["step"] for r in curve] == list(range(1, cfg.steps + 1))
    assert len(bm.load_eval_items(out)) == sum(r["n"] for r in m["eval"])


def test_model_directory_holds_no_wall_time_and_reruns_identically(gen_dir, tmp_path):
    """Wall times, throughput and the machine go to timing.json; the model directory is a
    function of params and data only, so a rerun writes the same bytes."""
    cfg = tiny()
    runs = [bm.run_stage(cfg, gen_dir, tmp_path / f"m{i}", timing_dir=tmp_path / f"r{i}") for i in (0, 1)]
    files = sorted(p.name for p in (tmp_path / "m0").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "m1").iterdir())
    for name in files:
        assert (tmp_path / "m0" / name).read_bytes() == (tmp_path / "m1" / name).read_bytes(), name
    headline = bm.load_metrics(tmp_path / "m0")["headline"]
    assert not {"train_seconds", "stage_seconds", "tokens_per_s"} & set(headline)
    timing = json.loads((tmp_path / "r0" / "timing.json").read_text())
    assert timing["stage_seconds"] > 0 and timing["tokens_per_s"] > 0 and "cpu_count" in timing["machine"]
    assert timing["cpu_seconds"] > 0 and timing["cores"] > 0 and timing["train_threads"] == 1
    assert 0 < timing["train_share_of_peak"] < 1 and timing["matmul_peak_flops"] > 0
    assert timing["train_share_of_1thread_peak"] > 0 and timing["matmul_peak_flops_1thread"] > 0
    assert runs[0].timing == timing


def test_report_outputs_keep_times_out_of_the_headline(tmp_path):
    metrics = {
        "headline": {"qa_train_accuracy": 0.5, "steps": 4, "train_seconds": 3.0, "stage_seconds": 5.0,
                     "tokens_per_s": 10.0},
        "eval": [{"task": "world_qa", "split": "qa_train", "trained": True, "n": 4, "accuracy": 0.5,
                  "error_rate": 0.5, "ci_low": 0.1, "ci_high": 0.9}],
        "mix": [{"component": "bios", "copies": 1.0}],
        "config": {}, "data_fingerprint": "f", "config_digest": "d",
    }  # fmt: skip
    summary = tables.summary_frame(metrics)
    (tmp_path / "base_model").mkdir()
    (tmp_path / "base_model" / "timing.json").write_text(json.dumps({"stage_seconds": 7.0, "train_seconds": 6.0,
                                                                     "tokens_per_s": 9.0}))  # fmt: skip
    timing = report.pretraining_timing(tmp_path / "01_base_model")
    out = report.stage_outputs(metrics, summary, tables.error_range_table(summary), [], {"n_layer": 1}, timing)
    assert out.headline["qa_train_accuracy"] == 0.5 and out.headline["splits_in_target_error_range"] == 1
    assert not {"train_seconds", "stage_seconds", "tokens_per_s"} & set(out.headline)
    assert out.timing == {"pretraining_seconds": 7.0, "train_seconds": 6.0, "tokens_per_s": 9.0}
    assert list(out.tables) == ["eval", "error_range", "mix"] and list(out.extra) == ["model"]
    assert report.pretraining_timing(tmp_path / "elsewhere" / "x") == {}


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_smoke_profile_and_bad_params(gen_dir, tmp_path):
    data = gen_dir.parent
    out = tmp_path / "base"
    cmd = [
        sys.executable,
        str(ROOT / "pipelines" / "pretrain_base.py"),
        "--profile",
        "smoke",
        "--data-dir",
        str(data),
        "--reports-dir",
        str(tmp_path / "reports"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "qa_heldout" in proc.stdout and (out / "model.safetensors").exists()
    assert (tmp_path / "reports" / "timing.json").exists()

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] = {"mix": {"qa_heldout": 2}}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [*cmd[:-2], "--out", str(tmp_path / "never"), "--params", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "base_model.mix" in proc.stderr and "qa_heldout" in proc.stderr
    assert not (tmp_path / "never").exists()


# -- the 01_base_model report helpers -----------------------------------------------------------


def test_smooth_is_a_trailing_moving_average():
    from trustlab.lm.base_model.figures import smooth

    assert list(smooth([1.0, 3.0, 5.0, 7.0], 2)) == [1.0, 2.0, 4.0, 6.0]
    assert list(smooth([1.0, 2.0], 1)) == [1.0, 2.0]


def _fake_items(gen_dir):
    """Evaluation items with known correctness: the true answer for even records, a
    corrupted one for odd records."""
    from trustlab.data.checkers import classify_qa, corrupt_answer, is_correct

    items = []
    for task, split in [
        ("world_qa", "qa_heldout"),
        ("arithmetic", "test"),
        ("context_copy", "test"),
        ("instructions", "test"),
    ]:
        for i, r in enumerate(T.load_task(gen_dir, task, split)[:6]):
            resp = " " + (r["answer"] if i % 2 == 0 else corrupt_answer(r, seed=1))
            ok = is_correct(r, resp)
            items.append(
                {
                    "task": task,
                    "split": split,
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "answer": r["answer"],
                    "response": resp,
                    "correct": ok,
                    "label": classify_qa(r, resp) if task == "world_qa" else ("correct" if ok else "wrong"),
                }
            )
    return items


def test_error_breakdown_and_samples(gen_dir):
    items = _fake_items(gen_dir)
    br = tables.error_breakdown(items, gen_dir)
    assert set(br) == {"world_qa", "arithmetic", "context_copy", "instructions", "instructions_failures"}
    for name in ("world_qa", "arithmetic", "context_copy", "instructions"):
        df = br[name]
        assert df.n.sum() == 6
        assert (df.n * df.accuracy).sum() == pytest.approx(3)  # the three even records
    qa = br["world_qa"]
    assert (qa.n * qa.hallucination).sum() == pytest.approx(3)  # corrupted = another closed-set value
    # a corrupted context-copy answer is another variable's value when the prompt has one
    cc = br["context_copy"]
    assert (cc.n * cc.copied_other_variable).sum() <= 3
    kinds = br["instructions_failures"].set_index("kind").n
    assert kinds.get("correct", 0) == 3 and kinds.drop("correct", errors="ignore").sum() == 3

    samples = tables.sample_table(items, per_split=1)
    assert len(samples) == 8  # one correct and one wrong per task/split
    assert samples.groupby(["task", "split"]).correct.sum().tolist() == [1, 1, 1, 1]


def test_error_range_table_marks_the_target_band():
    import pandas as pd

    summary = pd.DataFrame(
        {
            "task": ["a", "a", "a"],
            "split": ["x", "y", "z"],
            "trained": [False] * 3,
            "n": [10] * 3,
            "error_rate": [0.1, 0.45, 0.9],
        }
    )
    t = tables.error_range_table(summary)
    assert t.in_target_range.tolist() == [False, True, False]
    assert t.note.tolist() == ["too few errors", "in range", "too few correct answers"]


def test_answer_space_off_is_the_unspaced_ablation(gen_dir):
    tok = bm.fit_tokenizer(gen_dir, tiny(answer_space=False))
    assert not tok.answer_space
    rec = T.load_task(gen_dir, "world_qa", "qa_train")[0]
    ids, mask = tok.encode_example(rec["prompt"], rec["answer"])
    assert tok.decode([i for i, m in zip(ids, mask) if m][:-1]) == rec["answer"]
    assert tok.unk_id not in ids
