"""Independent runs of a stage on every core, with the results of a serial run.

A family plans its runs (seed x variant x setting), each a small picklable task, and maps a
module-level function over them::

    results = run_tasks(train_one, plan, workers=cfg.workers, desc="fine-tuning")

- ``workers=1`` runs the tasks in this process, one after another.
- ``workers>1`` runs them in a pool of worker processes (``spawn``: no inherited torch or
  OpenMP thread state), each with one torch thread, so ``workers`` processes use ``workers``
  cores without oversubscription.
- The pool outlives one call: a stage maps several plans (calibration: tuning, main table,
  label noise, ...) and a fresh worker spends seconds importing torch and Lightning, so the
  next call with the same ``workers`` reuses the warm processes. A pool whose code has gone
  stale (a file of the package edited in a live notebook), or whose settings differ, is
  replaced; a failed or interrupted map kills its workers at once, and the pool is shut down
  when the process exits (or by :func:`shutdown_pool`).
- Results come back in plan order whatever order the tasks finish in, and every task seeds
  itself, so the stage's outputs are identical for any ``workers`` (a test checks this).
- Progress shows as tasks finish (a widget in a live notebook, silent in executed reports).

Two refinements keep both cores busy where a stage has work of its own between maps:

- :func:`iter_tasks` yields the results in plan order as they arrive, so what the parent does
  per result (logging a W&B run, a progress line) overlaps with the tasks still running instead
  of following the whole map.
- :func:`submit_tasks` hands a plan to the pool and returns at once; its
  :meth:`TaskBatch.results` waits later. A stage whose second plan depends on the first's
  results (a tuned value) submits the runs that do not depend on it alongside the tuning runs,
  so no core idles while the choice is made::

      tuning = submit_tasks(train, tuning_plan, workers=w)
      free = submit_tasks(train, untuned_plan, workers=w)       # runs while tuning finishes
      chosen = choose(tuning.results())
      tuned = submit_tasks(train, plan_at(chosen), workers=w)   # queued behind the free runs
      runs = free.results() + tuned.results()
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from trustlab.core.progress import progress

T = TypeVar("T")
R = TypeVar("R")

_PACKAGE = Path(__file__).resolve().parents[1]
# environment the workers inherit at spawn time and the tasks read (tracking mode, progress, ...)
_INHERITED_PREFIXES = ("TRUSTLAB_", "WANDB_", "OMP_", "MKL_", "PYTHONPATH")


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
    # A BLAS library loaded before this ran (the spawn start re-imports the parent's main module)
    # has already read the variables above: two workers with a BLAS pool each on two cores spin
    # against each other (scikit-learn fits ran 6x slower). Limit what is loaded now as well.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def code_fingerprint(extra: Sequence[str | os.PathLike] = ()) -> tuple:
    """(path, mtime, size) of every source file of the package (and of ``extra`` files): a
    worker that imported older code than this must not run the next plan."""
    entries = []
    for root, dirs, files in os.walk(_PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                st = os.stat(os.path.join(root, name))
                entries.append((os.path.join(root, name), st.st_mtime_ns, st.st_size))
    for path in extra:
        try:
            st = os.stat(path)
        except OSError:
            continue
        entries.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(sorted(entries))


def _pool_key(n: int, threads: int, fn: Callable) -> tuple:
    module_file = getattr(sys.modules.get(getattr(fn, "__module__", ""), None), "__file__", None)
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_INHERITED_PREFIXES)))
    return n, threads, env, code_fingerprint([module_file] if module_file else [])


class _SharedPool:
    """The process's one warm worker pool and the key it was started with."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.executor = None

    def get(self, key: tuple):
        if self.executor is not None and self.key == key:
            return self.executor
        self.shutdown()
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n, threads = key[0], key[1]
        self.executor = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                                            initializer=_init_worker, initargs=(threads,))  # fmt: skip
        self.key = key
        return self.executor

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor, self.key = None, None

    def kill(self) -> None:
        """Stop now: pending tasks are cancelled and running ones are not waited for."""
        executor, self.executor, self.key = self.executor, None, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.kill()
        for proc in processes:
            proc.join(timeout=5)


_POOL = _SharedPool()
atexit.register(_POOL.shutdown)


def shutdown_pool() -> None:
    """Stop the warm worker processes (a live notebook keeps them between cells otherwise)."""
    _POOL.shutdown()


