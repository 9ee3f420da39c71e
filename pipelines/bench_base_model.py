"""How to spend two cores on the one base-model training: 1 thread, 2 threads or 2 DDP processes.

    python pipelines/bench_base_model.py [--steps 150] [--repeats 2] [--out reports/bench/base_model.json]

Trains the default base model (params.yaml's ``base_model`` section, its pretraining mix from
``data/generated``) for ``--steps`` optimizer steps in each of three ways, each in a fresh
process, at the same global batch:

- ``1 thread``: one process, one torch thread (the stage's default, ``base_model.threads: 1``);
- ``2 threads``: one process, two intra-op threads;
- ``2 DDP processes``: Lightning's ``ddp`` strategy on the CPU (gloo), one thread per rank,
  half the batch per rank.

Each way runs ``--repeats`` times; it is deterministic when every repeat gives bit-identical
training losses. The report gives tokens/s, the speedup over one thread measured in the same
run, and the loss after the last step (the ways differ in float reduction order, so their losses
agree closely but not bitwise). Needs the data stage's output (``dvc repro data``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

WAYS = {"1 thread": (1, 1), "2 threads": (2, 1), "2 DDP processes": (1, 2)}  # (threads, processes)


def train_once(steps: int, threads: int, processes: int, out: Path) -> None:
    """One timed training in this process (and, for DDP, the rank Lightning re-launches)."""
    import torch

    from trustlab.core.config import load_params
    from trustlab.core.seeding import seed_everything
    from trustlab.lm.base_model.corpus import fit_tokenizer
    from trustlab.lm.base_model.mix import build_mix
    from trustlab.lm.base_model.stage import config_from
    from trustlab.lm.distributed import is_global_zero
    from trustlab.lm.flops import training_flops_per_token
    from trustlab.lm.gpt import GPT
    from trustlab.lm.training import CausalLMModule, fit

    cfg = dataclasses.replace(config_from(load_params(ROOT / "params.yaml")["base_model"]), steps=steps, threads=threads)
    gen_dir = ROOT / "data" / "generated"
    tok = fit_tokenizer(gen_dir, cfg)
    mix = build_mix(gen_dir, tok, cfg)
    torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    gpt_cfg = cfg.gpt_config(tok.vocab_size)
    model = GPT(gpt_cfg)
    module = CausalLMModule(model, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                            min_lr_ratio=cfg.min_lr_ratio)  # fmt: skip
    res = fit(module, mix.dataset, pad_id=tok.pad_id, batch_size=cfg.batch_size // processes, max_steps=steps,
              seed=cfg.seed, threads=threads, grad_clip=cfg.grad_clip, progress=False, devices=processes,
              strategy="ddp" if processes > 1 else "auto")  # fmt: skip
    if is_global_zero():
        losses = [float(c["loss"]) for c in res.curve if "loss" in c]
        out.write_text(json.dumps({"tokens_per_s": res.tokens_per_s, "seconds": res.seconds, "steps": res.steps,
                                   "losses": losses,
                                   "flops_per_token": training_flops_per_token(dataclasses.asdict(gpt_cfg))}))  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    ap.add_argument("--worker", nargs=3, metavar=("THREADS", "PROCESSES", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        ap.error(f"--steps ({args.steps}) and --repeats ({args.repeats}) must be at least 1")
    if args.worker:
        train_once(args.steps, int(args.worker[0]), int(args.worker[1]), Path(args.worker[2]))
        return {}
    if not (ROOT / "data" / "generated").is_dir():
        ap.error("data/generated is missing: run `dvc repro data` first")

    from trustlab.lm.flops import matmul_peak

    env = {**os.environ, "TRUSTLAB_PROGRESS": "0", "PYTHONPATH": str(ROOT / "lib")}
    ways: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (threads, processes) in WAYS.items():
            runs = []
            for r in range(args.repeats):
                result = Path(tmp) / f"{threads}-{processes}-{r}.json"
                subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker", str(threads),
                                str(processes), str(result)], check=True, env={**env, "OMP_NUM_THREADS": str(threads)})  # fmt: skip
                runs.append(json.loads(result.read_text()))
            ways[name] = {
                "threads": threads, "processes": processes,
                "tokens_per_s": max(run["tokens_per_s"] for run in runs),
                "deterministic": all(run["losses"] == runs[0]["losses"] for run in runs),
                "final_loss": runs[0]["losses"][-1], "flops_per_token": runs[0]["flops_per_token"],
            }  # fmt: skip
    base = ways["1 thread"]["tokens_per_s"]
    peak1 = matmul_peak(1)
    for w in ways.values():
        w["speedup_vs_1_thread"] = w["tokens_per_s"] / base
        w["share_of_1thread_peak"] = w["flops_per_token"] * w["tokens_per_s"] / peak1  # as the stage's timing.json
    print(f"base model, {args.steps} steps, best of {args.repeats}; 1-thread matmul peak {peak1 / 1e9:.1f} GFLOP/s")
    for name, w in ways.items():
        print(f"  {name:<16} {w['tokens_per_s']:>9,.0f} tokens/s  {w['speedup_vs_1_thread']:.2f}x  "
              f"deterministic: {w['deterministic']}  final loss {w['final_loss']:.4f}")
    res = {"steps": args.steps, "repeats": args.repeats, "matmul_peak_flops_1thread": peak1, "ways": ways}
    if args.out:
        from trustlab.core.io import write_json

        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
