"""``jobs/condense.py --eval-every K``: the stored set evaluated while the condensation runs.

The schedule's hooks hand over the stored set at outer iteration 0 (the initialisation) and every
K outer iterations (``run.hooks.Snapshots``). Each snapshot becomes the evaluation protocol's
(model, repeat) tasks, which the backend's *curve runner* runs: in this process between two outer
iterations (their time left out of the curve's wall time), or as Ray tasks beside the matchers
(``idc_ray.distributed.watch``, where its docstring says why they are 1-thread CPU tasks outside
the job's placement group).

Every finished (iteration, model) is one point (``idc_ray.evaluation.curve``): a progress line,
the backend's export (the ``idc_eval_accuracy{model, iteration}`` gauge on Ray),
``eval_curve.json`` and ``curve.png`` in the output (redrawn, atomically), and at the end
``metrics.eval_curve`` in the manifest. Points a previous run of the same output recorded are
kept (``--resume``).

An evaluation that fails (its task raises, or its worker is lost for good) never stops or
restarts the condensation: the runners hand it back as :class:`EvalFailed`, the point is recorded
as failed (``failed``: the first line of the error) with one warning line naming the model and
the iteration, and the job goes on (``--strict-eval``: it exits 1 at the end instead of 0).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec, load_dataset
from idc_ray.engine.matcher import stack_stored
from idc_ray.engine.plan import build_plan
from idc_ray.engine.upsampler import upsampler_from_weights
from idc_ray.errors import JobError, first_line
from idc_ray.evaluation.curve import curve_point, failed_point, merge_points, read_points, write_curve
from idc_ray.evaluation.protocol import EvalTask, RunRecord, form_stored, plan_tasks, run_task

Key = tuple[int, float]  # (outer iteration, seconds of condensation when it was taken)


@dataclass(frozen=True)
class EvalFailed:
    """An evaluation task that failed for good, in place of its record."""

    error: str  # the first line of what it raised


Finished = list[tuple[Key, EvalTask, "RunRecord | EvalFailed"]]


class EvaluationsFailed(JobError):
    """``--strict-eval`` and some evaluation during the condensation failed; raised after the
    artifact and its manifest (with the failed points) are written, at ``path``."""

    def __init__(self, path: str, failed: list[dict]):
        where = ", ".join(f"{p['model']} at outer {p['iteration']}" for p in failed)
        super().__init__(f"{len(failed)} evaluation(s) during the condensation failed ({where}); the condensed "
                         f"set is written to {path} (--strict-eval)")
        self.path, self.failed = path, failed
INJECTED = "injected evaluation failure (--inject-fault eval, a testing aid)"


@dataclass(frozen=True)
class EvalEvery:
    """What ``--eval-every`` evaluates: every ``every`` outer iterations, these test models."""

    every: int
    models: tuple[str, ...]
    repeat: int | None = None
    epochs: int | None = None
    cpus: float = 0.01  # per Ray task, outside the job's placement group (distributed/watch.py)
    in_flight: int = 1  # Ray tasks running at once
    strict: bool = False  # --strict-eval: a failed evaluation makes the job exit 1 at its end
    fail_at: tuple[int, ...] = ()  # testing aid: the evaluations of these outer iterations raise

    def check(self) -> None:
        if self.every < 1:
            raise ValueError(f"--eval-every must be at least 1 outer iteration, got {self.every}")
        if not self.models:
            raise ValueError("--eval-every needs test models: pass --eval-models, e.g. --eval-models convnet3")
        if self.cpus <= 0 or self.in_flight < 1:
            raise ValueError(f"evaluation tasks need cpus > 0 and in_flight >= 1, got {self.cpus:g}, {self.in_flight}")


class CurveRunner(Protocol):
    """Where a snapshot's evaluation tasks run: a backend's."""

    busy_seconds: float  # time this process spent evaluating, left out of the curve's wall time

    def submit(self, key: Key, tasks: list[EvalTask], x: torch.Tensor, y: torch.Tensor) -> None: ...
    def ready(self) -> Finished: ...  # tasks finished since the last call; never blocks
    def drain(self) -> Finished: ...  # waits for every submitted task
    def export(self, point: dict) -> None: ...
    def close(self) -> None: ...


class LocalCurveRunner:
    """The tasks in this process, right when a snapshot is taken."""

    def __init__(self, test: tuple[torch.Tensor, torch.Tensor], options: EvalEvery, device: str = "cpu"):
        self.test, self.options, self.device = test, options, device
        self.busy_seconds = 0.0
        self.done: Finished = []

    def submit(self, key: Key, tasks: list[EvalTask], x: torch.Tensor, y: torch.Tensor) -> None:
        tick = time.perf_counter()
        self.done += [(key, task, self._run(task, x, y, key[0] in self.options.fail_at)) for task in tasks]
        self.busy_seconds += time.perf_counter() - tick

    def _run(self, task: EvalTask, x: torch.Tensor, y: torch.Tensor, fail: bool) -> RunRecord | EvalFailed:
        try:
            if fail:
                raise RuntimeError(INJECTED)
            return run_task(task, x, y, *self.test, device=self.device)
        except Exception as e:  # noqa: BLE001 - any failure of an evaluation is recorded, never fatal
            return EvalFailed(first_line(e, typed=True))

    def ready(self) -> Finished:
        done, self.done = self.done, []
        return done

    drain = ready

    def export(self, point: dict) -> None:
        pass

    def close(self) -> None:
        pass


RunnerFactory = Callable[[tuple[torch.Tensor, torch.Tensor], EvalEvery], CurveRunner]


class CurveWatcher:
    """Turns snapshots into evaluation tasks and finished tasks into curve points."""

    def __init__(self, cfg: IDCConfig, spec: DatasetSpec, output: str, options: EvalEvery,
                 make_runner: RunnerFactory, log: Callable[[str], None]):
        options.check()
        self.cfg, self.spec, self.output, self.options, self.log = cfg, spec, output, options, log
        self.upsampler_spec = build_plan(cfg, spec).match.upsampler  # a learned formation's sizes, else None
        self.points = read_points(output)  # a resumed job keeps the points it had
        data = load_dataset(cfg.data.dataset, cfg.data.data_uri, split="test")
        self.runner = make_runner((data.test_x, data.test_y), options)
        for p in self.points:
            self.runner.export(p)
        self.started = time.perf_counter()
        self.records: dict[tuple[int, str], list[RunRecord]] = defaultdict(list)
        self.failed: list[dict] = []  # this run's failed points

    def take(self, outer: int, states: dict[int, dict], shared: dict | None = None) -> None:
        """A snapshot (``Snapshots.take``): its tasks go to the runner. A learned formation's
        snapshot is formed with the upsampler as it was at that iteration (``shared``)."""
        seconds = time.perf_counter() - self.started - self.runner.busy_seconds
        stored, labels = stack_stored({c: s["data"] for c, s in states.items()})
        upsampler = None if shared is None else upsampler_from_weights(self.upsampler_spec, shared["net"])
        x, y = form_stored(self.cfg, self.spec, stored, labels, upsampler)
        tasks = plan_tasks(self.cfg, self.spec, f"iteration {outer}", models=self.options.models,
                           repeat=self.options.repeat, epochs=self.options.epochs)
        self.runner.submit((outer, seconds), tasks, x, y)
        self.poll()

    def poll(self) -> None:
        """Record what finished; never blocks."""
        self._record_all(self.runner.ready())

    def finish(self) -> list[dict]:
        """Wait for every evaluation; the curve's points."""
        self._record_all(self.runner.drain())
        self.runner.close()
        return self.points

    def _record_all(self, finished: Finished) -> None:
        for (outer, seconds), task, record in finished:
            self._record(outer, seconds, task, record)

    def _record(self, outer: int, seconds: float, task: EvalTask, record: RunRecord | EvalFailed) -> None:
        if any(p["model"] == task.model and p["iteration"] == outer for p in self.failed):
            return  # the point failed already: one warning for it, not one per repeat
        if isinstance(record, EvalFailed):
            self._failed(failed_point(task.model, outer, seconds, record.error))
            return
        runs = self.records[(outer, task.model)]
        runs.append(record)
        if len(runs) < task.repeats:
            return
        point = curve_point(task.model, outer, seconds, [r.last for r in sorted(runs, key=lambda r: r.repeat)])
        self.points = merge_points(self.points, [point])
        self.runner.export(point)
        write_curve(self.output, self.points)
        init = next((p for p in self.points if p["model"] == task.model and p["iteration"] == 0 and "mean" in p), None)
        versus = f" (initialisation {100 * init['mean']:.2f}%)" if init and outer else ""
        self.log(f"[curve] outer {outer} {task.model}: {100 * point['mean']:.2f} ± {100 * point['std']:.2f}% "
                 f"over {len(runs)} repeats after {point['seconds']:.0f}s of condensation{versus}")

    def _failed(self, point: dict) -> None:
        self.failed.append(point)
        self.points = merge_points(self.points, [point])
        write_curve(self.output, self.points)
        self.log(f"[curve] warning: the evaluation of {point['model']} at outer iteration {point['iteration']} "
                 f"failed ({point['failed']}); recorded as failed, the condensation goes on")
