"""Fail early when a profile asks for what this machine does not have.

A profile (``profiles/<name>.yaml``, selected by ``profile:`` in ``params.yaml``, by
``dvc exp run -S profile=<name>`` or by ``$TRUSTLAB_PROFILE``) is deep-merged over
``params.yaml`` by ``trustlab.core.config.load_params``. ``check_environment(params)`` then checks,
before any stage starts work, that the machine can run it:

* **CUDA** — the ``model:`` section needs it when ``model.device = cuda``,
  ``model.trainer.accelerator = gpu``, ``precision = 16-mixed``, ``strategy = fsdp`` or
  ``dtype = float16``; and ``trainer.devices`` GPUs must exist;
* **the model** — ``backend: hf`` needs ``transformers`` (and ``peft`` for LoRA); a
  ``name_or_path`` that is not a local directory is a hub name, which needs the network unless
  it is already in the Hugging Face cache. With downloads off (``model.local_files_only: true``,
  the default, or ``HF_HUB_OFFLINE=1``) an uncached hub name fails here.

All problems are reported together in one ConfigError naming the profile, the keys and what to
do. ``python -m trustlab.profiles [--profile gpu]`` runs the check from a shell.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trustlab.core.config import ConfigError, load_params
from trustlab.lm.model_config import ModelConfig, hf_offline, in_hf_cache, resolve_hf_source


def _cuda() -> tuple[bool, int]:
    import torch

    available = torch.cuda.is_available()
    return available, torch.cuda.device_count() if available else 0


def cuda_reasons(model: ModelConfig) -> list[str]:
    """The ``model:`` keys that need CUDA."""
    t = model.trainer
    reasons = []
    if model.device == "cuda":
        reasons.append("model.device = 'cuda'")
    if model.dtype == "float16":
        reasons.append("model.dtype = 'float16'")
    if t.accelerator == "gpu":
        reasons.append("model.trainer.accelerator = 'gpu'")
    if t.precision == "16-mixed":
        reasons.append("model.trainer.precision = '16-mixed'")
    if t.strategy == "fsdp":
        reasons.append("model.trainer.strategy = 'fsdp'")
    return reasons


def check_environment(params: Mapping[str, Any], data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Raise one ConfigError, before any work, listing everything in ``params`` (after the
    profile) that this machine cannot provide. ``data_dir`` (default ``<repo>/data``) is where
    a relative ``model.name_or_path`` is looked for first. Returns what was found:
    ``{"profile", "cuda", "gpus", "model_source"}`` (model_source: tiny | local | cache | hub)."""
    profile = params.get("profile") or "cpu"
    model = ModelConfig.from_dict(params.get("model") or {}, where="model")
    if data_dir is None:
        from trustlab.core.paths import repo_root

        data_dir = repo_root() / "data"
    problems: list[str] = []
    found: dict[str, Any] = {"profile": profile, "cuda": None, "gpus": None, "model_source": "tiny"}

    reasons = cuda_reasons(model)
    if reasons or model.device == "auto" or model.trainer.accelerator == "auto":
        cuda, gpus = _cuda()
        found.update(cuda=cuda, gpus=gpus)
        if reasons and not cuda:
            import torch

            problems.append(
                f"{', '.join(reasons)} need CUDA, but torch.cuda.is_available() is False here "
                f"(torch {torch.__version__}{'' if torch.version.cuda else ', a CPU-only build'}). "
                "Run this profile on a machine with an NVIDIA GPU and a CUDA build of torch, "
                "or use the cpu profile."
            )
        devices = model.trainer.devices
        if cuda and model.trainer.accelerator == "gpu" and isinstance(devices, int) and devices > gpus:
            problems.append(f"model.trainer.devices = {devices} but this machine has {gpus} GPU(s)")

    if model.backend == "hf":
        if importlib.util.find_spec("transformers") is None:
            problems.append("model.backend = 'hf' needs transformers: pip install '.[hf]'")
        if model.lora.enabled and importlib.util.find_spec("peft") is None:
            problems.append("model.lora.enabled = true needs peft: pip install '.[hf]'")
        source, local = resolve_hf_source(model.name_or_path, data_dir)
        if local:
            found["model_source"] = "local"
        elif in_hf_cache(source):
            found["model_source"] = "cache"
        else:
            found["model_source"] = "hub"
            offline = []
            if model.local_files_only:
                offline.append("model.local_files_only = true")
            if hf_offline():
                offline.append("HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set")
            if offline:
                problems.append(
                    f"model.name_or_path = {model.name_or_path!r} is not a local directory (looked in {data_dir} and "
                    f"{Path.cwd()}) nor in the Hugging Face cache, and downloads are off ({'; '.join(offline)}). "
                    f"Download it once with network (`hf download {model.name_or_path}`), or set "
                    "model.name_or_path to a local directory, or allow the download with model.local_files_only: false."
                )

    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"profile {profile!r} cannot run on this machine:\n{lines}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that this machine can run a params profile.")
    parser.add_argument("--profile", default=None, help="default: $TRUSTLAB_PROFILE, then params.yaml's profile key")
    parser.add_argument("--params-file", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        found = check_environment(load_params(args.params_file, args.profile), args.data_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"profile {found['profile']!r} can run here: {found}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
