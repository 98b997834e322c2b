"""A condensation job: the dataset spec and the run's plan (once), checkpoints under the output
folder, then the schedule (schedule.py) on the chosen backend (local.py or ray_group.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec, get_spec, load_dataset
from idc_ray.checkpoint import CheckpointStore
from idc_ray.distributed.local import run_local
from idc_ray.distributed.ray_group import run_on_ray
from idc_ray.distributed.schedule import RunOptions, Snapshots, check_resume
from idc_ray.engine.loop import Progress, stack_stored
from idc_ray.engine.plan import Plan, build_plan

log = logging.getLogger("idc_ray")


@dataclass
class JobResult:
    spec: DatasetSpec
    stored: torch.Tensor
    labels: torch.Tensor
    loss_history: list[float]
    seconds: float
    restarts: int = 0
    placement: list[dict] = field(default_factory=list)


def dataset_spec(cfg: IDCConfig) -> DatasetSpec:
    """The spec every process must share. Datasets whose statistics are measured at load
    (speech) are loaded once here, so all matchers normalise with the same numbers."""
    spec = get_spec(cfg.data.dataset, cfg.data.data_uri)
    if spec.measure_stats:
        spec = load_dataset(cfg.data.dataset, cfg.data.data_uri).spec
    return spec


def condense_job(cfg: IDCConfig, output: str, options: RunOptions, *, device: str | torch.device = "cpu",
                 on_progress: Callable[[Progress], None] | None = None,
                 spec: DatasetSpec | None = None, plan: Plan | None = None,
                 snapshots: Snapshots | None = None) -> JobResult:
    """Run the whole schedule on the chosen backend, checkpointing under ``output``. ``spec`` and
    ``plan``: the run's, when the caller has them already (else built here, once); ``snapshots``:
    the stored set at iteration 0 and every K-th (``--eval-every``)."""
    spec = spec or dataset_spec(cfg)
    plan = plan or build_plan(cfg, spec)
    ckpts = CheckpointStore(output)
    ckpts.check_reachable()
    start = ckpts.latest() if options.resume else None
    if start is not None:
        check_resume(cfg, start)
        log.info("resuming from the checkpoint after outer iteration %d", start.outer)
    elif options.resume:
        log.info("--resume: no checkpoint under %s, starting from the beginning", output)
    started = time.perf_counter()
    if options.backend == "local":
        store = load_dataset(cfg.data.dataset, cfg.data.data_uri).train_store()
        states, history, restarts = run_local(cfg, plan, store, device=device, ckpts=ckpts, start=start,
                                              options=options, on_progress=on_progress, snapshots=snapshots)
        placement: list[dict] = [{"name": "local", "device": str(device)}]
    else:
        states, history, restarts, placement = run_on_ray(cfg, plan, spec, ckpts, start, options, on_progress,
                                                          snapshots)
    stored, labels = stack_stored({c: s["data"] for c, s in states.items()})
    return JobResult(spec, stored, labels, history, time.perf_counter() - started, restarts, placement)
