"""Generate every data set of the ``data:`` params section.

    python pipelines/generate_data.py [--profile smoke] [--out data] [--params params.yaml]

Loads and validates ``data:`` (params.yaml + profile), then writes ``<out>/`` with a
top-level ``manifest.json`` (see ``trustlab.data.tasks`` for the layout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from trustlab.core.interrupts import exit_loudly_on_signals  # noqa: E402
from trustlab.core.config import ConfigError, load_section  # noqa: E402
from trustlab.data.config import DataConfig  # noqa: E402
from trustlab.data.generate import generate_all  # noqa: E402
from trustlab.core.paths import data_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile in profiles/ (default: params.yaml's)")
    ap.add_argument("--out", default=None, help="output directory (default: data/)")
    ap.add_argument("--params", default=None, help="params file (default: params.yaml at the repo root)")
    args = ap.parse_args(argv)
    try:
        cfg = load_section(DataConfig, path=args.params, profile=args.profile)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else data_dir()
    t0 = time.perf_counter()
    manifest = generate_all(cfg, out)
    print(json.dumps(manifest["counts"], indent=1))
    print(f"wrote {len(manifest['files'])} files to {out} in {time.perf_counter() - t0:.1f}s; "
          f"fingerprint {manifest['fingerprint'][:16]}")
    return 0


if __name__ == "__main__":
    with exit_loudly_on_signals("data"):
        sys.exit(main())
