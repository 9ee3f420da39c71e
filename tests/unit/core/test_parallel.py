"""run_tasks, iter_tasks, submit_tasks: plan order and identical results for any number of workers."""

from __future__ import annotations

import os

import pytest

from trustlab.core.parallel import iter_tasks, resolve_workers, run_tasks, submit_tasks


def _seeded_draw(task):
    import numpy as np
    import torch

    from trustlab.core.seeding import seed_everything

    seed, size = task
    seed_everything(seed)
    return seed, float(torch.randn(size).sum()), float(np.random.rand()), os.getpid(), torch.get_num_threads()


def test_two_workers_give_the_serial_results_in_plan_order():
    plan = [(s, 50 + 10 * s) for s in (3, 0, 2, 1)]
    serial = run_tasks(_seeded_draw, plan, workers=1)
    parallel = run_tasks(_seeded_draw, plan, workers=2)
    assert [r[:3] for r in parallel] == [r[:3] for r in serial]
    assert [r[0] for r in parallel] == [3, 0, 2, 1]
    assert len({r[3] for r in parallel}) == 2 and os.getpid() not in {r[3] for r in parallel}
    assert {r[4] for r in parallel} == {1}, "each worker runs one torch thread"


def _boom(task):
    if task == 2:
        raise ValueError("task 2 failed")
    return task


def test_a_failing_task_fails_the_map():
    with pytest.raises(ValueError, match="task 2 failed"):
        run_tasks(_boom, [1, 2, 3], workers=2)


def test_resolve_workers():
    assert resolve_workers(0) == (os.cpu_count() or 1)
    assert resolve_workers(1) == 1
    with pytest.raises(ValueError, match="workers"):
        resolve_workers(-1)


def _pid(task):
    return os.getpid()


def test_the_pool_stays_warm_across_plans_and_is_replaced_when_the_code_changes(tmp_path, monkeypatch):
    from trustlab.core import parallel

    first = set(run_tasks(_pid, range(6), workers=2))
    second = set(run_tasks(_pid, range(6), workers=2))
    assert second <= first, "the second plan reuses the warm workers (a fast plan may not reach both)"

    # a package file edited in a live session: the next plan gets fresh workers
    real = parallel.code_fingerprint
    monkeypatch.setattr(parallel, "code_fingerprint", lambda extra=(): (*real(extra), ("edited", 1, 1)))
    third = set(run_tasks(_pid, range(6), workers=2))
    assert not third & second
    parallel.shutdown_pool()


def test_a_failed_plan_kills_its_workers_and_the_next_plan_starts_fresh():
    from trustlab.core import parallel

    before = set(run_tasks(_pid, range(4), workers=2))
    with pytest.raises(ValueError, match="task 2 failed"):
        run_tasks(_boom, [1, 2, 3], workers=2)
    assert parallel._POOL.executor is None
    after = set(run_tasks(_pid, range(4), workers=2))
    assert not before & after
    parallel.shutdown_pool()


def test_plans_submitted_together_give_the_serial_results():
    first_plan, second_plan = [(s, 40) for s in (5, 6, 7)], [(s, 30) for s in (1, 2)]
    serial = run_tasks(_seeded_draw, first_plan + second_plan, workers=1)
    first = submit_tasks(_seeded_draw, first_plan, workers=2)
    second = submit_tasks(_seeded_draw, second_plan, workers=2)  # queued behind the first
    assert len(first) == 3 and len(second) == 2
    got = second.results() + first.results()
    assert [r[:3] for r in got] == [r[:3] for r in serial[3:] + serial[:3]]
    assert first.results() == first.results(), "results are kept, not recomputed"


_CALLS: list[int] = []


def _record(task):
    _CALLS.append(task)
    return task * 10


def test_one_worker_runs_nothing_before_the_results_are_asked_for():
    _CALLS.clear()
    batch = submit_tasks(_record, [1, 2, 3], workers=1)
    assert _CALLS == []
    assert next(iter(batch)) == 10 and _CALLS == [1], "results are computed one at a time, in plan order"
    assert batch.results() == [10, 20, 30] and _CALLS == [1, 2, 3]


def _wait_for_flag(task):
    import time
    from pathlib import Path

    index, flag = task
    if index == 0:
        return "first"
    deadline = time.monotonic() + 60
    while not Path(flag).exists():
        if time.monotonic() > deadline:
            return "timed out"
        time.sleep(0.05)
    return "saw the flag"


def test_iter_tasks_hands_over_each_result_while_later_tasks_still_run(tmp_path):
    flag = tmp_path / "parent-saw-the-first-result"
    results = []
    # the second task finishes only after the parent has handled the first result: with the
    # results held back until the whole plan is done, it would wait out its deadline
    for r in iter_tasks(_wait_for_flag, [(0, str(flag)), (1, str(flag))], workers=2):
        results.append(r)
        flag.touch()
    assert results == ["first", "saw the flag"]


def test_leaving_iter_tasks_early_stops_the_workers():
    from trustlab.core import parallel

    gen = iter_tasks(_pid, range(50), workers=2)
    next(gen)
    gen.close()
    assert parallel._POOL.executor is None
    assert run_tasks(_record, [4, 5], workers=2) == [40, 50]
    parallel.shutdown_pool()


def _shared_sum(task):
    handle, i = task
    return float(handle.get().sum()) + i, os.getpid()


def test_a_shared_value_reaches_every_worker_once_through_a_file():
    import pickle

    import numpy as np

    from trustlab.core.parallel import SharedValue

    value = np.arange(10_000, dtype=np.float64)
    with SharedValue(value) as handle:
        assert handle.get() is value and handle.path is None, "in this process: the value itself, no file"
        serial = run_tasks(_shared_sum, [(handle, i) for i in range(6)], workers=1)
        parallel = run_tasks(_shared_sum, [(handle, i) for i in range(6)], workers=2)
        assert [r[0] for r in parallel] == [r[0] for r in serial] == [value.sum() + i for i in range(6)]
        assert handle.path is not None and os.path.exists(handle.path)
        assert len(pickle.dumps(handle)) < 1000, "a task carries the path, not the array"
        path = handle.path
    assert not os.path.exists(path), "closing removes the file"
