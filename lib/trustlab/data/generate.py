"""Run every enabled generator into one data directory and write the top-level manifest."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from trustlab.data.arithmetic import generate_arithmetic
from trustlab.data.code_corpus import generate_code_corpus
from trustlab.data.config import DataConfig
from trustlab.data.context_copy import generate_context_copy
from trustlab.data.instructions import generate_instructions
from trustlab.data.scratchpad import generate_scratchpad
from trustlab.data.tasks import sub_seed
from trustlab.data.world import generate_world
from trustlab.core.io import sha256_bytes, write_json

# generator name -> (sub-directory, function(cfg_section, out_dir, seed))
GENERATOR_FUNCS = {
    "world": ("world", generate_world),
    "arithmetic": ("arithmetic", generate_arithmetic),
    "instructions": ("instructions", generate_instructions),
    "context_copy": ("context_copy", generate_context_copy),
    "scratchpad": ("scratchpad", generate_scratchpad),
    "code_corpus": ("code", generate_code_corpus),
}


def generator_seed(cfg: DataConfig, name: str) -> int:
    """The sub-seed of one generator: a function of the master seed and the name only."""
    return sub_seed(cfg.seed, name)


def generate_all(cfg: DataConfig, out_dir: str | os.PathLike, *, clean: bool = True) -> dict[str, Any]:
    """Write every generator in ``cfg.generators`` under ``out_dir`` and return the top-level
    manifest (``out_dir/manifest.json``: params, counts per generator, sha256 of every file
    the generators wrote, fingerprint, the sub-manifests' fingerprints). Other content of
    ``out_dir`` (e.g. ``data/models``) is neither touched nor listed.

    With ``clean`` the sub-directories of generators are emptied of stale ``*.jsonl`` /
    ``*.json`` files first, so the manifest lists exactly what this run wrote.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {}
    fingerprints: dict[str, str] = {}
    sub_manifests: dict[str, dict[str, Any]] = {}
    for name in cfg.generators:
        sub, func = GENERATOR_FUNCS[name]
        target = out / sub
        if clean and target.is_dir():
            for p in list(target.glob("*.jsonl")) + list(target.glob("*.json")):
                p.unlink()
        manifest = func(getattr(cfg, name), target, generator_seed(cfg, name))
        counts[name] = manifest["counts"]
        sub_manifests[sub] = manifest
        fingerprints[name] = manifest["fingerprint"]
    # The top-level manifest aggregates the sub-manifests instead of hashing all of out_dir:
    # data/ also holds other stages' outputs (data/models/...), which are not ours to list.
    # Same format and fingerprint formula as trustlab.core.io.write_manifest.
    files = {f"{sub}/{rel}": digest for sub, m in sub_manifests.items() for rel, digest in m["files"].items()}
    files = dict(sorted(files.items()))
    manifest = {
        "params": cfg.to_dict(),
        "counts": counts,
        "files": files,
        "fingerprint": sha256_bytes(json.dumps(sorted(files.items())).encode()),
        "generators": {n: GENERATOR_FUNCS[n][0] for n in cfg.generators},
        "fingerprints": fingerprints,
        "python_version": platform.python_version(),
    }
    write_json(out / "manifest.json", manifest)
    return manifest
