"""Ray Tune sweeps: each trial is a whole condensation (matcher actors + expert actor, reserved
together as the trial's placement group) followed by evaluation, reporting at a few stages so
ASHA can stop weak trials early.

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
import re
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.placement_group import PlacementGroup, get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from idc_ray import storage
from idc_ray.artifacts import load_condensed
from idc_ray.config import IDCConfig, apply_overrides
from idc_ray.data import DatasetSpec, get_spec, load_dataset
from idc_ray.distributed.actors import actor_device, actor_runtime_env, configure_worker, use_assigned_cpus
from idc_ray.distributed.evaluation import evaluate_task
from idc_ray.distributed.backend import RayBackend
from idc_ray.distributed.resources import TrialResources, default_resources, task_options
from idc_ray.engine.plan import resolve
from idc_ray.errors import first_line
from idc_ray.evaluation.protocol import RunRecord, form_stored, plan_tasks
from idc_ray.run.job import Run, condense_to
from idc_ray.tune.cache import AUTO_POOL, data_settings, ensure_pool, pool_shared, settings_key
from idc_ray.tune.results import TrialRow, best_config_text, rank_trials, results_markdown
from idc_ray.tune.space import Param, TuneSpace, interim_epochs, stage_outers, trial_config

RESULTS_MD = "tune_results.md"
BEST_CONFIG = "best_config.yaml"
ARTIFACTS = "artifacts"
SCHEDULERS = ("asha", "fifo")


def _log(message: str) -> None:
    print(f"[idc-ray] {message}", file=sys.stderr, flush=True)


def sampler(param: Param):
    """The ``ray.tune`` sampler of a swept parameter."""
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    if param.type == "uniform":
        return tune.uniform(param.low, param.high)
    if param.type == "randint":
        return tune.randint(param.low, param.high + 1)  # tune's upper bound is exclusive
    if param.type == "choice":
        return tune.choice(list(param.values))
    return tune.grid_search(list(param.values))


def search_space(space: TuneSpace) -> dict[str, Any]:
    """The Tune ``param_space``: dotted config keys to samplers."""
    return {p.key: sampler(p) for p in space.params}


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
    return ensure_pool(cfg, load, cache_dir, seeds, device=actor_device(), log=_log)


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
        _log(f"trial {trial} stage {stage}/{len(outers)} (outer {outer}): accuracy {100 * metrics['accuracy']:.2f}% "
             f"over {len(records)} runs of {epochs} epochs")
        tune.report(metrics)  # 3. an ASHA rung


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    name: str
    experiment_uri: str  # Tune's experiment folder (results, artifacts/, tune_results.md, best_config.yaml)
    ranked: list[TrialRow]
    results_uri: str
    best_config_uri: str | None
    local_copies: list[str] = field(default_factory=list)  # when the storage is remote


def _tune_storage(storage_uri: str):
    """(storage_path, storage_filesystem) for Tune: a local absolute path, or the storage layer's
    fsspec filesystem (same endpoint and credentials as everything else) wrapped for pyarrow."""
    fs, path = storage.open_fs(storage_uri)
    if storage.is_local(storage_uri):
        return os.path.abspath(path), None
    import pyarrow.fs as pafs

    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _trial_id(result) -> str:
    found = (result.metrics or {}).get("trial_id")
    if found:
        return str(found)
    match = re.search(r"([0-9a-f]{5}_\d{5})", os.path.basename(str(result.path)))
    return match.group(1) if match else os.path.basename(str(result.path))


def run_sweep(space: TuneSpace, base: IDCConfig, *, preset: str, num_samples: int = 4, scheduler: str = "asha",
              storage_path: str = "runs/tune", name: str | None = None, cache_dir: str | None = None,
              resources: TrialResources | None = None, search_seed: int = 0,
              verbose: int = 1, log: Callable[[str], None] = _log) -> SweepResult:
    """Run the sweep on the Ray cluster this process is connected to and write the ranked results.

    Args:
        space: the validated search space; ``base`` the config every trial starts from (the space's
            fixed values already applied, see :meth:`TuneSpace.base_config`).
        storage_path: Tune's storage (local folder or ``s3://``); the experiment is ``<storage>/<name>``.
        cache_dir: the shared cache (pretrained pools); default ``<storage>/cache`` when local, else
            ``runs/tune-cache``. A multi-node cluster needs it on a filesystem every node mounts.
    Returns:
        the ranked trials and where ``tune_results.md`` and ``best_config.yaml`` were written
        (``best_config_uri`` is None when no trial completed every stage).
    Raises:
        ValueError (one line) for bad settings; ClusterError when a trial cannot fit the cluster.
    """
    if num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {num_samples}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler '{scheduler}' is unknown; choose one of {', '.join(SCHEDULERS)}")
    resources = resources or default_resources()
    resources.check(get_spec(base.data.dataset, base.data.data_uri).num_classes)
    storage.listdir(storage_path)  # a missing bucket or bad credentials: one line, now
    name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local = storage.is_local(storage_path)
    storage_uri = os.path.abspath(storage_path) if local else storage_path
    experiment_uri = storage.join(storage_uri, name)
    cache_dir = os.path.abspath(cache_dir or (os.path.join(storage_uri, "cache") if local else "runs/tune-cache"))

    # 2. Work the swept values do not change, done once: the data, and the pool when it is shared.
    shared_pool = pool_shared(space, base)
    pool_in_trials = base.expert.pretrained == AUTO_POOL and not shared_pool
    data = prepare_data(base, with_train=shared_pool or pool_in_trials)
    if shared_pool:
        path = ray.get(build_pool.options(num_cpus=resources.cpus_per_actor, num_gpus=resources.expert_gpus).remote(
            base, data.real, cache_dir, space.pool_seeds, storage.current()))
        log(f"expert pool shared by every trial: {path}")
        base = apply_overrides(base, {"expert.pretrained": path})
        data = replace(data, real=None)
    setup = TrialSetup(base, storage.join(experiment_uri, ARTIFACTS), resources, space.stages, space.interim_epochs,
                       cache_dir, space.pool_seeds, storage.current())

    stages = len(stage_outers(base.schedule.outer_iters, space.stages))
    asha = ASHAScheduler(time_attr="training_iteration", max_t=stages, grace_period=min(space.grace_period, stages),
                         reduction_factor=space.reduction_factor)
    tune_path, tune_fs = _tune_storage(storage_uri)
    trainable = tune.with_resources(tune.with_parameters(condense_trial, setup=setup, prepared={data.key: data}),
                                    resources.placement())
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(space),
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=num_samples,
                                    scheduler=asha if scheduler == "asha" else None,
                                    search_alg=BasicVariantGenerator(random_state=search_seed),
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=tune_path, storage_filesystem=tune_fs, verbose=verbose),
    )
    log(f"sweep {name}: {num_samples} samples of {space.source}, {scheduler}, trial bundles {resources.bundles()}")
    grid = tuner.fit()

    rows = [TrialRow(_trial_id(r), dict(r.config or {}), dict(r.metrics or {}),
                     None if r.error is None else first_line(r.error)) for r in grid]
    ranked = rank_trials(rows, space.metric, space.mode)
    best = ranked[0] if ranked and ranked[0].completed else None
    files: dict[str, str] = {}
    if best is not None:
        config_yaml = storage.read_bytes(storage.join(best.metrics["artifact"], "config.yaml")).decode()
        files[BEST_CONFIG] = best_config_text(config_yaml, best, sweep=name, metric=space.metric)
    files[RESULTS_MD] = results_markdown(ranked, title=name, space=space, preset=preset, scheduler=scheduler,
                                         storage_uri=experiment_uri, best_config=BEST_CONFIG if best else None)
    copies: list[str] = []
    for file_name, text in files.items():
        storage.atomic_write_bytes(storage.join(experiment_uri, file_name), text.encode())
        if not local:  # jobs/condense.py --config reads a local file
            copy = os.path.join("runs", "tune", name, file_name)
            storage.atomic_write_bytes(copy, text.encode())
            copies.append(copy)
    return SweepResult(name, experiment_uri, ranked, storage.join(experiment_uri, RESULTS_MD),
                       storage.join(experiment_uri, BEST_CONFIG) if best else None, copies)


__all__ = ["PreparedData", "SweepResult", "TrialSetup", "build_pool", "condense_trial", "evaluate_stored",
           "prepare_data", "run_sweep", "sampler", "search_space", "stage_metrics"]
