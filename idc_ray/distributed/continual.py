"""The continual-learning job's parallel work as Ray tasks: every (stage, exemplar method)
and every (method, model, repeat) learner is one task (the work itself is idc_ray.continual's).

A task takes one GPU when the cluster has GPUs, else one CPU, with torch threads set to the CPUs
Ray assigned. Tensors shared by several tasks (test images, memories) enter the object store once.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import ray

from idc_ray.distributed.actors import actor_device, use_assigned_cpus
from idc_ray.distributed.resources import plan_tasks, task_options
from idc_ray.errors import first_line


@ray.remote
def _call(fn: Callable, *args):
    use_assigned_cpus()
    return fn(*args, device=actor_device())


def ray_map(fn: Callable, items: Sequence[tuple], names: Sequence[str], *, max_retries: int = 2,
            log: Callable[[str], None] = print) -> list:
    """``[fn(*item, device=...) for item in items]`` as parallel Ray tasks, results in order.
    A task whose worker dies is retried ``max_retries`` times; an exception raised by ``fn``
    itself fails the job with one line naming the task (the others are cancelled)."""
    res = task_options(plan_tasks(len(items), num_cpus=1))  # one CPU, one GPU each where there are GPUs
    refs: dict[int, ray.ObjectRef] = {}

    def put(value):
        if not hasattr(value, "__len__") or isinstance(value, (str, bytes)):
            return value
        if id(value) not in refs:
            refs[id(value)] = ray.put(value)
        return refs[id(value)]

    pending = {}
    for i, (item, name) in enumerate(zip(items, names)):
        task = _call.options(**res, max_retries=max_retries, name=name)
        pending[task.remote(fn, *(put(a) for a in item))] = i
    log(f"[continual] {len(pending)} Ray tasks submitted ({res['num_gpus']:g} GPU, {res['num_cpus']:g} CPU each)")
    results, started = {}, time.perf_counter()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except ray.exceptions.RayError as e:
                raise RuntimeError(f"{names[i]} failed: {first_line(e, typed=True)}") from None
            log(f"[continual] done {names[i]} ({len(results)}/{len(items)} after {time.perf_counter() - started:.0f}s)")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return [results[i] for i in range(len(items))]


def ray_mapper(log: Callable[[str], None] = print) -> Callable:
    """The job's ``mapper`` on the cluster ``ray.init`` joined."""
    return lambda fn, items, names: ray_map(fn, items, names, log=log)

