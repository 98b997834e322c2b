"""The local backend: the schedule over one in-process matcher for every class and the live
expert. It is the only in-process loop (tests, benchmarks and the demo run it); the Ray backend
(ray_group.py) must give its bytes."""

from __future__ import annotations

from typing import Callable

import torch

from idc_ray.config import IDCConfig, ScheduleConfig
from idc_ray.data import ClassStore
from idc_ray.checkpoint import Checkpoint, CheckpointStore
from idc_ray.distributed.schedule import RunOptions, Snapshots, run_schedule
from idc_ray.engine.expert import expert_trajectory
from idc_ray.engine.loop import Progress, stack_stored
from idc_ray.engine.plan import Plan, build_matcher


class LocalGroup:
    """One matcher for every class of ``store`` and the expert's trajectory, in this process."""

    def __init__(self, plan: Plan, store: ClassStore, schedule: ScheduleConfig, ckpt: Checkpoint | None,
                 start_outer: int, device: torch.device | str = "cpu"):
        self.matcher = build_matcher(plan, store, store.classes, ckpt.classes if ckpt else None, device)
        self.trajectory = expert_trajectory(plan.expert, store, schedule.inner_iters, start_outer,
                                            schedule.outer_iters, device)

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


def run_local(cfg: IDCConfig, plan: Plan, store: ClassStore, *, device: torch.device | str = "cpu",
              ckpts: CheckpointStore | None = None, start: Checkpoint | None = None,
              options: RunOptions = RunOptions(backend="local"),
              on_progress: Callable[[Progress], None] | None = None,
              snapshots: Snapshots | None = None) -> tuple[dict, list[float], int]:
    """The schedule in this process; returns (class states, loss history per outer, restarts)."""
    make_group = lambda ckpt, first: LocalGroup(plan, store, cfg.schedule, ckpt, first, device)
    return run_schedule(cfg, make_group, ckpts=ckpts, start=start, options=options, on_progress=on_progress,
                        snapshots=snapshots)


def condense_local(cfg: IDCConfig, plan: Plan, store: ClassStore, *, device: torch.device | str = "cpu",
                   on_progress: Callable[[Progress], None] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The whole schedule in this process without checkpoints: (stored, labels, loss history)."""
    states, history, _ = run_local(cfg, plan, store, device=device, on_progress=on_progress,
                                   options=RunOptions(backend="local", checkpoint_every=max(1, cfg.schedule.outer_iters)))
    stored, labels = stack_stored({c: s["data"] for c, s in states.items()})
    return stored, labels, history
