"""The ``--eval-every`` curve's tasks on Ray (the curve itself: ``idc_ray.run.curve``).

They are CPU tasks (``num_gpus=0``), so they never wait on the matchers' GPUs. They ask for
``cpus`` (default 0.01) *outside* the job's placement group: reserving whole CPUs there would
shrink the matchers' share and with it their torch thread count, and a different thread count
adds floats in another order, i.e. other bytes. Each task runs with ONE torch thread and at most
``in_flight`` (default 1) run at a time, so the evaluation takes at most that many cores of the
node: on a GPU cluster the matchers wait on their GPUs, not on those cores; on a CPU-only machine
the slowdown is bounded by in_flight / (cores) (2 cores: +35% measured, docs/watching.md). Every point is
also the ``idc_eval_accuracy{model, iteration}`` gauge.
"""

from __future__ import annotations

import threading
from collections import deque

import ray
import torch
from ray.util import metrics

from idc_ray.distributed.evaluation import ACCURACY_METRIC, evaluate_task
from idc_ray.distributed.resources import bundle, task_options
from idc_ray.evaluation.protocol import EvalTask
from idc_ray.errors import first_line
from idc_ray.run.curve import EvalEvery, EvalFailed, Finished, Key


class CurveGauge:
    """``idc_eval_accuracy{model, iteration}`` of every point, re-set every ``period`` seconds:
    Ray 2.60 exports a gauge point only in the report interval after it was set."""

    def __init__(self, period: float = 1.0):
        self.gauge = metrics.Gauge(ACCURACY_METRIC, "test accuracy of the stored set at an outer iteration, in [0, 1]",
                                   tag_keys=("model", "iteration"))
        self.values: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, args=(period,), daemon=True)
        self._thread.start()

    def set(self, model: str, iteration: int, value: float) -> None:
        self.values[(model, iteration)] = value
        self.gauge.set(value, tags={"model": model, "iteration": str(iteration)})

    def _refresh(self, period: float) -> None:
        while not self._stop.wait(period):
            for (model, iteration), value in list(self.values.items()):
                self.gauge.set(value, tags={"model": model, "iteration": str(iteration)})

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class RayCurveRunner:
    """A snapshot's tasks queued, at most ``in_flight`` running; never blocks the schedule."""

    busy_seconds = 0.0  # the driver evaluates nothing itself

    def __init__(self, test: tuple[torch.Tensor, torch.Tensor], options: EvalEvery):
        self.options = options
        self.test_refs = (ray.put(test[0]), ray.put(test[1]))
        self.gauge = CurveGauge()
        self.queue: deque = deque()  # (key, task, train refs) not yet submitted
        self.running: dict = {}  # ref -> (key, task)

    def submit(self, key: Key, tasks: list[EvalTask], x: torch.Tensor, y: torch.Tensor) -> None:
        refs = (ray.put(x), ray.put(y))
        self.queue.extend((key, task, refs) for task in tasks)

    def ready(self) -> Finished:
        finished: Finished = []
        if self.running:
            done, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
            for ref in done:
                key, task = self.running.pop(ref)
                try:
                    finished.append((key, task, ray.get(ref)))
                except ray.exceptions.RayError as e:  # the task raised, or its worker is lost for good
                    finished.append((key, task, EvalFailed(first_line(e, typed=True))))
        while self.queue and len(self.running) < self.options.in_flight:
            key, task, (x_ref, y_ref) = self.queue.popleft()
            ref = evaluate_task.options(**task_options(bundle(self.options.cpus)),
                                        name=f"eval iteration {key[0]} {task.model} repeat {task.repeat + 1}").remote(
                task, x_ref, y_ref, *self.test_refs, fail=key[0] in self.options.fail_at)
            self.running[ref] = (key, task)
        return finished

    def drain(self) -> Finished:
        finished = self.ready()
        while self.queue or self.running:
            if self.running:
                ray.wait(list(self.running), num_returns=1)
            finished += self.ready()
        return finished

    def export(self, point: dict) -> None:
        self.gauge.set(point["model"], point["iteration"], point["mean"])

    def close(self) -> None:
        self.gauge.close()
