"""The one fan-out loop (distributed/tasks.py) the evaluation and the continual job share."""

from __future__ import annotations

import time

import pytest
import ray
import torch

from idc_ray.distributed.tasks import PutOnce, gather


@ray.remote(num_cpus=0.1)
def _work(i: int, x: torch.Tensor, delay: float, after=None) -> float:
    time.sleep(delay)  # ``after``: a result this task waits for (Ray resolves it before the call)
    if i < 0:
        raise ValueError(f"bad item {i}")
    return float(x.sum()) + i


@ray.remote(num_cpus=0.1)
def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


def test_results_come_back_in_submission_order_with_one_put_per_object(ray_cluster):
    put = PutOnce()
    x = torch.ones(3)
    refs = [put(x), put(x), put(torch.ones(3))]
    assert refs[0] is refs[1] and refs[2] is not refs[0]  # the same object once, an equal one again
    first = _work.remote(1, put(x), 0.0)  # finish in the order 1, 2, 0: each waits for the one before
    second = _work.remote(2, put(x), 0.0, first)
    pending = {_work.remote(0, put(x), 0.0, second): 0, first: 1, second: 2}
    seen = []
    out = gather(pending, failed=lambda i: f"item {i} failed", done=lambda i, r, n, s: seen.append((i, r, n)))
    assert out == [3.0, 4.0, 5.0]
    assert [i for i, _, _ in seen] == [1, 2, 0] and [n for _, _, n in seen] == [1, 2, 3]


def test_a_failing_task_is_one_line_naming_it_and_the_rest_are_cancelled(ray_cluster):
    slow = _sleep.remote(60)
    pending = {_work.remote(0, torch.ones(2), 0.0): 0, _work.remote(-7, torch.ones(2), 0.1): 1, slow: 2}
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"^item 1 failed: ValueError: bad item -7$"):
        gather(pending, failed=lambda i: f"item {i} failed")
    assert time.perf_counter() - started < 30  # it did not wait for the slow task
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(slow, timeout=30)
