"""The Tune trial (:func:`condense_trial`, the trainable): a whole condensation (matcher actors
+ expert actor, reserved together as the trial's placement group) followed by evaluation,
reporting at a few stages so ASHA can stop weak trials early. The driver that starts the trials
is :mod:`idc_ray.distributed.sweep`.

The numbered comments mark the Ray Tune specific lines:
  1. one trial reserves an empty head bundle (the trainable only orchestrates) plus one bundle
     per matcher and one for the expert; the Ray backend places the actors into exactly those
     bundles (it sees the trial's group with ``get_current_placement_group``), so a trial never
     asks for resources outside its reservation;
  2. work that does not depend on the swept values is done once by the driver and shared: the
     prepared data (test split and spec, in the object store, by reference) and the pretrained
     expert pool (a folder in the cache, keyed by the settings it depends on);
  3. ``tune.report`` after every stage: the ASHA rungs are the stages.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Mapping

import ray
import torch
from ray import tune
from ray.util.placement_group import PlacementGroup, get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from idc_ray import storage
from idc_ray.artifacts import load_condensed
from idc_ray.config import IDCConfig, apply_overrides
from idc_ray.data import DatasetSpec, load_dataset
from idc_ray.distributed.actors import actor_device, actor_runtime_env, configure_worker, use_assigned_cpus
from idc_ray.distributed.backend import RayBackend
from idc_ray.distributed.evaluation import evaluate_task
from idc_ray.distributed.resources import TrialResources, task_options
from idc_ray.engine.plan import resolve
from idc_ray.evaluation.protocol import RunRecord, form_stored, plan_tasks
from idc_ray.run.job import Run, condense_to
from idc_ray.tune.cache import AUTO_POOL, data_settings, ensure_pool, settings_key
from idc_ray.tune.space import interim_epochs, stage_outers, trial_config


def log_line(message: str) -> None:
    """A sweep's line in the job log (stderr), prefixed ``[idc-ray]``."""
    print(f"[idc-ray] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PreparedData:
    """Data a trial needs besides what its actors read: the spec (with measured statistics) and the
    test split, in the object store (2.); the whole RealData only when trials may pretrain a pool."""

    key: str
    spec: DatasetSpec
    test_x: Any  # ObjectRef of a uint8 tensor
    test_y: Any
    real: Any = None  # ObjectRef of the RealData, or None


def prepare_data(cfg: IDCConfig, *, with_train: bool = False) -> PreparedData:
    """Load ``cfg``'s dataset once (decoded sources fill their decode cache for the actors too) and
    put what trials share into the object store."""
    real = load_dataset(cfg.data.dataset, cfg.data.data_uri)
    return PreparedData(settings_key(data_settings(cfg)), real.spec, ray.put(real.test_x), ray.put(real.test_y),
                        ray.put(real) if with_train else None)


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its swept values (handed over with ``tune.with_parameters``)."""

    base: IDCConfig  # preset + --config + flags + --set + the space's fixed values
    artifacts_uri: str  # each trial writes its artifact (and checkpoints) to <artifacts_uri>/<trial id>
    resources: TrialResources
    stages: int = 4
    interim_epochs: int | None = None
    cache_dir: str = "runs/tune/cache"
    pool_seeds: int = 10
    storage_options: dict | None = None  # the driver's storage.current(): the trial configures its process with it


@ray.remote(runtime_env=actor_runtime_env(True))  # freed activations reused, as in the matcher actors
def build_pool(cfg: IDCConfig, real, cache_dir: str, seeds: int, storage_options: dict | None) -> str:
    """Pretrain (or find in the cache) the expert pool of ``cfg``; returns its folder."""
    configure_worker(storage_options)
    use_assigned_cpus()
    load = (lambda: real) if real is not None else (lambda: load_dataset(cfg.data.dataset, cfg.data.data_uri))
    return ensure_pool(cfg, load, cache_dir, seeds, device=actor_device(), log=log_line)


def _in_bundle(pg: PlacementGroup | None, index: int) -> dict[str, Any]:
    """Ray options that run a task in bundle ``index`` of the trial's group, with its resources."""
    if pg is None:
        return {"num_cpus": 1}
    specs = pg.bundle_specs
    index %= len(specs)
    return {**task_options(specs[index]),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)}


