"""run_tasks: plan order and identical results for any number of workers."""

from __future__ import annotations

import os

import pytest

from trustlab.core.parallel import resolve_workers, run_tasks


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
