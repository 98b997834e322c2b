"""The condensation schedule over a group of matchers and one expert, with checkpoints,
resume and recovery from lost actors; no Ray here (the backends: local.py, ray_group.py).

One inner step: every matcher updates its classes against the expert state w(outer, inner).
The expert's trajectory never depends on the synthetic set (architecture guide), so the expert
may compute states ahead of the matchers, and any sharding of classes gives the same bytes
because every draw is keyed by (seed, class, outer, inner). A failed step rolls every shard back
to the last checkpoint (held in memory) and replays: the replay is deterministic, so the job
still ends with the bytes of an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

from idc_ray.config import IDCConfig
from idc_ray.data.store import balanced_blocks
from idc_ray.checkpoint import Checkpoint, CheckpointStore
from idc_ray.errors import first_line
from idc_ray.engine.loop import Progress

log = logging.getLogger("idc_ray")


class JobError(RuntimeError):
    """The job cannot go on; the message says why and what is left in place."""


@dataclass(frozen=True)
class Snapshots:
    """``jobs/condense.py --eval-every K``: the stored set handed to ``take(outer, states)`` at
    outer iteration 0 (the initialisation), every ``every`` outer iterations and the last
    (issue 13). ``take`` receives copies; it must not block the schedule for long (the job's
    evaluator only submits work)."""

    every: int
    take: Callable[[int, dict[int, dict]], None]

    def due(self, outer: int, last: int) -> bool:
        return outer == 0 or outer % self.every == 0 or outer == last


@dataclass(frozen=True)
class RunOptions:
    backend: str = "ray"  # ray | local
    num_actors: int | None = None  # None: the cluster's GPU count, else 2
    # None for both: one GPU per matcher and one for the expert when a whole GPU is left; else the
    # expert shares a GPU with a matcher (ray_group.plan_layout); 0 on a CPU cluster.
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None  # None: an equal share of the cluster's CPUs
    expert_gpus: float | None = None
    checkpoint_every: int = 10
    resume: bool = False
    max_restarts: int = 3
    lookahead: int = 4  # expert states computed ahead of the matchers
    window: int = 2  # inner steps in flight before the driver waits for results
    spread: bool = False  # placement strategy SPREAD instead of PACK
    keep_freed_memory: bool = True  # actors keep freed memory for reuse (actors.ALLOCATOR_ENV)
    faults: tuple[dict, ...] = ()  # testing aid: {"actor": i, "outer": o, "inner": n} raises once


class Group(Protocol):
    """What the schedule needs from a backend."""

    def submit(self, outer: int, inner: int) -> object: ...
    def collect(self, handle: object) -> tuple[dict[int, float], dict[str, float]]: ...
    def states(self) -> dict[int, dict]: ...
    def close(self) -> None: ...


def shard_classes(num_classes: int, num_shards: int) -> list[list[int]]:
    """Contiguous, balanced class shards: 10 classes over 3 shards -> 0-3, 4-6, 7-9."""
    if num_shards < 1:
        raise ValueError(f"--num-actors must be at least 1, got {num_shards}")
    if num_shards > num_classes:
        raise ValueError(f"--num-actors {num_shards} is more than the {num_classes} classes; use at most {num_classes}")
    return balanced_blocks(num_classes, num_shards)


def run_schedule(cfg: IDCConfig, make_group: Callable[[Checkpoint | None, int], Group], *,
                 ckpts: CheckpointStore | None, start: Checkpoint | None, options: RunOptions,
                 on_progress: Callable[[Progress], None] | None = None,
                 is_failure: Callable[[BaseException], bool] = lambda e: False,
                 snapshots: Snapshots | None = None) -> tuple[dict, list[float], int]:
    """Drive the outer/inner loop over a group; returns (class states, loss history, restarts).
    ``snapshots``: the stored set at iteration 0 and every K-th (a resumed or replayed run hands
    over an iteration again only when it passes it again)."""
    sched = cfg.schedule
    ckpt, restarts = start, 0
    while True:
        first = ckpt.outer if ckpt else 0
        history = list(ckpt.loss_history) if ckpt else []
        group = make_group(ckpt, first)
        try:
            if snapshots is not None and first == 0:
                snapshots.take(0, group.states())
            for outer in range(first, sched.outer_iters):
                history.append(_run_outer(group, outer, sched.inner_iters, options.window, on_progress))
                done = outer + 1
                if done % options.checkpoint_every == 0 or done == sched.outer_iters:
                    ckpt = Checkpoint(done, group.states(), cfg.to_dict(), list(history))
                    if ckpts is not None:
                        where = ckpts.save(ckpt)
                        log.info("checkpoint after outer iteration %d written to %s", done, where)
                if snapshots is not None and snapshots.due(done, sched.outer_iters):
                    snapshots.take(done, ckpt.classes if ckpt is not None and ckpt.outer == done else group.states())
            states = ckpt.classes if ckpt is not None and ckpt.outer == sched.outer_iters else group.states()
            group.close()
            return states, history, restarts
        except Exception as e:  # noqa: BLE001 - only Ray failures are recovered, see is_failure
            group.close()
            if not is_failure(e):
                raise
            restarts += 1
            back_to = ckpt.outer if ckpt else 0
            where = "the last checkpoint" if ckpt else "the initialisation"
            if restarts > options.max_restarts:
                kept = f"; the last good checkpoint (outer {ckpt.outer}) is kept" if ckpt else ""
                raise JobError(f"actors failed {restarts} times, more than --max-restarts {options.max_restarts}: "
                               f"{first_line(e, typed=True)}{kept}") from None
            log.warning("actor failure: %s; restarting the actors from %s (outer %d), restart %d of at most %d",
                        first_line(e, typed=True), where, back_to, restarts, options.max_restarts)


def _run_outer(group: Group, outer: int, inner_iters: int, window: int,
               on_progress: Callable[[Progress], None] | None) -> float:
    """Submit the outer iteration's inner steps with at most ``window`` in flight; mean loss."""
    pending: deque = deque()
    losses: list[float] = []

    def drain_one() -> None:
        inner, submitted, handle = pending.popleft()
        step, shards = group.collect(handle)
        losses.extend(step.values())
        if on_progress:
            elapsed = max(time.perf_counter() - submitted, 1e-9)
            on_progress(Progress(outer, inner, step, len(step) / elapsed, shards))

    for inner in range(inner_iters):
        pending.append((inner, time.perf_counter(), group.submit(outer, inner)))
        if len(pending) >= window:
            drain_one()
    while pending:
        drain_one()
    return sum(losses) / len(losses)


def check_resume(cfg: IDCConfig, ckpt: Checkpoint) -> None:
    """A checkpoint continues only the run it came from (outer_iters may grow)."""
    theirs = dict(ckpt.config)
    mine = cfg.to_dict()
    theirs_sched = dict(theirs.get("schedule", {}))
    theirs_sched.pop("outer_iters", None)
    mine_sched = dict(mine["schedule"])
    mine_sched.pop("outer_iters", None)
    if {**theirs, "schedule": theirs_sched} != {**mine, "schedule": mine_sched}:
        raise ValueError("--resume: the checkpoint in the output folder was written with another config; "
                         "use the same --preset/--config/--set, or another --output")
    if ckpt.outer > cfg.schedule.outer_iters:
        raise ValueError(f"--resume: the checkpoint is at outer {ckpt.outer}, beyond --outer-iters {cfg.schedule.outer_iters}")
