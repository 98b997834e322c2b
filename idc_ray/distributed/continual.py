"""The continual-learning job's parallel work as Ray tasks: every (stage, exemplar method)
and every (method, model, repeat) learner is one task (the work itself is idc_ray.continual's).

A task takes one GPU when the cluster has GPUs, else one CPU, with torch threads set to the CPUs
Ray assigned. Tensors shared by several tasks (test images, memories) enter the object store once.
"""

from __future__ import annotations

from typing import Callable, Sequence

import ray

from idc_ray import storage
from idc_ray.distributed.actors import actor_device, configure_worker, use_assigned_cpus
from idc_ray.distributed.resources import task_bundle, task_options
from idc_ray.distributed.tasks import PutOnce, gather


@ray.remote
def _call(storage_options: dict | None, fn: Callable, *args):
    configure_worker(storage_options)  # the exemplar tasks read and write the stages' data
    use_assigned_cpus()
    return fn(*args, device=actor_device())


def ray_map(fn: Callable, items: Sequence[tuple], names: Sequence[str], *, max_retries: int = 2,
            log: Callable[[str], None] = print) -> list:
    """``[fn(*item, device=...) for item in items]`` as parallel Ray tasks, results in order.
    A task whose worker dies is retried ``max_retries`` times; an exception raised by ``fn``
    itself fails the job with one line naming the task (the others are cancelled)."""
    res = task_options(task_bundle(len(items), num_cpus=1))  # one CPU, one GPU each where there are GPUs
    put_once = PutOnce()

    def put(value):  # arrays and containers enter the object store once; scalars and names go inline
        return put_once(value) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else value

    pending, worker_storage = {}, storage.current()
    for i, (item, name) in enumerate(zip(items, names)):
        task = _call.options(**res, max_retries=max_retries, name=name)
        pending[task.remote(worker_storage, fn, *(put(a) for a in item))] = i
    log(f"[continual] {len(pending)} Ray tasks submitted ({res['num_gpus']:g} GPU, {res['num_cpus']:g} CPU each)")

    def done(i: int, _result, finished: int, seconds: float) -> None:
        log(f"[continual] done {names[i]} ({finished}/{len(items)} after {seconds:.0f}s)")

    return gather(pending, failed=lambda i: f"{names[i]} failed", done=done)

