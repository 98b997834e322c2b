"""What happens around Algorithm 1 (``run/schedule.py``) without being part of it: the mean
matching loss of each outer iteration, the progress callback, checkpoints every K outer
iterations (kept in memory for a restart and written to the store), and the ``--eval-every``
snapshots of the stored set."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from idc_ray.checkpoint import Checkpoint, CheckpointStore
from idc_ray.config import IDCConfig
from idc_ray.run.schedule import Matchers, Progress

log = logging.getLogger("idc_ray")


@dataclass(frozen=True)
class Snapshots:
    """``jobs/condense.py --eval-every K``: the stored set handed to ``take(outer, states, shared)``
    at outer iteration 0 (the initialisation), every ``every`` outer iterations and the last
    (issue 13); ``shared`` is a learned formation's upsampler then (``Matchers.shared``), else
    None. ``take`` receives copies; it must not block the schedule for long (the job's evaluator
    only submits work)."""

    every: int
    take: Callable[[int, dict[int, dict], dict | None], None]

    def due(self, outer: int, last: int) -> bool:
        return outer == 0 or outer % self.every == 0 or outer == last


class RunHooks:
    """The schedule's hooks for one job. ``start``: the checkpoint a resumed job continues from.
    After a failed attempt, :meth:`rewind` goes back to the last checkpoint, and the replay hands
    over a snapshot only when it passes that iteration again."""

    def __init__(self, cfg: IDCConfig, *, store: CheckpointStore | None = None, every: int = 10,
                 start: Checkpoint | None = None, on_progress: Callable[[Progress], None] | None = None,
                 snapshots: Snapshots | None = None):
        self.cfg, self.store, self.every = cfg, store, every
        self.on_progress, self.snapshots = on_progress, snapshots
        self.checkpoint = start
        self.rewind()

    @property
    def first_outer(self) -> int:
        return self.checkpoint.outer if self.checkpoint else 0

    def rewind(self) -> None:
        self.history = list(self.checkpoint.loss_history) if self.checkpoint else []
        self.losses: list[float] = []

    def begin(self, matchers: Matchers) -> None:
        if self.snapshots is not None and self.first_outer == 0:
            self.snapshots.take(0, matchers.states(), matchers.shared())

    def after_inner(self, progress: Progress) -> None:
        self.losses.extend(progress.losses.values())
        if self.on_progress is not None:
            self.on_progress(progress)

    def after_outer(self, done: int, matchers: Matchers) -> None:
        self.history.append(sum(self.losses) / len(self.losses))
        self.losses = []
        last = self.cfg.schedule.outer_iters
        if done % self.every == 0 or done == last:
            self.checkpoint = Checkpoint(done, matchers.states(), self.cfg.to_dict(), list(self.history),
                                         matchers.shared())
            if self.store is not None:
                log.info("checkpoint after outer iteration %d written to %s", done, self.store.save(self.checkpoint))
        if self.snapshots is not None and self.snapshots.due(done, last):
            if self.checkpoint is not None and self.checkpoint.outer == done:
                self.snapshots.take(done, self.checkpoint.classes, self.checkpoint.upsampler)
            else:
                self.snapshots.take(done, matchers.states(), matchers.shared())

    def final_states(self, matchers: Matchers) -> tuple[dict[int, dict], dict | None]:
        """The stored set and the shared state (a learned formation's upsampler) at the end: the
        last checkpoint's (taken at the last outer iteration)."""
        done = self.checkpoint is not None and self.checkpoint.outer == self.cfg.schedule.outer_iters
        if done:
            return self.checkpoint.classes, self.checkpoint.upsampler
        return matchers.states(), matchers.shared()