def evaluate_stored(cfg: IDCConfig, data: PreparedData, stored: torch.Tensor, labels: torch.Tensor, *,
                    epochs: int, repeat: int | None, label: str, pg: PlacementGroup | None = None) -> list[RunRecord]:
    """Train ``cfg``'s test models on the formed stored set, one Ray task per (model, repeat),
    spread over the trial's bundles (free once the condensation's actors are gone)."""
    x, y = form_stored(cfg, data.spec, stored, labels)
    tasks = plan_tasks(cfg, data.spec, label, epochs=epochs, repeat=repeat)
    x_ref, y_ref = ray.put(x), ray.put(y)
    refs = [evaluate_task.options(name=f"eval {label} {t.model} repeat {t.repeat + 1}", max_retries=1,
                                  **_in_bundle(pg, i)).remote(t, x_ref, y_ref, data.test_x, data.test_y)
            for i, t in enumerate(tasks)]
    return ray.get(refs)


def stage_metrics(records: list[RunRecord], *, stage: int, stages: int, outer: int, epochs: int,
                  loss_history: list[float], artifact: str) -> dict[str, Any]:
    """What a trial reports after a stage (accuracies in [0, 1])."""
    last = [r.last for r in records]
    mean = sum(last) / len(last)
    metrics: dict[str, Any] = {
        "accuracy": mean,
        "accuracy_std": (sum((a - mean) ** 2 for a in last) / len(last)) ** 0.5,
        "loss": loss_history[-1] if loss_history else float("nan"),
        "stage": stage, "stages": stages, "outer": outer, "final": stage == stages,
        "eval_epochs": epochs, "eval_runs": len(records), "artifact": artifact,
    }
    for model in dict.fromkeys(r.model for r in records):
        accs = [r.last for r in records if r.model == model]
        metrics[f"accuracy_{model}"] = sum(accs) / len(accs)
    return metrics


def _to_job_dir() -> None:
    """Tune starts a trial in its own folder; relative paths in configs (data_uri, a pool) mean
    what they mean for jobs/condense.py, so go back to the job's working directory."""
    original = os.environ.get("TUNE_ORIG_WORKING_DIR")
    if original and os.path.isdir(original):
        os.chdir(original)


def condense_trial(config: dict[str, Any], setup: TrialSetup, prepared: Mapping[str, PreparedData] | None = None) -> None:
    """The Tune trainable: condense with ``setup.base`` + ``config`` (dotted config keys to values),
    evaluating and reporting at each stage; the artifact ends at ``<artifacts_uri>/<trial id>``.

    Each stage continues the previous one from its checkpoint (``--resume`` semantics), so the
    final artifact has the bytes of one uninterrupted run of the trial's config.
    """
    configure_worker(setup.storage_options)
    _to_job_dir()
    trial = tune.get_context().get_trial_id()
    cfg = trial_config(setup.base, config)
    pg = get_current_placement_group()  # 1. the trial's reservation; the Ray backend places the actors in it
    data = (prepared or {}).get(settings_key(data_settings(cfg)))
    if data is None:  # a swept dataset: load it here
        data = prepare_data(cfg, with_train=cfg.expert.pretrained == AUTO_POOL)
    if cfg.expert.pretrained == AUTO_POOL:  # 2. a pool that depends on swept values: cached by its settings
        path = ray.get(build_pool.options(**_in_bundle(pg, -1)).remote(cfg, data.real, setup.cache_dir,
                                                                      setup.pool_seeds, storage.current()))
        cfg = apply_overrides(cfg, {"expert.pretrained": path})
    out = storage.join(setup.artifacts_uri, trial)
    outers = stage_outers(cfg.schedule.outer_iters, setup.stages)
    final_epochs = resolve(cfg, data.spec).eval_epochs
    for stage, outer in enumerate(outers, 1):
        final = stage == len(outers)
        run_cfg = cfg if final else replace(cfg, schedule=replace(cfg.schedule, outer_iters=outer))
        options = setup.resources.run_options()
        condense_to(Run(run_cfg, out, RayBackend(options, device="cpu"), options))
        stored, labels, manifest = load_condensed(out)
        epochs = final_epochs if final else interim_epochs(setup.interim_epochs, final_epochs)
        records = evaluate_stored(cfg, data, stored, labels, epochs=epochs, repeat=None if final else 1,
                                  label=trial, pg=pg)
        metrics = stage_metrics(records, stage=stage, stages=len(outers), outer=outer, epochs=epochs,
                                loss_history=manifest["metrics"].get("loss_history") or [], artifact=out)
        log_line(f"trial {trial} stage {stage}/{len(outers)} (outer {outer}): accuracy {100 * metrics['accuracy']:.2f}% "
             f"over {len(records)} runs of {epochs} epochs")
        tune.report(metrics)  # 3. an ASHA rung


__all__ = ["PreparedData", "TrialSetup", "build_pool", "condense_trial", "evaluate_stored", "log_line", "prepare_data",
           "stage_metrics"]
