"""Independent runs of a stage on every core, with the results of a serial run.

A family plans its runs (seed x variant x setting), each a small picklable task, and maps a
module-level function over them::

    results = run_tasks(train_one, plan, workers=cfg.workers, desc="fine-tuning")

- ``workers=1`` runs the tasks in this process, one after another.
- ``workers>1`` runs them in a pool of fresh worker processes (``spawn``: no inherited
  torch or OpenMP thread state), each with one torch thread, so ``workers`` processes
  use ``workers`` cores without oversubscription.
- Results come back in plan order whatever order the tasks finish in, and every task seeds
  itself, so the stage's outputs are identical for any ``workers`` (a test checks this).
- Progress shows as tasks finish (a widget in a live notebook, silent in executed reports).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from trustlab.core.progress import progress

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int | None) -> int:
    """``None`` or ``0``: the machine's cores; otherwise the number given (at least 1)."""
    if workers is None or workers == 0:
        return max(1, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers = {workers!r} is not allowed: 0 (all cores) or a positive integer")
    return workers


def _init_worker(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TRUSTLAB_PROGRESS"] = "0"  # the parent shows the progress of the whole plan
    try:
        from trustlab.core.seeding import set_threads

        set_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def run_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int | None = 1,
    desc: str | None = None,
    threads_per_worker: int = 1,
) -> list[R]:
    """``[fn(t) for t in tasks]``, spread over ``workers`` processes, in plan order."""
    tasks = list(tasks)
    n = min(resolve_workers(workers), max(1, len(tasks)))
    if n == 1:
        return [fn(t) for t in progress(tasks, desc=desc, total=len(tasks))]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[Any] = [None] * len(tasks)
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads_per_worker,)) as pool:  # fmt: skip
        futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
        try:
            for fut in progress(as_completed(futures), desc=desc, total=len(tasks)):
                results[futures[fut]] = fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results
