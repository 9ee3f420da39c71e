"""The model directory the ``base_model`` stage writes (``<data>/models/base``) and reads back.

It holds ``model.safetensors``, ``config.json``, ``tokenizer.json``, ``metrics.json``
(``headline`` + per-split table + mix + config), ``curve.csv`` (training curve),
``eval_summary.csv`` (per task/split), ``eval_items.jsonl`` (every evaluated response) and
``mix.json``. Nothing in it depends on how fast the machine was: a rerun with identical weights
writes an identical directory (wall times and throughput go to the stage's ``timing.json``,
see :mod:`trustlab.lm.base_model.stage`).
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.core.config import digest
from trustlab.core.io import read_json, read_jsonl, write_csv, write_json, write_jsonl
from trustlab.data import tasks as T
from trustlab.lm.base_model.config import BaseModelConfig
from trustlab.lm.base_model.evaluate import Evaluation
from trustlab.lm.base_model.pretrain import PretrainResult
from trustlab.lm.checkpoint import save_model

MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def data_fingerprint(gen_dir: str | os.PathLike) -> str | None:
    try:
        return T.load_manifest(gen_dir).get("fingerprint")
    except FileNotFoundError:
        return None


def stage_metrics(cfg: BaseModelConfig, result: PretrainResult, evaluation: Evaluation, gen_dir) -> dict:
    """``metrics.json`` of the model directory (also read by the 01_base_model notebook); no
    wall times (:func:`trustlab.lm.base_model.stage.stage_timing` has them)."""
    curve = result.curve
    tail = [r["loss"] for r in curve[-max(1, len(curve) // 20) :]]
    headline = {
        **evaluation.headline(),
        "final_train_loss": round(float(np.mean(tail)), 4) if tail else float("nan"),
        "steps": result.steps,
        "n_params": int(sum(p.numel() for p in result.model.parameters())),
        "vocab_size": result.tokenizer.vocab_size,
    }
    return {
        "headline": headline,
        "eval": evaluation.summary,
        "mix": result.mix.table(),
        "trained_splits": [list(x) for x in result.mix.trained_splits],
        "bio_splits": result.mix.bio_splits,
        "config": cfg.to_dict(),
        "config_digest": digest(cfg.to_dict()),
        "data_fingerprint": data_fingerprint(gen_dir),
    }


def save_base_model(
    out: str | os.PathLike, result: PretrainResult, evaluation: Evaluation, metrics: Mapping[str, Any]
) -> Path:
    """Write the model directory atomically: everything goes to a temporary sibling that is
    renamed into place (an interrupted stage leaves the previous model, or nothing)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model directory is an ordinary output
    try:
        meta = {
            "stage": "base_model",
            "config": metrics.get("config"),
            "data_fingerprint": metrics.get("data_fingerprint"),
            "steps": result.steps,
        }
        save_model(result.model, tmp, result.tokenizer, metadata=meta)
        write_json(tmp / "metrics.json", metrics)
        write_csv(tmp / "curve.csv", [{k: r[k] for k in ("step", "loss", "lr", "tokens")} for r in result.curve])
        write_csv(tmp / "eval_summary.csv", evaluation.summary)
        write_jsonl(tmp / "eval_items.jsonl", evaluation.items)
        write_json(
            tmp / "mix.json",
            {
                "components": result.mix.table(),
                "trained_splits": metrics.get("trained_splits"),
                "bio_splits": result.mix.bio_splits,
            },
        )
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_metrics(model_dir: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(model_dir) / "metrics.json")


def load_curve(model_dir: str | os.PathLike) -> list[dict[str, float]]:
    with open(Path(model_dir) / "curve.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def load_eval_items(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return read_jsonl(Path(model_dir) / "eval_items.jsonl")
