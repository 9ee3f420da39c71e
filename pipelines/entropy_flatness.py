"""How long must an entropy-attention run train before its validation perplexity flattens?

    python pipelines/entropy_flatness.py [--steps 600 1500 3000] [--variants SM+LN+G SM+G] [--seed 0]

Trains each variant at each run length with the default settings of params.yaml's
``entropy_attention`` section (the cosine schedule stretched to the length, warmup 5% of it),
on the code corpus of ``data/`` (``dvc repro data``), one run per core, and prints per run the
final validation perplexity (test windows) and the relative change of the probe batch's
perplexity over the last 20% of the steps (the stage's flatness measure: near 0 = flat).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[600, 1500, 3000])
    ap.add_argument("--variants", nargs="+", default=["SM+LN+G", "SM+G"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="processes (0 = every core)")
    args = ap.parse_args(argv)
    if min(args.steps) < 50:
        ap.error(f"--steps must each be at least 50 (got {min(args.steps)}): the flatness measure needs curve points")

    import pandas as pd

    from trustlab.core.config import load_params
    from trustlab.core.parallel import run_tasks
    from trustlab.entropy_attention.config import EntropyAttentionConfig
    from trustlab.entropy_attention.run import RunTask, train_task
    from trustlab.entropy_attention.tables import relative_change_last
    from trustlab.entropy_attention.variants import get_variant

    for v in args.variants:
        get_variant(v)  # an unknown name fails here, naming the known ones
    base = EntropyAttentionConfig.from_dict(load_params(ROOT / "params.yaml")["entropy_attention"])
    plan = [RunTask(cfg=dataclasses.replace(base, steps=s, warmup_steps=max(1, s // 20)), data_dir=str(ROOT / "data"),
                    variant=v, seed=args.seed) for s in args.steps for v in args.variants]  # fmt: skip
    rows = []
    for task, r in zip(plan, run_tasks(train_task, plan, workers=args.workers, desc="runs")):
        curve = pd.DataFrame([{"step": h["step"], "val_ppl": math.exp(h["probe_loss"])} for h in r.history
                              if "probe_loss" in h])  # fmt: skip
        rows.append({"steps": task.cfg.steps, "variant": r.variant, "status": r.status, "val_ppl": r.val_ppl,
                     "rel_change_last_20pct": relative_change_last(curve)})  # fmt: skip
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return rows


if __name__ == "__main__":
    main()
