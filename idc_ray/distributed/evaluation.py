"""Evaluation on Ray: every (set, model, repeat) is one task; :class:`RayExecutor` is the
executor ``idc_ray.evaluation.run`` is handed to run its work here instead of in its own process
(the in-process one is ``idc_ray.evaluation.executor.Sequential``).

Each task calls the same :func:`~idc_ray.evaluation.protocol.run_task` as the sequential loop,
with torch threads set to the CPUs Ray assigned, so its numbers equal a sequential run at that
thread count (bit for bit on the CPU; torch's parallel reductions add in thread-dependent
order). Training sets and test splits are ``ray.put`` once and passed by reference.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import ray
import torch
from ray.util import metrics
from ray.util.queue import Queue

from idc_ray.distributed.actors import actor_device, actor_runtime_env, use_assigned_cpus
from idc_ray.distributed.resources import task_bundle, task_options
from idc_ray.distributed.tasks import PutOnce, gather
from idc_ray.evaluation.protocol import EvalTask, RunRecord, Work, done_line, progress_line, run_task
from idc_ray.run.curve import INJECTED

ACCURACY_METRIC = "idc_eval_accuracy"  # exported as ray_idc_eval_accuracy{model, set}


class LiveGauge:
    """The ``idc_eval_accuracy`` gauge of one task, re-set every ``period`` seconds while it runs.

    Ray 2.60 exports a gauge point only in the report interval after it was set (it leaves the
    /metrics page about two intervals later), so an accuracy set every few minutes of training
    would almost never be scraped; re-setting the latest value keeps it visible until the task ends.
    """

    def __init__(self, model: str, set_label: str, period: float = 1.0):
        self.gauge = metrics.Gauge(ACCURACY_METRIC, "test accuracy of the model being evaluated, in [0, 1]",
                                   tag_keys=("model", "set"))
        self.gauge.set_default_tags({"model": model, "set": set_label})
        self.value: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, args=(period,), daemon=True)
        self._thread.start()

    def set(self, value: float) -> None:
        self.value = value
        self.gauge.set(value)

    def _refresh(self, period: float) -> None:
        while not self._stop.wait(period):
            if self.value is not None:
                self.gauge.set(self.value)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@ray.remote(runtime_env=actor_runtime_env(True))  # freed activations reused, as in the matcher actors
def evaluate_task(task: EvalTask, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                  test_y: torch.Tensor, crash_marker: str | None = None, val_x: torch.Tensor | None = None,
                  val_y: torch.Tensor | None = None, *, lines: Queue | None = None, fail: bool = False,
                  teacher: bytes | None = None) -> RunRecord:
    """Run one (model, repeat) on the GPU Ray assigned (else the CPU), reporting the current test
    accuracy as the ``idc_eval_accuracy`` gauge and, given ``lines``, putting a progress line per
    test evaluation there for the driver to print (:func:`progress_queue`). It gets tensors and
    touches no storage, so it takes no storage options (``actors.configure_worker``)."""
    use_assigned_cpus()  # before any torch work: results depend on the thread count
    if fail:  # testing aid (--inject-fault '{"eval": OUTER}'): an evaluation that raises
        raise RuntimeError(INJECTED)
    if crash_marker and not os.path.exists(crash_marker):  # testing aid: die once, like a lost node
        open(crash_marker, "w").close()
        os._exit(1)
    gauge = LiveGauge(task.model, task.set_label)

    def progress(epoch: int, acc: float) -> None:
        if lines is not None:
            lines.put(progress_line(task, epoch, acc))  # acknowledged before the task can return
        gauge.set(acc)

    try:
        record = run_task(task, train_x, train_y, test_x, test_y, device=actor_device(), progress=progress,
                          val=None if val_x is None else (val_x, val_y), teacher=teacher)
    finally:
        gauge.close()
    record.node = ray.get_runtime_context().get_node_id()[:12]
    return record


def run_parallel(work: Sequence[Work], *, num_cpus: float | None = None, num_gpus: float | None = None,
                 max_retries: int = 3, log: Callable[[str], None] = print,
                 crash_once: dict[int, str] | None = None) -> list[RunRecord]:
    """Run every item as a Ray task (on the cluster ``ray.init`` joined) and return the records
    in the order of ``work``.

    Args:
        num_cpus, num_gpus: per task; see :func:`~idc_ray.distributed.resources.task_bundle` for the defaults.
        max_retries: re-runs of a task whose worker died (node lost, OOM kill); an exception
            raised by the evaluation itself is not retried (it would fail the same way).
        crash_once: testing aid, {work index: marker path}: that task's first attempt kills its
            worker process, so the retry path runs.
    Raises:
        RuntimeError naming the task when one fails for good (the others are cancelled).
    """
    res = task_options(task_bundle(len(work), num_cpus, num_gpus))
    put = PutOnce()  # 1. each distinct tensor enters the object store once
    lines = progress_queue()
    pending = {}
    for i, w in enumerate(work):  # 2. submit everything, then gather
        t = w.task
        ref = evaluate_task.options(
            **res, max_retries=max_retries,
            name=f"eval {t.set_label} {t.model} repeat {t.repeat + 1}/{t.repeats}",
        ).remote(t, put(w.train_x), put(w.train_y), put(w.test_x), put(w.test_y), (crash_once or {}).get(i),
                 *((put(w.val_x), put(w.val_y)) if w.val_x is not None else ()), lines=lines,
                 teacher=None if w.teacher is None else put(w.teacher))
        pending[ref] = i
    log(f"[eval] {len(work)} tasks submitted ({res['num_cpus']:g} CPU, {res['num_gpus']:g} GPU each, "
        f"retried up to {max_retries} times on worker failure)")

    def failed(i: int) -> str:
        t = work[i].task
        return f"evaluation of {t.model} repeat {t.repeat + 1} on {t.set_label} failed"

    def print_progress() -> None:
        for line in drain(lines):
            log(line)

    def done(i: int, record: RunRecord, finished: int, seconds: float) -> None:  # 3. report each as it ends
        print_progress()  # the task's own lines first: it put them before it returned
        log(f"{done_line(record, work[i].task.repeats)}; {finished}/{len(work)} after {seconds:.0f}s")

    try:
        return gather(pending, failed=failed, done=done, poll=print_progress)
    finally:
        lines.shutdown(force=True)


def progress_queue() -> Queue:
    """The channel of the tasks' progress lines to the driver, which prints them to the job log.

    Not the worker's stderr: Ray forwards worker output asynchronously, so a task's last lines
    can arrive after its result, or never when the job exits first. A put on this queue is
    acknowledged before the task returns, so every line is printed, each task's before its
    result. The queue's actor takes no CPU, so it never waits behind the tasks it serves."""
    return Queue(actor_options={"num_cpus": 0})


def drain(queue: Queue) -> list:
    """Everything on ``queue`` now, without waiting."""
    size = queue.size()
    return queue.get_nowait_batch(size) if size else []


@dataclass(frozen=True)
class RayExecutor:
    """Runs evaluation work as Ray tasks on the session this process has open
    (``idc_ray.distributed.session.ray_session``); the Ray counterpart of
    ``idc_ray.evaluation.executor.Sequential``, with the same numbers."""

    num_cpus: float | None = None  # per task (default: an equal share, or 1 with GPUs)
    num_gpus: float | None = None  # per task (default: 1 when the cluster has GPUs)
    max_retries: int = 3  # re-runs of a task whose worker died
    log: Callable[[str], None] = field(default=print, compare=False)
    crash_once: dict[int, str] | None = None  # testing aid, see run_parallel
    backend: ClassVar[str] = "ray"

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {self.max_retries}")

    def __call__(self, work: Sequence[Work]) -> list[RunRecord]:
        return run_parallel(work, num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                            log=self.log, crash_once=self.crash_once)
