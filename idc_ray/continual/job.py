"""The continual-learning job (paper section 5.3, appendix C.3), independent of where it runs.

1. check every input (memory budget, stages against classes, models, exemplar files) before
   anything is written;
2. write each stage's real data as a Parquet dataset and make every (stage, method)'s exemplars:
   independent of each other, so ``mapper`` runs them in parallel (Ray tasks on a cluster),
   each cached under ``OUTPUT/cache/<key>/stage-S`` (``key``: a hash of the settings that shape
   exemplars, so other settings never reuse them);
3. train every (method, model, repeat) learner through all stages (sequential inside; the
   learners in parallel through ``mapper``);
4. write continual.png and results.md, then results.json last, each under a temporary name
   renamed when complete.

``mapper(fn, items, names)`` returns ``[fn(*item, device=...) for item in items]`` in order: the
local loop or :func:`idc_ray.distributed.continual.ray_map`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from idc_ray import __version__, storage
from idc_ray.config import IDCConfig, apply_overrides, load_preset
from idc_ray.continual import report
from idc_ray.continual.exemplars import (
    BUILTIN, NONE, ExemplarJob, check_memory_budget, external_memory, load_memory, make_exemplars, source_method,
    stage_config, stage_folder,
)
from idc_ray.continual.learner import LearnerRun, StageRecipe, run_learner
from idc_ray.continual.settings import ContinualConfig
from idc_ray.continual.stages import Scenario, class_incremental, stage_data, task_incremental, write_stage_dataset
from idc_ray.data import DatasetSpec, parquet
from idc_ray.engine.plan import resolve
from idc_ray.run.backend import Backend
from idc_ray.models import check_model_input
from idc_ray.models import uses_net_width

Mapper = Callable[[Callable, Sequence[tuple], Sequence[str]], list]
RESULTS, REPORT, PLOT = "results.json", "results.md", "continual.png"


@dataclass
class Plan:
    scenario: Scenario
    external: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
    cache: Path


def build_scenario(c: ContinualConfig, base: IDCConfig) -> Scenario:
    if c.scenario == "task":
        return task_incremental(c.tasks, base.data.data_uri, size=c.image_size)
    return class_incremental(base.data.dataset, base.data.data_uri, c.stages)


def exemplar_key(c: ContinualConfig, base: IDCConfig) -> str:
    """A hash of what shapes the exemplars, and only that: the base config (the condensation and
    Herding's network read it; every IDC artifact records it), the budget, Herding's epochs and the
    stream (class: the stages; task: the datasets and their common side). The learner's settings
    and the list of methods (each cached in a file of its own) stay out, so changing them reuses
    the exemplars (tests/continual/test_continual_checks.py)."""
    stream = {"tasks": list(c.tasks), "image_size": c.image_size} if c.scenario == "task" else {"stages": c.stages}
    shaping = {"base": base.to_dict(), "scenario": c.scenario, **stream, "memory_ipc": c.memory_ipc,
               "herding_epochs": c.herding_epochs}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def plan(c: ContinualConfig, base: IDCConfig, output: str | Path) -> Plan:
    """Everything checked, nothing written yet. Raises ValueError (one line) on bad input."""
    scenario = build_scenario(c, base)
    data = scenario.data
    for s, classes in enumerate(scenario.stages):
        counts = torch.bincount(data.train_y, minlength=data.spec.num_classes)[torch.tensor(classes)]
        check_memory_budget(c.memory_ipc, int(counts.min()))
    for model in c.models:
        check_model_input(model, data.spec.channels, data.spec.size)
    external = {}
    for entry in c.exemplars:
        if "=" in entry:
            name, uri = entry.split("=", 1)
            if c.scenario == "task":
                raise ValueError("--exemplars NAME=FILE applies to the class-incremental scenario only")
            external[name] = external_memory(name, uri, base, scenario.stages)
    return Plan(scenario, external, Path(output) / "cache" / exemplar_key(c, base))


def method_names(c: ContinualConfig) -> list[str]:
    return [e.split("=", 1)[0] for e in c.exemplars]


def made_methods(c: ContinualConfig) -> list[str]:
    """The built-in methods whose exemplars are made, in order, once each (``none`` uses Random's)."""
    out: list[str] = []
    for m in map(source_method, c.exemplars):
        if m in BUILTIN and m not in out:
            out.append(m)
    return out


def stage_jobs(c: ContinualConfig, base: IDCConfig, p: Plan, backend: Backend | None = None) -> list[ExemplarJob]:
    """Write the stages' Parquet datasets (unless there) and list their exemplar jobs."""
    jobs = []
    for s, classes in enumerate(p.scenario.stages):
        folder = stage_folder(p.cache, s)
        data_dir = str(Path(folder) / "data")
        if not parquet.is_dataset(data_dir):
            write_stage_dataset(stage_data(p.scenario.data, classes, p.scenario.stage_specs[s]), data_dir)
        cfg = stage_config(base, data_dir, c.memory_ipc)
        jobs += [ExemplarJob(s, m, cfg, folder, c.herding_epochs, backend) for m in made_methods(c)]
    return jobs


def stage_recipe(c: ContinualConfig, base: IDCConfig, spec: DatasetSpec) -> StageRecipe:
    """The evaluation protocol's augmentation of the base preset on ``spec``; the appendix's schedule."""
    r = resolve(base, spec)
    return StageRecipe(epochs=c.epochs, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                       batch_size=c.batch_size, augment="" if r.eval_augment == "none" else r.eval_augment,
                       aug_single=base.eval.aug_single,
                       cutmix_prob=0.0 if c.scenario == "task" else r.eval_cutmix_prob,
                       lwf_weight=c.lwf_weight, temperature=c.lwf_temperature)


def stage_memories(c: ContinualConfig, p: Plan, jobs: list[ExemplarJob]
                   ) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Every ``--exemplars`` entry's per-stage sets (images, global labels), in the order given."""
    made: dict[str, list] = {}
    for j in jobs:
        made.setdefault(j.method, []).append(load_memory(j, p.scenario.stages[j.stage]))
    return {name: p.external[name] if name in p.external else made[source_method(name)] for name in method_names(c)}


def run_continual(c: ContinualConfig, base: IDCConfig, output: str | Path, backend: Backend,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole job on ``backend`` (its ``map`` runs the stages and learners, in parallel on Ray);
    returns the results document (also written to OUTPUT/results.json)."""
    mapper: Mapper = backend.map
    started = time.perf_counter()
    p = plan(c, base, output)
    scenario, data = p.scenario, p.scenario.data
    jobs = stage_jobs(c, base, p, backend)
    log(f"[continual] {len(scenario.stages)} stages, exemplars cached under {p.cache}; "
        f"{len(jobs)} exemplar jobs (stages in parallel)")
    mapper(make_exemplars, [(j,) for j in jobs], [f"exemplars {j.method} stage {j.stage + 1}" for j in jobs])
    exemplar_s = time.perf_counter() - started
    memories = stage_memories(c, p, jobs)
    tests = []
    for classes in scenario.stages:
        keep = torch.isin(data.test_y, torch.tensor(classes))
        tests.append((data.test_x[keep], data.test_y[keep]))
    recipe = stage_recipe(c, base, data.spec)
    width = c.width if c.width is not None else base.eval.width
    runs = [LearnerRun(method, model, k, base.schedule.seed, width if uses_net_width(model) else None,
                       data.spec.channels, data.spec.size, tuple(data.spec.mean), tuple(data.spec.std),
                       data.spec.name, recipe, replay=method != NONE)
            for method in method_names(c) for model in c.models for k in range(c.repeat)]
    log(f"[continual] {len(runs)} learners ({len(method_names(c))} methods x {len(c.models)} models x "
        f"{c.repeat} repeats), {c.epochs} epochs per stage")
    results = mapper(run_learner, [(r, memories[r.method], tests, scenario.groups) for r in runs],
                     [f"learner {r.method} {r.model} repeat {r.repeat + 1}" for r in runs])
    seen = [sum(len(s) for s in scenario.stages[: i + 1]) for i in range(len(scenario.stages))]
    summary = report.summarize(results, len(seen))
    title = (f"{' -> '.join(c.tasks)} (task-incremental)" if c.scenario == "task"
             else f"{data.spec.name}, {len(seen)} stages, {c.memory_ipc} img/cls")
    document = {
        "settings": c.to_dict(), "base_config": base.to_dict(), "stages": scenario.stages, "classes_seen": seen,
        "memory_per_stage": {m: [len(x) for x, _ in mem] for m, mem in memories.items()},
        "recipe": recipe.__dict__, "results": summary, "exemplar_seconds": exemplar_s,
        "seconds": time.perf_counter() - started, "code_version": __version__,
    }
    out = Path(output)
    report.write_plot(str(out / PLOT), summary, seen, title)
    storage.atomic_write_bytes(str(out / REPORT), report.markdown(summary, seen, title).encode())
    storage.atomic_write_bytes(str(out / RESULTS), report.to_json(document))
    return document


def base_config(c: ContinualConfig, overrides: Sequence[str] = (), data_uri: str | None = None,
                seed: int | None = None) -> IDCConfig:
    """The base condensation preset with ``--set`` overrides, ``--data-uri`` and ``--seed``."""
    cfg = load_preset(c.base)
    changes = {k: v for k, v in (("data.data_uri", data_uri), ("schedule.seed", seed)) if v is not None}
    if changes:
        cfg = apply_overrides(cfg, changes)
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
    return cfg


__all__ = ["RESULTS", "REPORT", "PLOT", "Mapper", "base_config", "plan", "run_continual",
           "stage_recipe"]
