"""Which items each optimizer step sees: a pure function of (seed, step).

Step s draws global batch s mod E of epoch s // E, each epoch a fresh seeded permutation; with
several processes or gradient accumulation that global batch is split into the micro-batches
of each rank, so the examples of a step do not depend on how it is parallelised. That is what
makes resume exact without relying on Lightning's loop state.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler):
    """Batches for steps ``start_step .. total_steps - 1``: step s takes global batch s mod E of
    epoch s // E (E = ceil(n / G)), each epoch a permutation seeded by (seed, epoch).

    ``G = batch_size * world_size * accumulate``: with ``world_size`` processes (data parallel) and
    ``accumulate`` micro-batches per optimizer step, step s's global batch is cut into
    ``accumulate * world_size`` consecutive slices (sizes differ by at most one) and micro-batch j
    of rank r is slice ``j * world_size + r``. One process with ``batch_size = G`` therefore sees
    exactly the same examples at every step. A global batch shorter than ``accumulate *
    world_size`` (a tiny epoch tail) is topped up with the epoch's first items, so that no slice is
    empty. ``rank`` None: the ``torch.distributed`` rank when the sampler is iterated (Lightning
    starts the process group after the sampler is built)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        total_steps: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
        world_size: int = 1,
        accumulate: int = 1,
        rank: int | None = None,
    ):
        if n < 1:
            raise ValueError("the training dataset is empty")
        if batch_size < 1 or world_size < 1 or accumulate < 1:
            raise ValueError(
                f"batch_size ({batch_size}), world_size ({world_size}) and accumulate ({accumulate}) must be >= 1"
            )
        self.n, self.batch_size, self.total_steps = n, batch_size, total_steps
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self.world_size, self.accumulate, self.rank = world_size, accumulate, rank
        self.global_batch = batch_size * world_size * accumulate
        self.steps_per_epoch = math.ceil(n / self.global_batch)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.accumulate

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _rank(self) -> int:
        if self.world_size == 1:
            return 0
        if self.rank is not None:
            return self.rank
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"StepBatchSampler(world_size={self.world_size}) is iterated without a process group: "
                "give rank= or iterate it inside a distributed run"
            )
        return dist.get_rank()

    def __iter__(self):
        from trustlab.lm.distributed import shard_bounds

        parts = self.world_size * self.accumulate
        rank = self._rank()
        order, order_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, b = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self._order(epoch), epoch
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            if parts == 1:
                yield batch
                continue
            if len(batch) < parts:  # top up a tiny tail so that every slice has an item
                batch = batch + (order * parts)[: parts - len(batch)]
            for j in range(self.accumulate):
                lo, hi = shard_bounds(len(batch), j * self.world_size + rank, parts)
                yield batch[lo:hi]


class ShardSampler(Sampler):
    """This rank's contiguous block of ``range(n)`` (``distributed.shard_indices``), resolved
    when iterated; all of it when there is no process group or ``world_size`` is 1."""

    def __init__(self, n: int, world_size: int = 1):
        self.n, self.world_size = n, world_size

    def _indices(self) -> range:
        from trustlab.lm.distributed import _group, shard_bounds

        group = _group() if self.world_size > 1 else None
        if group is None:
            return range(self.n)
        return range(*shard_bounds(self.n, group[0], group[1]))

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self):
        return iter(self._indices())

