"""Pretrain the shared base model: the ``base_model`` stage.

    python pipelines/pretrain_base.py [--profile smoke] [--data-dir data] [--out data/models/base]
                                      [--reports-dir reports/base_model] [--params FILE]

Loads and validates the ``base_model:`` section (params.yaml + profile), reads the generated data
from ``<data-dir>/generated``, pretrains, evaluates every task/split, and writes the model
directory (weights, config, tokenizer, metrics.json, curve.csv, eval tables) to ``--out``
atomically. Wall times, throughput and the machine go to ``<reports-dir>/timing.json``, so that
a rerun with identical weights leaves the model directory byte-identical. Exit code 2 on a
configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from trustlab.core.interrupts import exit_loudly_on_signals  # noqa: E402
from trustlab.core.config import ConfigError, load_params  # noqa: E402
from trustlab.lm.base_model import BaseModelConfig, run_stage  # noqa: E402
from trustlab.core.paths import data_dir as default_data_dir  # noqa: E402
from trustlab.core.paths import reports_dir as default_reports_dir  # noqa: E402


def load_config(params_file: str | None, profile: str | None) -> BaseModelConfig:
    """The validated ``base_model:`` section of params.yaml, with the profile merged on top."""
    params = load_params(params_file, profile)
    return BaseModelConfig.from_dict(params.get(BaseModelConfig.SECTION) or {}, where=BaseModelConfig.SECTION)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile in profiles/ (default: params.yaml's)")
    ap.add_argument("--data-dir", default=None, help="data directory holding generated/ (default: data/)")
    ap.add_argument("--out", default=None, help="model directory (default: <data-dir>/models/base)")
    ap.add_argument("--reports-dir", default=None,
                    help="where timing.json goes (default: reports/base_model)")  # fmt: skip
    ap.add_argument("--params", default=None, help="params file (default: params.yaml at the repo root)")
    ap.add_argument("--progress", action="store_true", help="show a training progress bar")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.params, args.profile)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = Path(args.data_dir) if args.data_dir else default_data_dir()
    out = Path(args.out) if args.out else data / "models" / "base"
    try:
        reports = Path(args.reports_dir) if args.reports_dir else default_reports_dir("base_model")
        stage = run_stage(cfg, data, out, progress=args.progress, timing_dir=reports)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h, t = stage.metrics["headline"], stage.timing
    print(f"{'task':<14}{'split':<19}{'n':>5}{'accuracy':>10}{'error':>8}  trained")
    for r in stage.metrics["eval"]:
        trained = "yes" if r["trained"] else "no"
        print(f"{r['task']:<14}{r['split']:<19}{r['n']:>5}{r['accuracy']:>10.3f}{r['error_rate']:>8.3f}  {trained}")
    print(
        f"trained {h['steps']} steps in {t['train_seconds']}s ({t['tokens_per_s']:.0f} tokens/s), "
        f"final loss {h['final_train_loss']}; stage {stage.seconds:.1f}s -> {stage.out}"
    )
    return 0


if __name__ == "__main__":
    with exit_loudly_on_signals("base_model"):
        sys.exit(main())
