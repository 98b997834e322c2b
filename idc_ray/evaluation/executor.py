"""The in-process executor of evaluation work: every (set, model, repeat) in this process, one
after another (:class:`Sequential`), the reference for the Ray executor (one task each,
``idc_ray.distributed.evaluation.RayExecutor``). :class:`Executor` is what both provide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Sequence

from idc_ray.device import resolve_device
from idc_ray.evaluation.protocol import Log, RunRecord, Work, done_line, log_stderr, progress_line, run_task


class Executor(Protocol):
    """Runs protocol work and returns one record per item, in order; ``backend`` names where
    (recorded in results.json)."""

    backend: str

    def __call__(self, work: Sequence[Work]) -> list[RunRecord]: ...


def run_sequential(work: Sequence[Work], *, device: str = "auto", log: Log = log_stderr) -> list[RunRecord]:
    """Every task in this process, one after another (the reference for the Ray executor)."""
    dev = resolve_device(device)
    records = []
    for w in work:
        r = run_task(w.task, w.train_x, w.train_y, w.test_x, w.test_y, device=dev,
                     progress=lambda e, a, t=w.task: log(progress_line(t, e, a)),
                     val=None if w.val_x is None else (w.val_x, w.val_y), teacher=w.teacher)
        log(done_line(r, w.task.repeats))
        records.append(r)
    return records


@dataclass(frozen=True)
class Sequential:
    """The executor of :func:`run_sequential` on ``device`` (auto, cpu, cuda[:N])."""

    device: str = "auto"
    log: Log = field(default=log_stderr, compare=False)
    backend: ClassVar[str] = "local"

    def __call__(self, work: Sequence[Work]) -> list[RunRecord]:
        return run_sequential(work, device=self.device, log=self.log)


__all__ = ["Executor", "Sequential", "run_sequential"]
