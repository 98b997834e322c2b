"""``jobs/condense.py --eval-every K``: the stored set evaluated while the condensation runs.

The schedule hands over the stored set at outer iteration 0 (the initialisation) and every K
outer iterations (``schedule.Snapshots``). Each snapshot becomes the evaluation protocol's
(model, repeat) tasks. Where they run, and why:

- On Ray they are CPU tasks (``num_gpus=0``), so they never wait on the matchers' GPUs. They ask
  for ``cpus`` (default 0.01) *outside* the job's placement group: reserving whole CPUs there
  would shrink the matchers' share and with it their torch thread count, and a different thread
  count adds floats in another order, i.e. other bytes. Each task runs with ONE torch thread and
  at most ``in_flight`` (default 1) run at a time, so the evaluation takes at most that many
  cores of the node: on a GPU cluster the matchers wait on their GPUs, not on those cores; on a
  CPU-only machine the slowdown is bounded by in_flight / (cores) (2 cores: +35% measured, README).
- On the local backend they run in this process between two outer iterations; their time is
  left out of the curve's wall time.

Every finished (iteration, model) is one point (``idc_ray.evaluation.curve``): a progress line,
the ``idc_eval_accuracy{model, iteration}`` gauge, ``eval_curve.json`` and ``curve.png`` in the
output (redrawn, atomically), and at the end ``metrics.eval_curve`` in the manifest. Points a
previous run of the same output recorded are kept (``--resume``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable

import ray
from ray.util import metrics

from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec, load_dataset
from idc_ray.distributed.evaluation import ACCURACY_METRIC, evaluate_task
from idc_ray.distributed.resources import bundle, task_options
from idc_ray.engine.loop import stack_stored
from idc_ray.evaluation.curve import curve_point, merge_points, read_points, write_curve
from idc_ray.evaluation.protocol import EvalTask, RunRecord, form_stored, plan_tasks, run_task


@dataclass(frozen=True)
class EvalEvery:
    """What ``--eval-every`` evaluates: every ``every`` outer iterations, these test models."""

    every: int
    models: tuple[str, ...]
    repeat: int | None = None
    epochs: int | None = None
    cpus: float = 0.01  # per Ray task, outside the job's placement group (module docstring)
    in_flight: int = 1  # Ray tasks running at once

    def check(self) -> None:
        if self.every < 1:
            raise ValueError(f"--eval-every must be at least 1 outer iteration, got {self.every}")
        if not self.models:
            raise ValueError("--eval-every needs test models: pass --eval-models, e.g. --eval-models convnet3")
        if self.cpus <= 0 or self.in_flight < 1:
            raise ValueError(f"evaluation tasks need cpus > 0 and in_flight >= 1, got {self.cpus:g}, {self.in_flight}")


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


class CurveWatcher:
    """Turns snapshots into evaluation tasks and finished tasks into curve points."""

    def __init__(self, cfg: IDCConfig, spec: DatasetSpec, output: str, options: EvalEvery, *, on_ray: bool,
                 device: str = "cpu", log: Callable[[str], None] | None = None):
        options.check()
        self.cfg, self.spec, self.output, self.options, self.on_ray = cfg, spec, output, options, on_ray
        self.device = device
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.points = read_points(output)  # a resumed job keeps the points it had
        data = load_dataset(cfg.data.dataset, cfg.data.data_uri, split="test")
        self.test = (data.test_x, data.test_y)
        self.test_refs = (ray.put(data.test_x), ray.put(data.test_y)) if on_ray else None
        self.gauge = CurveGauge() if on_ray else None
        for p in self.points:
            self._export(p)
        self.started = time.perf_counter()
        self.eval_seconds = 0.0  # local backend: time spent evaluating in this process
        self.queue: deque = deque()  # (iteration, seconds, task, train refs) not yet submitted
        self.running: dict = {}  # ref -> (iteration, seconds, task)
        self.records: dict[tuple[int, str], list[RunRecord]] = defaultdict(list)

    def take(self, outer: int, states: dict[int, dict]) -> None:
        """A snapshot (``schedule.Snapshots.take``): plan its tasks; run them (local) or queue them (Ray)."""
        seconds = time.perf_counter() - self.started - self.eval_seconds
        stored, labels = stack_stored({c: s["data"] for c, s in states.items()})
        x, y = form_stored(self.cfg, self.spec, stored, labels)
        tasks = plan_tasks(self.cfg, self.spec, f"iteration {outer}", models=self.options.models,
                           repeat=self.options.repeat, epochs=self.options.epochs)
        if not self.on_ray:
            tick = time.perf_counter()
            for task in tasks:
                self._record(outer, seconds, task, run_task(task, x, y, *self.test, device=self.device))
            self.eval_seconds += time.perf_counter() - tick
            return
        refs = (ray.put(x), ray.put(y))
        self.queue.extend((outer, seconds, task, refs) for task in tasks)
        self.poll()

    def poll(self) -> None:
        """Collect finished tasks and keep ``in_flight`` running; never blocks."""
        if not self.on_ray:
            return
        if self.running:
            done, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
            for ref in done:
                outer, seconds, task = self.running.pop(ref)
                self._record(outer, seconds, task, ray.get(ref))
        while self.queue and len(self.running) < self.options.in_flight:
            outer, seconds, task, (x_ref, y_ref) = self.queue.popleft()
            ref = evaluate_task.options(**task_options(bundle(self.options.cpus)),
                                        name=f"eval iteration {outer} {task.model} repeat {task.repeat + 1}").remote(
                task, x_ref, y_ref, *self.test_refs)
            self.running[ref] = (outer, seconds, task)

    def finish(self) -> list[dict]:
        """Wait for every queued evaluation; the curve's points."""
        while self.on_ray and (self.queue or self.running):
            self.poll()
            if self.running:
                ray.wait(list(self.running), num_returns=1)
        if self.gauge is not None:
            self.gauge.close()
        return self.points

    def _record(self, outer: int, seconds: float, task: EvalTask, record: RunRecord) -> None:
        runs = self.records[(outer, task.model)]
        runs.append(record)
        if len(runs) < task.repeats:
            return
        point = curve_point(task.model, outer, seconds, [r.last for r in sorted(runs, key=lambda r: r.repeat)])
        self.points = merge_points(self.points, [point])
        self._export(point)
        write_curve(self.output, self.points)
        init = next((p for p in self.points if p["model"] == task.model and p["iteration"] == 0), None)
        versus = f" (initialisation {100 * init['mean']:.2f}%)" if init and outer else ""
        self.log(f"[curve] outer {outer} {task.model}: {100 * point['mean']:.2f} ± {100 * point['std']:.2f}% "
                 f"over {len(runs)} repeats after {point['seconds']:.0f}s of condensation{versus}")

    def _export(self, point: dict) -> None:
        if self.gauge is not None:
            self.gauge.set(point["model"], point["iteration"], point["mean"])

