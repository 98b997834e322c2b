"""The in-process backend: one matcher for every class and the live expert, in this process. It is
the only in-process loop (tests, benchmarks, the demo with ``--backend local``, continual stages
that find no free resources); the Ray backend (``idc_ray.distributed.backend``) must give its
bytes."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Sequence

import torch

from idc_ray.checkpoint import Checkpoint
from idc_ray.config import IDCConfig, ScheduleConfig
from idc_ray.data import ClassStore, DatasetSpec, load_dataset
from idc_ray.device import resolve_device
from idc_ray.engine.expert import expert_trajectory
from idc_ray.engine.matcher import stack_stored
from idc_ray.engine.plan import Plan, build_matcher, build_trainer
from idc_ray.evaluation.executor import Sequential
from idc_ray.run.backend import stderr_line
from idc_ray.run.curve import LocalCurveRunner, RunnerFactory
from idc_ray.run.hooks import RunHooks, Snapshots
from idc_ray.run.recovery import run_with_restarts
from idc_ray.run.schedule import Progress
from idc_ray.tune.cache import ensure_pool

Log = Callable[[str], None]


class LocalMatchers:
    """One matcher for every class of ``store``; a step runs when it is submitted. With a learned
    formation, the shared upsampler (``trainer``) then takes one step on the sum of the classes'
    gradients, in class order (engine/upsampler.py)."""

    def __init__(self, plan: Plan, store: ClassStore, ckpt: Checkpoint | None, device: torch.device):
        self.trainer = build_trainer(plan.match, device)
        if self.trainer is not None and ckpt is not None:
            self.trainer.load_state_dict(ckpt.upsampler)
        self.matcher = build_matcher(plan, store, store.classes, ckpt.classes if ckpt else None, device,
                                     upsampler=self.trainer.net if self.trainer else None)

    def begin_outer(self, outer: int) -> None:
        self.matcher.begin_outer()

    def submit(self, expert: torch.nn.Module, outer: int, inner: int) -> Progress:
        started = time.perf_counter()
        losses = self.matcher.step(expert, outer, inner)
        if self.trainer is not None:
            self.trainer.apply(self.matcher.take_upsampler_grads())
        return Progress(outer, inner, losses, len(losses) / max(time.perf_counter() - started, 1e-9))

    def collect(self, handle: Progress) -> Progress:
        return handle

    def states(self) -> dict[int, dict]:
        return self.matcher.state_dict()

    def shared(self) -> dict | None:
        return None if self.trainer is None else self.trainer.state_dict()


class LocalExpert:
    """The expert's trajectory in this process (``engine.expert.expert_trajectory``)."""

    def __init__(self, plan: Plan, store: ClassStore, schedule: ScheduleConfig, start_outer: int, device: torch.device):
        self.trajectory = expert_trajectory(plan.expert, store, schedule.inner_iters, start_outer,
                                            schedule.outer_iters, device)

    def state(self, outer: int, inner: int) -> torch.nn.Module:
        o, i, model = next(self.trajectory)
        assert (o, i) == (outer, inner), "expert trajectory out of step"
        return model


class LocalAttempts:
    """Matchers and expert built afresh from a checkpoint; nothing here fails the way actors do."""

    def __init__(self, plan: Plan, store: ClassStore, schedule: ScheduleConfig, device: torch.device):
        self.plan, self.store, self.schedule, self.device = plan, store, schedule, device
        self.placement = [{"name": "local", "device": str(device)}]

    def open(self, ckpt: Checkpoint | None, first_outer: int) -> tuple[LocalMatchers, LocalExpert]:
        return (LocalMatchers(self.plan, self.store, ckpt, self.device),
                LocalExpert(self.plan, self.store, self.schedule, first_outer, self.device))

    def close(self) -> None:
        pass

    def is_failure(self, error: BaseException) -> bool:
        return False


class LocalBackend:
    """Everything in this process, on ``device`` (auto: the first CUDA device, else the CPU)."""

    name = "local"

    def __init__(self, device: str | torch.device = "auto", log: Log | None = None):
        self.device = str(resolve_device(device))
        self.log = log or stderr_line

    def session(self):
        return nullcontext()

    @contextmanager
    def place(self, cfg: IDCConfig, plan: Plan, spec: DatasetSpec) -> Iterator[LocalAttempts]:
        store = load_dataset(cfg.data.dataset, cfg.data.data_uri).train_store()
        yield LocalAttempts(plan, store, cfg.schedule, torch.device(self.device))

    def stage_backend(self, num_classes: int, key: str) -> None:
        return None  # a stage condenses in this process

    def pretrained_pool(self, cfg: IDCConfig, cache: str, seeds: int, log: Log) -> str:
        load = lambda: load_dataset(cfg.data.dataset, cfg.data.data_uri)
        return ensure_pool(cfg, load, cache, seeds, device=self.device, log=log)

    def executor(self, num_cpus: float | None = None, num_gpus: float | None = None, max_retries: int = 3) -> Sequential:
        return Sequential(self.device, log=self.log)

    def map(self, fn: Callable, items: Sequence[tuple], names: Sequence[str]) -> list:
        return [fn(*item, device=self.device) for item in items]

    def curve_runner(self) -> RunnerFactory:
        return lambda test, options: LocalCurveRunner(test, options, self.device)


def condense_local(cfg: IDCConfig, plan: Plan, store: ClassStore, *, device: torch.device | str = "cpu",
                   on_progress: Callable[[Progress], None] | None = None, snapshots: Snapshots | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The whole schedule over ``store`` in this process, without checkpoints or files:
    (stored, labels, loss history per outer iteration). For tests and benchmarks."""
    hooks = RunHooks(cfg, every=max(1, cfg.schedule.outer_iters), on_progress=on_progress, snapshots=snapshots)
    states, _, _ = run_with_restarts(cfg, LocalAttempts(plan, store, cfg.schedule, torch.device(device)), hooks)
    stored, labels = stack_stored({c: s["data"] for c, s in states.items()})
    return stored, labels, hooks.history

