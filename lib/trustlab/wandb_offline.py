"""Read back an offline W&B run (``wandb/offline-run-*/run-*.wandb``) without the network.

The ``.wandb`` file is a LevelDB-style log of protobuf ``Record`` messages: a 7-byte file
header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
(crc32, little-endian length, type: FULL=1, FIRST=2, MIDDLE=3, LAST=4). Used by tests and by
anyone who wants to check what an offline run holds before ``wandb sync``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (missing ':W&B' header)")
    pos, record = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - (pos % _BLOCK)
        if left_in_block < _HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk, pos = data[pos : pos + length], pos + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            record = chunk
        elif kind == _MIDDLE:
            record += chunk
        elif kind == _LAST:
            yield record + chunk
            record = b""
        elif kind == 0 and length == 0:
            continue
        else:
            raise ValueError(f"corrupt W&B log: chunk type {kind} at byte {pos}")


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Return ``{"config", "summary", "history", "tags", "group", "job_type", "name"}`` of a run dir."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "tags": [], "group": None, "job_type": None, "name": None}
    for raw in _chunks(files[0].read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(group=rec.run.run_group, job_type=rec.run.job_type, name=rec.run.display_name, tags=list(rec.run.tags))
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    # summary values of media (tables, images) point at files under files/media
    return out


def offline_runs(wandb_root: str | Path) -> list[Path]:
    """Every offline run directory under ``<wandb_root>/wandb``, oldest first."""
    return sorted(Path(wandb_root, "wandb").glob("offline-run-*"))
