"""Algorithm 1 of the IDC paper (Kim et al., ICML 2022), as one function you can read beside it.

The schedule talks to two things a backend builds (in-process: ``idc_ray.local``; Ray:
``idc_ray.distributed.backend``): a group of matchers, each updating its shard of classes, and
an expert source, which gives the expert network's state for (outer, inner). Checkpoints,
``--eval-every`` snapshots, restarts and progress are hooks around it (``run/hooks.py``,
``run/recovery.py``), not branches inside it.

Why the expert is a *source*: its trajectory (re-initialised every ``fix_iter`` outer
iterations, then trained on real data after each inner iteration) never depends on the stored
data (settings sheet; docs/architecture.md), so a backend may compute states ahead of the
matchers; and every draw of a class's update is keyed by (seed, class, outer, inner), so any
sharding of the classes gives the same bytes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from idc_ray.config import ScheduleConfig


@dataclass
class Progress:
    """One finished inner iteration: the losses of every class and, per shard, their mean."""

    outer: int
    inner: int
    losses: dict[int, float]
    class_steps_per_s: float
    shards: dict[str, float] = field(default_factory=dict)
    expert_ahead: int | None = None  # expert states computed beyond those handed out (Ray backend)


class Matchers(Protocol):
    """Every class's stored samples, split into shards that update independently."""

    def begin_outer(self, outer: int) -> None: ...
    def submit(self, expert: object, outer: int, inner: int) -> object: ...
    def collect(self, handle: object) -> Progress: ...
    def states(self) -> dict[int, dict]: ...
    def shared(self) -> dict | None: ...  # state every class shares (a learned formation's upsampler)


class ExpertSource(Protocol):
    """The expert network's state for (outer, inner), in the order the schedule asks for them."""

    def state(self, outer: int, inner: int) -> object: ...


class Hooks(Protocol):
    def after_inner(self, progress: Progress) -> None: ...
    def after_outer(self, done: int, matchers: Matchers) -> None: ...


def algorithm1(schedule: ScheduleConfig, matchers: Matchers, expert: ExpertSource, hooks: Hooks, *,
               first_outer: int = 0, window: int = 2) -> None:
    """Outer iterations ``first_outer``..``outer_iters - 1`` of Algorithm 1.

    ``window``: inner iterations submitted before the first of them is collected, so a backend
    whose matchers run elsewhere never waits on the driver between two steps.
    """
    for outer in range(first_outer, schedule.outer_iters):
        matchers.begin_outer(outer)  # clamp the stored data to the image range (settings sheet)
        in_flight: deque = deque()
        for inner in range(schedule.inner_iters):
            # theta: re-initialised at every fix_iter-th outer, trained on real data after each inner
            theta = expert.state(outer, inner)
            # every shard updates its classes: grad of D(grad l(theta; real_c), grad l(theta; formed S_c))
            in_flight.append(matchers.submit(theta, outer, inner))
            if len(in_flight) == window:
                hooks.after_inner(matchers.collect(in_flight.popleft()))
        while in_flight:
            hooks.after_inner(matchers.collect(in_flight.popleft()))
        hooks.after_outer(outer + 1, matchers)
