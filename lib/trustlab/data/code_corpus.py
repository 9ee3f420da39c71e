"""A Python source corpus from a deterministic local source: the running interpreter's
standard library (``sysconfig.get_paths()["stdlib"]``).

``.py`` files only; directories named in ``exclude_dirs`` (tests, site-packages, ...) and
``test_*.py`` files are skipped; the relative paths are sorted, optionally permuted with the
seed (``order: shuffled``), files above ``max_file_bytes``, not valid UTF-8, non-ASCII
(``ascii_only``) or with already-seen content (sha256) are skipped, and files are taken
until ``max_bytes`` is reached. The split into train / val is by file.

The corpus depends on the Python build: the manifest records the version, the stdlib path
and a sha256 over the selected (path, sha256) pairs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustlab.data.tasks import sub_seed
from trustlab.core.io import write_jsonl, write_manifest
from trustlab.core.seeding import rng

if TYPE_CHECKING:
    from trustlab.data.config import CodeCorpusConfig


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_sources(root: str | os.PathLike, exclude_dirs: list[str] | tuple[str, ...]) -> list[str]:
    """Sorted POSIX paths (relative to ``root``) of the eligible ``.py`` files."""
    root = Path(root)
    exclude = set(exclude_dirs)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude)
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def select_files(
    cfg: CodeCorpusConfig, seed: int, root: str | os.PathLike | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The selected file records (without split) and counts of skipped files by reason."""
    root = Path(root) if root is not None else stdlib_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"code corpus source {root} is not a directory")
    paths = list_sources(root, cfg.exclude_dirs)
    if cfg.order == "shuffled":
        perm = rng(sub_seed(seed, "code_corpus", "order")).permutation(len(paths)).tolist()
        paths = [paths[i] for i in perm]
    skipped = {"too_large": 0, "not_utf8": 0, "non_ascii": 0, "duplicate": 0, "over_cap": 0, "empty": 0}
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    total = 0
    for rel in paths:
        data = (root / rel).read_bytes()
        if not data.strip():
            skipped["empty"] += 1
            continue
        if len(data) > cfg.max_file_bytes:
            skipped["too_large"] += 1
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        if cfg.ascii_only and not text.isascii():
            skipped["non_ascii"] += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            skipped["duplicate"] += 1
            continue
        if total + len(data) > cfg.max_bytes:
            skipped["over_cap"] += 1
            continue
        seen.add(digest)
        total += len(data)
        records.append({"path": rel, "sha256": digest, "n_bytes": len(data), "n_lines": text.count("\n"), "text": text})
    return records, skipped


def make_code_corpus(
    cfg: CodeCorpusConfig, seed: int, root: str | os.PathLike | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    files, skipped = select_files(cfg, seed, root)
    n_val = int(round(cfg.val_fraction * len(files)))
    if cfg.val_fraction > 0 and len(files) >= 2:
        n_val = max(1, min(n_val, len(files) - 1))
    val = set(rng(sub_seed(seed, "code_corpus", "split")).permutation(len(files))[:n_val].tolist())
    records = [
        {"id": f"code-{i:05d}", "task": "code", "split": "val" if i in val else "train", **f}
        for i, f in enumerate(files)
    ]
    corpus_sha = hashlib.sha256("\n".join(f"{r['path']} {r['sha256']}" for r in records).encode()).hexdigest()
    info = {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib": str(Path(root) if root is not None else stdlib_dir()),
        "corpus_sha256": corpus_sha,
        "skipped": skipped,
    }
    return records, info


def generate_code_corpus(
    cfg: CodeCorpusConfig, out_dir: str | os.PathLike, seed: int, root: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Write ``<out_dir>/files.jsonl`` and ``manifest.json`` (with the source fingerprint)."""
    out = Path(out_dir)
    records, info = make_code_corpus(cfg, seed, root)
    write_jsonl(out / "files.jsonl", records)
    counts = {
        "files": len(records),
        "bytes": sum(r["n_bytes"] for r in records),
        "files_per_split": {s: sum(r["split"] == s for r in records) for s in ("train", "val")},
        "bytes_per_split": {s: sum(r["n_bytes"] for r in records if r["split"] == s) for s in ("train", "val")},
    }
    return write_manifest(out, {"seed": seed, **cfg.to_dict()}, counts, generator="code_corpus", source=info)
