"""Check params.yaml, the profile and this machine before any stage touches its outputs.

    python pipelines/check_params.py [--out data/params_checked.json]   (the `params_check` stage)
    make params-check

The first stage of the pipeline: every other stage depends on it (through ``data``), so DVC
stops here, with every existing output still in place, when a key is misspelled, a value has
the wrong type or lies out of range, the profile does not exist, or the profile asks for
what this machine lacks (CUDA, weights in the cache). The message names the key and what is
allowed. The output holds the profile and nothing that changes with the other params, so a
passing check never invalidates a downstream stage by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from trustlab.core import io  # noqa: E402
from trustlab.core.config import ConfigError, load_params  # noqa: E402
from trustlab.core.interrupts import exit_loudly_on_signals  # noqa: E402


def check(params_file: Path | None = None) -> dict:
    from trustlab.profiles import check_environment
    from trustlab.stages import validate_params

    params = load_params(params_file)
    validate_params(params)
    check_environment(params, ROOT / "data")
    return {"profile": params["profile"], "valid": True}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the check's record here (the DVC stage's output)")
    ap.add_argument("--params-file", type=Path, default=None)
    args = ap.parse_args(argv)
    with exit_loudly_on_signals("params_check"):
        try:
            record = check(args.params_file)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.out is not None:
        io.write_json(args.out, record)
    print(f"params.yaml is valid (profile {record['profile']!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