class SharedValue(Generic[T]):
    """A large read-only value that every task of a plan needs (statistics, a dataset): sent to
    the workers once instead of once per task.

    Pickling the handle writes the value to a temporary file the first time and then sends only
    the path; :meth:`get` in a worker unpickles the file once and keeps it for the tasks that
    follow (the last two values, by file). In this process :meth:`get` returns the value itself,
    so a serial run never touches the disk. :meth:`close` (or the ``with`` block) removes the
    file."""

    def __init__(self, value: T) -> None:
        self._value: Any = value
        self._dir: str | None = None
        self.path: str | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is not _IN_FILE:
            return self._value
        if self.path not in _SHARED:
            with open(self.path, "rb") as f:
                value = pickle.load(f)
            while len(_SHARED) >= 2:
                _SHARED.pop(next(iter(_SHARED)))
            _SHARED[self.path] = value
        return _SHARED[self.path]

    def __getstate__(self) -> dict:
        with self._lock:
            if self.path is None:
                self._dir = tempfile.mkdtemp(prefix="trustlab-shared-")
                path = os.path.join(self._dir, "value.pkl")
                with open(path, "wb") as f:
                    pickle.dump(self._value, f, protocol=pickle.HIGHEST_PROTOCOL)
                self.path = path
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self._value, self._dir, self.path, self._lock = _IN_FILE, None, state["path"], threading.Lock()

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SharedValue[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_IN_FILE = object()  # a handle unpickled in a worker: its value is in the file
_SHARED: dict[str, Any] = {}  # per worker process: the values of SharedValue handles, by file


class TaskBatch(Generic[R]):
    """A plan handed to the workers: :meth:`results` (or iterating) gives ``fn(task)`` for each
    task, in plan order. With one worker nothing runs before the results are asked for, and
    then in this process, one task after another."""

    def __init__(self, fn: Callable[[T], R], tasks: Sequence[T], n: int, threads_per_worker: int) -> None:
        self.fn, self.tasks = fn, list(tasks)
        self._done: list[R] = []
        self._futures = None
        if min(n, len(self.tasks)) > 1:
            pool = _POOL.get(_pool_key(n, threads_per_worker, fn))
            try:
                self._futures = [pool.submit(fn, t) for t in self.tasks]
            except BaseException:
                _POOL.kill()
                raise

    def __len__(self) -> int:
        return len(self.tasks)

    def _next(self, i: int) -> R:
        if self._futures is None:
            return self.fn(self.tasks[i])
        try:
            return self._futures[i].result()
        except BaseException:
            # a failed task or an interrupt: stop every worker now (the pool restarts next time)
            _POOL.kill()
            raise

    def iter_results(self, desc: str | None = None) -> Iterator[R]:
        """The results in plan order, each as soon as it and those before it are done. Leaving
        the loop early stops the workers."""
        def ordered() -> Iterator[R]:
            for i in range(len(self.tasks)):
                if i == len(self._done):
                    self._done.append(self._next(i))
                yield self._done[i]

        gen = ordered()
        try:
            yield from progress(gen, desc=desc, total=len(self.tasks))
        except GeneratorExit:
            if len(self._done) < len(self.tasks) and self._futures is not None:
                _POOL.kill()
            raise

    def __iter__(self) -> Iterator[R]:
        return self.iter_results()

    def results(self, desc: str | None = None) -> list[R]:
        """Every result, in plan order (waits for the plan to finish)."""
        return list(self.iter_results(desc))


def submit_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int | None = 1,
    threads_per_worker: int = 1,
) -> TaskBatch[R]:
    """Hand ``tasks`` to ``workers`` processes now; gather with :meth:`TaskBatch.results`.
    Plans submitted one after another share the warm pool and run in submission order."""
    return TaskBatch(fn, tasks, resolve_workers(workers), threads_per_worker)


def iter_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int | None = 1,
    desc: str | None = None,
    threads_per_worker: int = 1,
) -> Iterator[R]:
    """``(fn(t) for t in tasks)`` over ``workers`` processes: plan order, each result as soon as
    it and those before it are done."""
    return submit_tasks(fn, tasks, workers=workers, threads_per_worker=threads_per_worker).iter_results(desc)


def run_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int | None = 1,
    desc: str | None = None,
    threads_per_worker: int = 1,
) -> list[R]:
    """``[fn(t) for t in tasks]``, spread over ``workers`` processes, in plan order."""
    return submit_tasks(fn, tasks, workers=workers, threads_per_worker=threads_per_worker).results(desc)
