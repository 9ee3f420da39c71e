"""Data-parallel training through Lightning on the CPU (gloo), and its bookkeeping.

The fine-tune runs as a small script in a subprocess, as a user would run a stage: with
``strategy="ddp"`` Lightning re-launches that script for rank 1, and both ranks execute all of
it (training, sharded generation, writing). A single-process run with the same global batch
(``batch_size = 2 x 4``) is the reference.

Tolerance: every example has the same number of loss tokens (a one-digit answer + <eos>), so the
DDP gradient (mean over ranks of per-rank means) equals the single-process one in exact
arithmetic; what remains is float32 rounding from the different reduction order. We require
|loss_ddp - loss_single| <= 1e-4 * |loss_single| + 1e-5 for every step's training loss and for
both validation losses, and max |w_ddp - w_single| <= 1e-4 over the final weights (measured
differences are ~1e-6 or smaller).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trustlab.lm.distributed import gather_in_order, map_sharded, merge_results, shard_bounds, shard_indices
from trustlab.lm.training import CausalLMModule, StepBatchSampler, fit

ROOT = Path(__file__).resolve().parents[3]
REL, ABS = 1e-4, 1e-5  # per-step loss tolerance: |a - b| <= REL * |b| + ABS
WEIGHT_ATOL = 1e-4

SCRIPT = r'''
"""A tiny fine-tune, run as `python ddp_job.py OUT STRATEGY` (and imported by the test)."""
import json, os, sys
from pathlib import Path

sys.path.insert(0, os.environ["TRUSTLAB_LIB"])
import torch

from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.tokenizer import WordTokenizer
from trustlab.lm.training import CausalLMModule, PairDataset

PAIRS = [(f"what is {a} plus {b} ?", f" {(a + b) % 10}") for a in range(8) for b in range(8)]
VAL = [(f"what is {a} plus {b} ?", f" {(a + b) % 10}") for a, b in [(9, 9), (9, 1), (1, 9), (9, 5), (5, 9), (9, 0), (0, 9)]]
PROMPTS = [p for p, _ in PAIRS[:9]] + [p for p, _ in VAL]  # 16 prompts: 8 per rank
SETTINGS = dict(max_steps=8, seed=0, threads=1, val_every=4, progress=False)


def build():
    tok = WordTokenizer.fit([p + a for p, a in PAIRS + VAL])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
    module = CausalLMModule(model, lr=3e-3, warmup_steps=2)
    return tok, model, module, PairDataset(tok, PAIRS, 32), PairDataset(tok, VAL, 32)


def main(out, strategy):
    from trustlab.lm import distributed as D
    from trustlab.lm.generation import generate
    from trustlab.lm.training import fit
    from trustlab.tracking import start_run, write_metrics

    torch.set_num_threads(1)
    real_replace = os.replace

    def logged_replace(src, dst, *args, **kwargs):  # every trustlab.core.io write ends in os.replace
        with open(out / f"writes-rank{D.global_rank()}.txt", "a") as fh:
            fh.write(f"{dst}\n")
        return real_replace(src, dst, *args, **kwargs)

    os.replace = logged_replace
    tok, model, module, data, val = build()
    with start_run("ddp_test", "finetune", f"{strategy}-s0", config={"strategy": strategy}) as run:
        res = fit(module, data, tokenizer=tok, batch_size=4, val_data=val, checkpoint_dir=out / "ckpt",
                  checkpoint_every=4, on_log=lambda r: run.log(r, step=r["step"]), accelerator="cpu", devices=2,
                  strategy=strategy, **SETTINGS)
        sharded = D.sharded_generate(model, tok, PROMPTS, max_new_tokens=3, return_hidden_states="mean")
        whole = generate(model, tok, PROMPTS, max_new_tokens=3, return_hidden_states="mean")
        record = {
            "rank": D.global_rank(), "world": D.world_size(), "steps": res.steps, "module_step": module.step,
            "tokens": res.tokens, "curve": res.curve, "val_curve": res.val_curve, "texts": sharded.texts,
            "prompt_index": sharded.prompt_index, "whole_texts": whole.texts,
            "logprob_diff": max(abs(float(a.sum() - b.sum())) for a, b in zip(sharded.token_logprobs, whole.token_logprobs)),
            "hidden_diff": max(float(abs(a - b).max()) for a, b in zip(sharded.hidden_states, whole.hidden_states)),
            "shard": list(D.shard_indices(len(PROMPTS))),
            "weights": {n: p.detach().tolist() for n, p in model.named_parameters()},
            "logged": run.history,  # what on_log sent to the run (kept even when W&B is disabled)
        }
        write_metrics("ddp_test", {k: record[k] for k in ("curve", "val_curve", "texts")}, reports_dir=out / "reports")
        run.summary({"final_loss": res.curve[-1]["loss"], "final_val_loss": res.val_curve[-1]["val_loss"]})
    with open(out / f"ran-rank{D.global_rank()}.json", "w") as fh:  # proof that this rank ran, outside trustlab.core.io
        json.dump(record, fh)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
'''


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The script on disk and imported (its build() makes the single-process reference)."""
    path = tmp_path_factory.mktemp("ddp") / "ddp_job.py"
    path.write_text(SCRIPT)
    os.environ.setdefault("TRUSTLAB_LIB", str(ROOT / "lib"))
    spec = importlib.util.spec_from_file_location("ddp_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


@pytest.fixture(scope="module")
def reference(job):
    """One process, global batch 8: the run DDP must reproduce."""
    _, mod = job
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok, model, module, data, val = mod.build()
        res = fit(module, data, tokenizer=tok, batch_size=8, val_data=val, **mod.SETTINGS)
        from trustlab.lm.generation import generate

        texts = generate(model, tok, mod.PROMPTS, max_new_tokens=3).texts
    finally:
        torch.set_num_threads(n)
    return {"curve": res.curve, "val_curve": res.val_curve, "tokens": res.tokens, "texts": texts,
            "weights": {k: v.detach().clone() for k, v in model.named_parameters()}}  # fmt: skip


def _run_job(job, tmp_path, strategy, wandb_mode="offline"):
    path, _ = job
    out = tmp_path / strategy
    out.mkdir()
    env = {**os.environ, "TRUSTLAB_LIB": str(ROOT / "lib"), "WANDB_DIR": str(out), "TRUSTLAB_WANDB_MODE": wandb_mode,
           "WANDB_MODE": wandb_mode, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "lib")}  # fmt: skip
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(path), str(out), strategy], cwd=out, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * abs(b) + ABS


