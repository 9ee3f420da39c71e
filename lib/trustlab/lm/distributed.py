"""Several processes, one result: who is rank 0, and work split across ranks in order.

In a data-parallel run every process executes the same code: Lightning's ``ddp`` strategy
re-launches the script once per extra device (``LOCAL_RANK`` set in the new processes),
``torchrun`` starts them all (``RANK`` set). ``trustlab.lm.training.fit`` splits the training
batches; everything after it (generation, scoring, evaluation) is split with these helpers, and
only rank 0 writes files and W&B runs:

* ``global_rank()``, ``world_size()``, ``is_global_zero()``: from ``torch.distributed`` when a
  process group is up, else from the launcher's environment (``RANK``, else
  ``NODE_RANK``/``LOCAL_RANK``). A plain single process is rank 0 of 1.
* ``shard_indices(n)``: this rank's contiguous block of ``range(n)`` (sizes differ by at most
  one; the blocks in rank order are ``range(n)``).
* ``gather_in_order(local, n)``: every rank's block, concatenated in rank order, on every rank —
  the same list a single process would have produced.
* ``map_sharded(fn, items)``: ``fn`` over this rank's block, gathered in order.
* ``sharded_generate`` / ``sharded_score``: ``generation.generate`` / ``score_continuations``
  over this rank's prompts, results merged in prompt order (``prompt_index`` refers to the full
  prompt list).

Without a process group (one process, or a spawn-based strategy whose workers have exited)
the shards are the whole input and gathering is the identity, so code written with these helpers
runs unchanged on one process. Greedy outputs do not depend on the split (batched == one by one);
sampled outputs do (a shard's sampler sees a different batch), so compare sampled results only
at the same world size.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def _group() -> tuple[int, int] | None:
    """(rank, world size) of the default process group, or None when there is none."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it on Linux
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def global_rank() -> int:
    """This process's global rank: the process group's, else ``$RANK``, else
    ``NODE_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK`` as far as the environment tells (0 when
    nothing is set: a plain single process)."""
    group = _group()
    if group is not None:
        return group[0]
    rank = _env_int("RANK")
    if rank is not None:
        return rank
    local = _env_int("LOCAL_RANK") or 0
    node = _env_int("NODE_RANK") or _env_int("GROUP_RANK") or 0
    per_node = _env_int("LOCAL_WORLD_SIZE") or 1
    return node * per_node + local if node else local


def world_size() -> int:
    """The process group's size, else ``$WORLD_SIZE``, else 1."""
    group = _group()
    if group is not None:
        return group[1]
    return max(_env_int("WORLD_SIZE") or 1, 1)


def is_global_zero() -> bool:
    """True in the process that writes outputs, checkpoints and W&B runs."""
    return global_rank() == 0


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run ``fn`` on global rank 0 only (elsewhere it returns None)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_global_zero() else None

    return wrapper


def _rank_world(rank: int | None, world: int | None) -> tuple[int, int]:
    group = _group() or (0, 1)
    rank = group[0] if rank is None else int(rank)
    world = group[1] if world is None else int(world)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank = {rank} and world_size = {world}: need 0 <= rank < world_size")
    return rank, world


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of block ``rank`` when ``range(n)`` is cut into ``world`` contiguous blocks
    whose sizes differ by at most one (the first ``n % world`` blocks are one longer)."""
    if n < 0:
        raise ValueError(f"n = {n} must be >= 0")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's contiguous block of ``range(n)`` (default rank/world: the process group's)."""
    rank, world = _rank_world(rank, world_size)
    return range(*shard_bounds(n, rank, world))


def gather_in_order(local: Sequence[T], n: int, rank: int | None = None, world_size: int | None = None) -> list[T]:
    """Every rank passes the results for its ``shard_indices(n)``; every rank gets all ``n``
    results in the original order (``torch.distributed.all_gather_object``; the identity
    without a process group)."""
    rank, world = _rank_world(rank, world_size)
    start, stop = shard_bounds(n, rank, world)
    if len(local) != stop - start:
        raise ValueError(f"rank {rank} holds {len(local)} results for its {stop - start} items of {n}")
    if world == 1:
        return list(local)
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, list(local))
    out = [x for part in parts for x in part]
    if len(out) != n:  # pragma: no cover - a rank used a different n
        raise RuntimeError(f"gathered {len(out)} results for {n} items: every rank must pass the same n")
    return out


def map_sharded(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """``[fn(x) for x in items]`` computed across ranks, in the original order on every rank."""
    idx = shard_indices(len(items))
    return gather_in_order([fn(items[i]) for i in idx], len(items))


def merge_results(parts: Sequence[Any], offsets: Sequence[int]):
    """Concatenate ``GenerationResult``/``ScoreResult`` parts (in prompt order); list fields are
    concatenated (``None`` stays ``None``), ``prompt_index`` is shifted by each part's first
    prompt, other fields (``settings``) are taken from the first part."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        vals = [getattr(p, f.name) for p in parts]
        if f.name == "prompt_index":
            values[f.name] = [i + off for v, off in zip(vals, offsets) for i in v]
        elif all(v is None for v in vals):
            values[f.name] = None
        elif all(isinstance(v, list) for v in vals):
            values[f.name] = [x for v in vals for x in v]
        else:
            values[f.name] = vals[0]
    return type(first)(**values)


def _sharded(fn_name: str, model, tokenizer, prompts, extra_lists: Sequence[Sequence] = (), **kwargs):
    from trustlab.lm import generation

    n = len(prompts)
    rank, world = _rank_world(None, None)
    start, stop = shard_bounds(n, rank, world)
    local = getattr(generation, fn_name)(
        model, tokenizer, list(prompts[start:stop]), *[list(x[start:stop]) for x in extra_lists], **kwargs
    )
    if world == 1:
        return local
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    offsets = [shard_bounds(n, r, world)[0] for r in range(world)]
    return merge_results(parts, offsets)


def sharded_generate(model, tokenizer, prompts: Sequence, **kwargs):
    """``generation.generate`` with the prompts split across ranks; every rank gets the whole
    ``GenerationResult`` in prompt order."""
    return _sharded("generate", model, tokenizer, prompts, **kwargs)


def sharded_score(model, tokenizer, prompts: Sequence, continuations: Sequence, **kwargs):
    """``generation.score_continuations`` split across ranks, merged in order."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    return _sharded("score_continuations", model, tokenizer, prompts, [continuations], **kwargs)
