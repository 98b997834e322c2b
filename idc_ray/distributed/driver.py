"""The condensation schedule over a group of matchers and one expert, with checkpoints,
resume and recovery from lost actors.

One inner step: every matcher updates its classes against the expert state w(outer, inner).
The expert's trajectory never depends on the synthetic set (architecture guide), so the expert
may compute states ahead of the matchers, and any sharding of classes gives the same bytes
because every draw is keyed by (seed, class, outer, inner). A failed step rolls every shard back
to the last checkpoint (held in memory) and replays: the replay is deterministic, so the job
still ends with the bytes of an uninterrupted run.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from idc_ray.config import IDCConfig, resolve
from idc_ray.data import ClassStore, DatasetSpec, get_spec, load_dataset
from idc_ray.distributed.checkpoint import Checkpoint, CheckpointStore
from idc_ray.engine.expert import expert_trajectory
from idc_ray.engine.loop import Matcher, Progress, build_specs, initial_synset, stack_stored

log = logging.getLogger("idc_ray")


class JobError(RuntimeError):
    """The job cannot go on; the message says why and what is left in place."""


@dataclass(frozen=True)
class RunOptions:
    backend: str = "ray"  # ray | local
    num_actors: int | None = None  # None: the cluster's GPU count, else 2
    # None for both: one GPU per matcher and one for the expert when a whole GPU is left; else the
    # expert shares a GPU with a matcher (resources.plan_layout); 0 on a CPU cluster.
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


@dataclass
class JobResult:
    spec: DatasetSpec
    stored: torch.Tensor
    labels: torch.Tensor
    loss_history: list[float]
    seconds: float
    restarts: int = 0
    placement: list[dict] = field(default_factory=list)


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
    base, extra = divmod(num_classes, num_shards)
    shards, start = [], 0
    for i in range(num_shards):
        size = base + (1 if i < extra else 0)
        shards.append(list(range(start, start + size)))
        start += size
    return shards


def dataset_spec(cfg: IDCConfig, storage_options: dict | None = None) -> DatasetSpec:
    """The spec every process must share. Datasets whose statistics are measured at load
    (speech) are loaded once here, so all matchers normalise with the same numbers."""
    spec = get_spec(cfg.data.dataset, cfg.data.data_uri, storage_options)
    if spec.measure_stats:
        spec = load_dataset(cfg.data.dataset, cfg.data.data_uri, storage_options=storage_options).spec
    return spec


class LocalGroup:
    """The in-process reference: one matcher for every class and the live expert."""

    def __init__(self, cfg: IDCConfig, ckpt: Checkpoint | None, start_outer: int, device="cpu",
                 storage_options: dict | None = None):
        data = load_dataset(cfg.data.dataset, cfg.data.data_uri, storage_options=storage_options)
        match, expert, _ = build_specs(cfg, data.spec)
        store = ClassStore(data.train_x, data.train_y)
        self.matcher = Matcher(match, store, initial_synset(cfg, store, store.classes), device)
        if ckpt is not None:
            self.matcher.load_state_dict(ckpt.classes)
        sched = cfg.schedule
        self.trajectory = expert_trajectory(expert, store, sched.inner_iters, start_outer, sched.outer_iters, device)

    def submit(self, outer: int, inner: int) -> dict[int, float]:
        o, i, model = next(self.trajectory)
        assert (o, i) == (outer, inner), "expert trajectory out of step"
        if inner == 0:
            self.matcher.begin_outer()
        return self.matcher.step(model, outer, inner)

    def collect(self, handle: dict[int, float]) -> tuple[dict[int, float], dict[str, float]]:
        return handle, {}

    def states(self) -> dict[int, dict]:
        return self.matcher.state_dict()

    def close(self) -> None:
        pass


def run_schedule(cfg: IDCConfig, make_group: Callable[[Checkpoint | None, int], Group], *,
                 ckpts: CheckpointStore | None, start: Checkpoint | None, options: RunOptions,
                 on_progress: Callable[[Progress], None] | None = None,
                 is_failure: Callable[[BaseException], bool] = lambda e: False) -> tuple[dict, list[float], int]:
    """Drive the outer/inner loop over a group; returns (class states, loss history, restarts)."""
    sched = cfg.schedule
    ckpt, restarts = start, 0
    while True:
        first = ckpt.outer if ckpt else 0
        history = list(ckpt.loss_history) if ckpt else []
        group = make_group(ckpt, first)
        try:
            for outer in range(first, sched.outer_iters):
                history.append(_run_outer(group, outer, sched.inner_iters, options.window, on_progress))
                done = outer + 1
                if done % options.checkpoint_every == 0 or done == sched.outer_iters:
                    ckpt = Checkpoint(done, group.states(), cfg.to_dict(), list(history))
                    if ckpts is not None:
                        where = ckpts.save(ckpt)
                        log.info("checkpoint after outer iteration %d written to %s", done, where)
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
                               f"{_first_line(e)}{kept}") from None
            log.warning("actor failure: %s; restarting the actors from %s (outer %d), restart %d of at most %d",
                        _first_line(e), where, back_to, restarts, options.max_restarts)


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


def _first_line(e: BaseException) -> str:
    """A one-line description; for errors wrapped by a task (Ray's ``cause``), the cause."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and cause is not e:
        return _first_line(cause)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


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


def condense_job(cfg: IDCConfig, output: str, options: RunOptions, *, device: str | torch.device = "cpu",
                 storage_options: dict | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> JobResult:
    """Run the whole schedule on the chosen backend, checkpointing under ``output``."""
    resolve(cfg)
    spec = dataset_spec(cfg, storage_options)
    ckpts = CheckpointStore(output, storage_options)
    ckpts.check_reachable()
    start = ckpts.latest() if options.resume else None
    if start is not None:
        check_resume(cfg, start)
        log.info("resuming from the checkpoint after outer iteration %d", start.outer)
    elif options.resume:
        log.info("--resume: no checkpoint under %s, starting from the beginning", output)
    started = time.perf_counter()
    if options.backend == "local":
        states, history, restarts = run_schedule(
            cfg, lambda ckpt, first: LocalGroup(cfg, ckpt, first, device, storage_options),
            ckpts=ckpts, start=start, options=options, on_progress=on_progress)
        placement: list[dict] = [{"name": "local", "device": str(device)}]
    else:
        from idc_ray.distributed.ray_group import run_on_ray

        states, history, restarts, placement = run_on_ray(cfg, spec, ckpts, start, options, on_progress,
                                                          storage_options)
    stored, labels = stack_stored({c: s["data"] for c, s in states.items()})
    return JobResult(spec, stored, labels, history, time.perf_counter() - started, restarts, placement)