def _check_against_reference(rec, reference):
    assert rec["steps"] == 8 and rec["module_step"] == 8
    assert [r["step"] for r in rec["curve"]] == list(range(1, 9))
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(rec["curve"], reference["curve"])]
    assert all(_close(a["loss"], b["loss"]) for a, b in zip(rec["curve"], reference["curve"])), diffs
    assert [r["tokens"] for r in rec["curve"]] == [r["tokens"] for r in reference["curve"]]  # tokens of both ranks
    assert [r["step"] for r in rec["val_curve"]] == [r["step"] for r in reference["val_curve"]] == [4, 8]
    assert all(_close(a["val_loss"], b["val_loss"]) for a, b in zip(rec["val_curve"], reference["val_curve"]))
    worst = max(float((torch.tensor(rec["weights"][n]) - w).abs().max()) for n, w in reference["weights"].items())
    assert worst <= WEIGHT_ATOL, worst
    print(f"max |loss diff| {max(diffs):.2e}, max |weight diff| {worst:.2e}")  # quoted in the report


def _one_offline_run(out):
    from trustlab.tracking.offline import offline_runs, read_offline_run

    runs = offline_runs(out)
    assert len(runs) == 1, runs  # rank 1 opened none
    return read_offline_run(runs[0])


def test_ddp_two_cpu_processes_match_one_process(job, reference, tmp_path):
    out = _run_job(job, tmp_path, "ddp")
    rank0 = json.loads((out / "ran-rank0.json").read_text())
    rank1 = json.loads((out / "ran-rank1.json").read_text())  # rank 1 ran the whole script
    assert (rank0["world"], rank1["world"]) == (2, 2)
    _check_against_reference(rank0, reference)
    assert rank1["curve"] == rank0["curve"] and rank1["val_curve"] == rank0["val_curve"]  # one curve on every rank
    # generation: each rank generated its 8 prompts; the gathered result is in prompt order and equals
    # the unsharded generation with the same weights (and the single-process run's)
    assert rank0["shard"] == list(range(8)) and rank1["shard"] == list(range(8, 16))
    for rec in (rank0, rank1):
        assert rec["prompt_index"] == list(range(16)) and rec["texts"] == rec["whole_texts"] == reference["texts"]
        assert rec["logprob_diff"] < 1e-5 and rec["hidden_diff"] < 1e-5
    # only rank 0 wrote: checkpoints and metrics (through trustlab.core.io), one W&B run
    assert not (out / "writes-rank1.txt").exists()
    written = {Path(p).name for p in (out / "writes-rank0.txt").read_text().split()}
    assert {"model.safetensors", "training_state.pt", "tokenizer.json", "metrics.json"} <= written
    metrics = json.loads((out / "reports" / "metrics.json").read_text())
    assert metrics["curve"] == rank0["curve"]
    run = _one_offline_run(out)
    assert run["name"] == "ddp-s0" and run["summary"]["final_loss"] == pytest.approx(rank0["curve"][-1]["loss"])
    steps = sorted(h["_step"] for h in run["history"] if "loss" in h)
    assert steps == list(range(1, 9)) and sum("val_loss" in h for h in run["history"]) == 2
    # the final checkpoint holds the final weights
    from trustlab.lm.checkpoint import load_model, load_training_state

    saved = load_model(out / "ckpt")
    for n, p in saved.named_parameters():
        assert torch.allclose(p, torch.tensor(rank0["weights"][n]), atol=1e-6), n
    assert load_training_state(out / "ckpt")["step"] == 8


