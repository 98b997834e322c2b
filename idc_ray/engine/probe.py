"""The probe behind the layout planner (distributed/planner.py): one inner iteration's parts
timed on one device at the run's real shapes: a matcher step over the classes and an expert
update. Random pixels stand in for the data (speed does not depend on content), so the probe
reads no files; a pretrained expert pool is replaced by a fresh network of the same shape.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from idc_ray.data import ClassStore, DatasetSpec
from idc_ray.engine.expert import ExpertTrainer, init_expert
from idc_ray.engine.plan import Plan, build_matcher, shared_upsampler


@dataclass(frozen=True)
class Probed:
    """Seconds on one device: a matcher step over all classes (scaled up linearly from the
    classes timed: one independent update per class) and one expert update."""

    matching_s: float
    expert_s: float
    classes_timed: int
    probe_s: float  # what the probe itself took, warm-ups included


def random_store(spec: DatasetSpec, classes: int, per_class: int, seed: int = 0) -> ClassStore:
    """``per_class`` random uint8 images of ``spec``'s shape for each of ``classes`` classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (classes * per_class, spec.channels, spec.size, spec.size), generator=g,
                      dtype=torch.uint8)
    return ClassStore(x, torch.arange(classes).repeat_interleave(per_class))


def median_seconds(step: Callable[[int], object], repeat: int, device: torch.device) -> float:
    """One warm-up call, then the median of ``repeat`` timed calls (``step(k)``, k = 1..repeat)."""
    step(0)
    times = []
    for k in range(1, repeat + 1):
        _sync(device)
        started = time.perf_counter()
        step(k)
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def probe_parts(plan: Plan, spec: DatasetSpec, device: torch.device | str = "cpu", *, max_classes: int = 10,
                repeat: int = 1) -> Probed:
    """Time one matcher step (over at most ``max_classes`` classes, scaled to all) and one expert
    update on ``device``, each after a warm-up."""
    started = time.perf_counter()
    device = torch.device(device)
    timed = min(spec.num_classes, max_classes)
    per_class = max(plan.match.batch_real, plan.match.ipc, math.ceil(plan.expert.n_data / timed) + 1)
    store = random_store(spec, timed, per_class)
    fresh = replace(plan, expert=replace(plan.expert, pretrained=None))
    matcher = build_matcher(fresh, store, store.classes, None, device, upsampler=shared_upsampler(fresh.match, device))
    expert = init_expert(fresh.expert, 0).to(device)
    matching = median_seconds(lambda k: matcher.step(expert, 0, k), repeat, device) * spec.num_classes / timed
    trainer = ExpertTrainer(fresh.expert, init_expert(fresh.expert, 0), device)
    update = median_seconds(lambda k: trainer.train_inner(store, 0, k), repeat, device)
    return Probed(matching, update, timed, time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["Probed", "median_seconds", "probe_parts", "random_store"]
