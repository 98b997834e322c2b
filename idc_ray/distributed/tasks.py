"""Fan-out of independent Ray tasks, gathered in order: the one submit / wait / cancel loop that
the evaluation (distributed/evaluation.py) and the continual job (distributed/continual.py) use.

A task whose worker dies is retried by Ray (``max_retries`` in the task's options); an exception
raised by the task itself fails the whole map with one line naming the task, and the tasks still
pending are cancelled, so a failed job leaves no work running on the cluster.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import ray

from idc_ray.errors import first_line


class PutOnce:
    """``ray.put`` each distinct object once (by identity), so a tensor shared by many tasks (a
    test split, a memory) enters the object store once and every task gets the same reference.
    The caller keeps the objects alive while submitting (``id`` is only unique among live objects)."""

    def __init__(self) -> None:
        self._refs: dict[int, ray.ObjectRef] = {}

    def __call__(self, value: Any) -> ray.ObjectRef:
        if id(value) not in self._refs:
            self._refs[id(value)] = ray.put(value)
        return self._refs[id(value)]


def gather(pending: Mapping[ray.ObjectRef, int], *, failed: Callable[[int], str],
           done: Callable[[int, Any, int, float], None] | None = None,
           poll: Callable[[], None] | None = None, poll_every_s: float = 1.0) -> list:
    """The results of the submitted tasks ``pending`` (reference -> index 0..n-1), in index order.

    Args:
        failed: the message prefix of task ``i``'s failure (``"evaluation of ... failed"``).
        done: called as each task finishes, with (index, result, tasks finished, seconds since start).
        poll: called every ``poll_every_s`` seconds while no task finishes (to print live progress).
    Raises:
        RuntimeError: ``"<failed(i)>: <first line of the error>"`` for the first task that fails
            for good; the tasks still pending are cancelled.
    """
    waiting = dict(pending)
    results: dict[int, Any] = {}
    started = time.perf_counter()
    try:
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=None if poll is None else poll_every_s)
            if not ready:  # only with a poll: without one the wait has no timeout
                if poll is not None:
                    poll()
                continue
            i = waiting.pop(ready[0])
            try:
                results[i] = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                raise RuntimeError(f"{failed(i)}: {first_line(e, typed=True)}") from None
            if done is not None:
                done(i, results[i], len(results), time.perf_counter() - started)
    finally:
        for ref in waiting:
            ray.cancel(ref, force=True)
    return [results[i] for i in range(len(pending))]


__all__ = ["PutOnce", "gather"]