def test_ddp_notebook_workers_send_their_results_back(job, reference, tmp_path):
    """Forked workers (what a notebook kernel uses): the caller is not a rank; weights, curves and
    the W&B rows come back to it after the fit, and only rank 0's worker wrote the checkpoint."""
    out = _run_job(job, tmp_path, "ddp_notebook", wandb_mode="disabled")  # the W&B side is tested above
    rec = json.loads((out / "ran-rank0.json").read_text())
    assert rec["world"] == 1 and not (out / "ran-rank1.json").exists()  # generation in the caller, unsharded
    _check_against_reference(rec, reference)  # curves from the workers, weights loaded back into the caller
    assert rec["texts"] == reference["texts"]
    assert not (out / "writes-rank1.txt").exists()
    assert "training_state.pt" in (out / "writes-rank0.txt").read_text()
    # on_log rows, replayed in the caller in the order they were made
    order = [(h["_step"], "val_loss" in h) for h in rec["logged"]]
    assert order == [(s, False) for s in range(1, 5)] + [(4, True)] + [(s, False) for s in range(5, 9)] + [(8, True)]
    assert [h["loss"] for h in rec["logged"] if "loss" in h] == [r["loss"] for r in rec["curve"]]


# ---------------------------------------------------------------------------------------------
# in-process pieces


def test_gradient_accumulation_matches_one_big_batch(job, reference):
    _, mod = job
    tok, model, module, data, val = mod.build()
    res = fit(module, data, tokenizer=tok, batch_size=4, accumulate_grad_batches=2, val_data=val, **mod.SETTINGS)
    assert len(res.curve) == 8 and res.steps == 8
    assert all(_close(a["loss"], b["loss"]) for a, b in zip(res.curve, reference["curve"]))
    assert [r["tokens"] for r in res.curve] == [r["tokens"] for r in reference["curve"]]
    assert all(_close(a["val_loss"], b["val_loss"]) for a, b in zip(res.val_curve, reference["val_curve"]))
    for n, w in model.named_parameters():
        assert torch.allclose(w, reference["weights"][n], atol=WEIGHT_ATOL), n


