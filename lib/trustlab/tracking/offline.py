"""Read back an offline W&B run (``wandb/offline-run-*/run-*.wandb``) without the network.

The ``.wandb`` file is a LevelDB-style log of protobuf ``Record`` messages: a 7-byte file
header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
(crc32, little-endian length, type: FULL=1, FIRST=2, MIDDLE=3, LAST=4). Used by tests and by
anyone who wants to check what an offline run holds before ``wandb sync``.
"""

from __future__ import annotations

import json
import struct
import time
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


def _records(path: Path, wait_s: float) -> list[Any]:
    """The run's records, waiting up to ``wait_s`` for its final ``exit`` record: W&B's core
    process writes the log asynchronously and may still be flushing when ``finish()`` returns."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        records = []
        data = path.read_bytes()
        if len(data) >= 4 and data[:4] != b":W&B":
            raise ValueError(f"{path} is not a W&B transaction log (missing ':W&B' header)")
        try:
            for raw in _chunks(data):
                rec = pb.Record()
                rec.ParseFromString(raw)
                records.append(rec)
        except Exception:  # noqa: BLE001 - a chunk still being written (short read, DecodeError)
            pass
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() >= deadline:
            return records
        time.sleep(0.05)


def read_offline_run(run_dir: str | Path, wait_s: float = 30.0) -> dict[str, Any]:
    """Return ``{"config", "summary", "history", "tags", "group", "job_type", "name", "artifacts",
    "complete"}`` of a run dir; ``artifacts`` lists ``{"name", "type", "files"}`` of every logged
    artifact; ``complete`` says whether the run's ``exit`` record was found within ``wait_s``."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict[str, Any] = {
        "config": {}, "summary": {}, "history": [], "tags": [], "group": None, "job_type": None, "name": None,
        "artifacts": [], "complete": False,
    }
    for rec in _records(files[0], wait_s):
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
        elif kind == "artifact":
            art = rec.artifact
            files = [m.path for m in art.manifest.contents]
            out["artifacts"].append({"name": art.name, "type": art.type, "files": files})
        elif kind == "exit":
            out["complete"] = True
    # summary values of media (tables, images) point at files under files/media
    return out


def read_table(run_dir: str | Path, summary: dict[str, Any], key: str) -> dict[str, Any]:
    """The ``wandb.Table`` logged under ``key``: ``{"columns": [...], "data": [[...], ...]}``."""
    kind = summary.get(f"{key}/_type")
    if kind != "table-file":
        raise KeyError(f"{key!r} is not a logged table in this run (found _type {kind!r})")
    return json.loads((Path(run_dir) / "files" / summary[f"{key}/path"]).read_text(encoding="utf-8"))


def offline_runs(wandb_root: str | Path) -> list[Path]:
    """Every offline run directory under ``<wandb_root>/wandb``, oldest first."""
    return sorted(Path(wandb_root, "wandb").glob("offline-run-*"))
