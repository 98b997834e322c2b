"""What a job needs from an execution backend, asked for once per job: the in-process backend
(``idc_ray.local``) and the Ray backend (``idc_ray.distributed.backend``) implement it, and
``idc_ray.backends.backend_for`` picks one. Nothing else asks which backend it runs on."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol, Sequence

from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec
from idc_ray.engine.plan import Plan
from idc_ray.evaluation.executor import Executor
from idc_ray.run.curve import RunnerFactory
from idc_ray.run.recovery import Attempts

Log = Callable[[str], None]


def stderr_line(message: str) -> None:
    """The default log of jobs and backends: one line on stderr, at once."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunOptions:
    """How a job runs. ``backend`` is read once, by ``idc_ray.backends.backend_for``; the layout
    fields below it are the Ray backend's (the in-process backend has one matcher and one expert)."""

    backend: str = "ray"  # ray | local
    checkpoint_every: int = 10
    resume: bool = False
    max_restarts: int = 3
    window: int = 2  # inner steps in flight before the driver waits for results
    num_actors: int | None = None  # None: the layout planner's (distributed/planner.py)
    # None for both: one GPU per matcher and one for the expert when a whole GPU is left; else the
    # expert shares a GPU with a matcher (resources.plan_layout); 0 on a CPU cluster.
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None  # None: an equal share of the cluster's CPUs
    expert_gpus: float | None = None
    expert_actors: int | None = None  # expert actors computing cycles side by side; None: the planner's
    # expert states computed ahead of the matchers, across cycles, bounded by the object-store
    # memory they may hold (back-pressure: no state is asked for beyond it; at least one ahead)
    expert_memory_mb: float = 256.0
    spread: bool = False  # placement strategy SPREAD instead of PACK
    keep_freed_memory: bool = True  # actors keep freed memory for reuse (distributed.actors.ALLOCATOR_ENV)
    faults: tuple[dict, ...] = ()  # testing aid: {"actor": i, "outer": o, "inner": n} raises once


class Backend(Protocol):
    """One execution backend for one job."""

    name: str
    device: str  # where this process computes (the manifest records it)

    def session(self) -> ContextManager: ...
    def place(self, cfg: IDCConfig, plan: Plan, spec: DatasetSpec) -> ContextManager[Attempts]: ...
    def stage_backend(self, num_classes: int, key: str) -> Backend | None:
        """A backend with resources of its own for one continual stage (``key``: its output, the
        same for a retry), or None: the stage then condenses in the process of the task that asked."""
    def pretrained_pool(self, cfg: IDCConfig, cache: str, seeds: int, log: Log) -> str: ...
    def executor(self, num_cpus: float | None = None, num_gpus: float | None = None, max_retries: int = 3) -> Executor:
        """Runs evaluation work; the shares and retries are a Ray task's (the in-process one ignores them)."""
    def curve_runner(self) -> RunnerFactory: ...
    def map(self, fn: Callable, items: Sequence[tuple], names: Sequence[str]) -> list:
        """``[fn(*item, device=...) for item in items]``, in order (continual stages and learners)."""