def test_step_sampler_splits_the_global_batch():
    single = list(StepBatchSampler(21, 8, 6, seed=3))
    for world, k in [(2, 1), (1, 2), (2, 2)]:
        per_rank = [list(StepBatchSampler(21, 8 // (world * k), 6, seed=3, world_size=world, accumulate=k, rank=r))
                    for r in range(world)]  # fmt: skip
        assert all(len(b) == 6 * k for b in per_rank)
        for s in range(6):  # micro-batch j of rank r is slice j * world + r of the global batch
            slices = [per_rank[r][s * k + j] for j in range(k) for r in range(world)]
            assert [i for sl in slices for i in sl] == single[s]
    # a tail shorter than world * accumulate is topped up from the epoch's start: no empty slice
    tiny = [list(StepBatchSampler(5, 2, 2, seed=0, world_size=2, accumulate=2, rank=r)) for r in range(2)]
    assert all(len(b) >= 1 for rank in tiny for b in rank)
    with pytest.raises(RuntimeError, match="without a process group"):
        list(StepBatchSampler(10, 2, 1, world_size=2))


def test_shards_cover_in_order():
    for n, world in [(16, 2), (7, 3), (2, 4), (0, 2)]:
        blocks = [shard_indices(n, r, world) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert shard_bounds(7, 0, 3) == (0, 3) and shard_bounds(7, 2, 3) == (5, 7)
    # without a process group: one shard, gathering is the identity
    assert shard_indices(5) == range(5) and gather_in_order(["a", "b"], 2) == ["a", "b"]
    assert map_sharded(lambda x: x * x, [1, 2, 3]) == [1, 4, 9]
    with pytest.raises(ValueError, match="holds 1 results for its 2 items"):
        gather_in_order([1], 2)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        shard_indices(4, 2, 2)


def test_merge_results_restores_prompt_order(job):
    from trustlab.lm.generation import generate

    _, mod = job
    tok, model, *_ = mod.build()
    prompts = mod.PROMPTS[:7]
    whole = generate(model, tok, prompts, max_new_tokens=3, num_return_sequences=2, return_hidden_states="mean")
    parts, offsets = [], []
    for r in range(3):
        lo, hi = shard_bounds(len(prompts), r, 3)
        part = generate(model, tok, prompts[lo:hi], max_new_tokens=3, num_return_sequences=2, return_hidden_states="mean")
        parts.append(part)
        offsets.append(lo)
    merged = merge_results(parts, offsets)
    assert merged.prompt_index == whole.prompt_index and len(merged) == 14
    assert merged.prompt_ids == whole.prompt_ids and merged.texts == whole.texts and merged.settings == whole.settings
    for a, b in zip(merged.hidden_states, whole.hidden_states):
        assert a.shape == b.shape and abs(a - b).max() < 1e-5


def test_trainer_settings_are_checked(job):
    _, mod = job
    tok, model, module, data, _ = mod.build()
    for kw, msg in [({"strategy": "deepspeed"}, "strategy = 'deepspeed' is not allowed"),
                    ({"devices": 0}, "devices = 0 is not allowed"),
                    ({"accumulate_grad_batches": 0}, "accumulate_grad_batches = 0 is not allowed"),
                    ({"precision": "8-bit"}, "precision = '8-bit' is not allowed"),
                    ({"strategy": "fsdp", "checkpoint_dir": "x"}, "checkpoint_dir is not supported with strategy 'fsdp'")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            fit(module, data, tokenizer=tok, max_steps=1, **kw)
    assert isinstance(module, CausalLMModule)
