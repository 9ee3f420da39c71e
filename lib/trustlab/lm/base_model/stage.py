"""The ``base_model`` stage (what ``pipelines/pretrain_base.py`` runs): pretrain, evaluate, save.

The model directory gets everything that is a function of the params and the data; wall
times, throughput and the machine go to ``timing.json`` in the stage's reports folder
(``reports/base_model`` in the pipeline), which no stage depends on.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustlab.core.io import write_json
from trustlab.core.provenance import machine
from trustlab.lm.base_model.config import BaseModelConfig
from trustlab.lm.base_model.corpus import generated_dir
from trustlab.lm.base_model.evaluate import Evaluation, evaluate
from trustlab.lm.base_model.model_dir import save_base_model, stage_metrics
from trustlab.lm.base_model.pretrain import PretrainResult, pretrain
from trustlab.lm.flops import matmul_peak, training_flops_per_token

TIMING_FILE = "timing.json"


@dataclass
class StageResult:
    out: Path
    metrics: dict[str, Any]
    result: PretrainResult
    evaluation: Evaluation
    seconds: float
    timing: dict[str, Any] = field(default_factory=dict)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def stage_timing(result: PretrainResult, stage_seconds: float, cpu: float, threads: int) -> dict[str, Any]:
    """How long the stage took and on what (``timing.json``): wall and CPU time (``cores`` =
    CPU / wall, the utilisation), training throughput, and the training share of the machine's
    matmul peak at the training thread count and of the one-thread peak (``trustlab.lm.flops``;
    with several threads the first says how well they scale, the second what the cores deliver
    against one thread's best)."""
    flops = training_flops_per_token(result.model.config.to_dict())
    peak = matmul_peak(threads)
    peak_1 = peak if threads == 1 else matmul_peak(1)
    return {
        "stage_seconds": round(stage_seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "cores": round(cpu / stage_seconds, 2) if stage_seconds > 0 else None,
        "train_seconds": round(result.seconds, 1),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "train_threads": threads,
        "train_flops_per_token": flops,
        "matmul_peak_flops": round(peak),
        "train_share_of_peak": round(flops * result.tokens_per_s / peak, 4),
        "matmul_peak_flops_1thread": round(peak_1),
        "train_share_of_1thread_peak": round(flops * result.tokens_per_s / peak_1, 4),
        "machine": machine(),
    }


def run_stage(
    cfg: BaseModelConfig,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    progress: bool | None = None,
    timing_dir: str | os.PathLike | None = None,
) -> StageResult:
    """Pretrain, evaluate and save: the whole ``base_model`` stage. ``timing_dir``: where
    ``timing.json`` goes (None: not written)."""
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    gen_dir = generated_dir(data_dir)
    if not (gen_dir / "world" / "bios.jsonl").exists():
        raise FileNotFoundError(f"{gen_dir} holds no generated data: run pipelines/generate_data.py first")
    result = pretrain(gen_dir, cfg, progress=progress)
    evaluation = evaluate(result.model, result.tokenizer, gen_dir, cfg, trained_splits=result.mix.trained_splits)
    metrics = stage_metrics(cfg, result, evaluation, gen_dir)
    path = save_base_model(out, result, evaluation, metrics)
    seconds = time.perf_counter() - t0
    timing = stage_timing(result, seconds, cpu_seconds() - cpu0, cfg.threads or torch_threads())
    if timing_dir is not None:
        write_json(Path(timing_dir) / TIMING_FILE, timing)
    return StageResult(path, metrics, result, evaluation, seconds, timing)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def config_from(cfg: BaseModelConfig | Mapping[str, Any] | None) -> BaseModelConfig:
    if isinstance(cfg, BaseModelConfig):
        return cfg
    return BaseModelConfig.from_dict(cfg or {})
