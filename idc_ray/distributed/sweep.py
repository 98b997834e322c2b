"""The Tune sweep's driver: :func:`run_sweep` does once what every trial shares (the data, and
the expert pool when no swept value changes it), starts the trials of
:func:`~idc_ray.distributed.trial.condense_trial` with the samplers of
:mod:`~idc_ray.distributed.sweep_space` under ASHA (the stages are its rungs), and writes the
ranked results (``tune_results.md``) and the best trial's config (``best_config.yaml``).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from idc_ray import storage
from idc_ray.config import IDCConfig, apply_overrides
from idc_ray.data import get_spec
from idc_ray.distributed.planner import plural
from idc_ray.distributed.resources import WAIT_NOTICE_S, TrialResources, default_resources, waiting_line
from idc_ray.distributed.sweep_space import search_space
from idc_ray.distributed.trial import PreparedData, TrialSetup, build_pool, condense_trial, log_line, prepare_data
from idc_ray.errors import first_line
from idc_ray.tune.cache import AUTO_POOL, pool_shared
from idc_ray.tune.results import TrialRow, best_config_text, rank_trials, results_markdown
from idc_ray.tune.space import TuneSpace, stage_outers

RESULTS_MD = "tune_results.md"
BEST_CONFIG = "best_config.yaml"
ARTIFACTS = "artifacts"
SCHEDULERS = ("asha", "fifo")
Log = Callable[[str], None]


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
              verbose: int = 1, log: Log = log_line) -> SweepResult:
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
    base, data = _shared_work(space, base, resources, cache_dir, log)
    setup = TrialSetup(base, storage.join(experiment_uri, ARTIFACTS), resources, space.stages, space.interim_epochs,
                       cache_dir, space.pool_seeds, storage.current())
    tuner = _tuner(space, setup, data, name=name, num_samples=num_samples, scheduler=scheduler,
                   storage_uri=storage_uri, search_seed=search_seed, verbose=verbose,
                   callbacks=[WaitingTrials(resources, log)])
    log(f"sweep {name}: {num_samples} samples of {space.source}, {scheduler}, trial bundles {resources.bundles()}")
    grid = tuner.fit()
    rows = [TrialRow(_trial_id(r), dict(r.config or {}), dict(r.metrics or {}),
                     None if r.error is None else first_line(r.error)) for r in grid]
    return _write_results(rank_trials(rows, space.metric, space.mode), space, name=name, preset=preset,
                          scheduler=scheduler, experiment_uri=experiment_uri, local=local)


def _shared_work(space: TuneSpace, base: IDCConfig, resources: TrialResources, cache_dir: str,
                 log: Log) -> tuple[IDCConfig, PreparedData]:
    """2. Work the swept values do not change, done once: the data, and the pool when it is shared
    (then ``base`` names the pool's folder). Returns the trials' base config and the data."""
    shared_pool = pool_shared(space, base)
    pool_in_trials = base.expert.pretrained == AUTO_POOL and not shared_pool
    data = prepare_data(base, with_train=shared_pool or pool_in_trials)
    if shared_pool:
        path = ray.get(build_pool.options(num_cpus=resources.cpus_per_actor, num_gpus=resources.expert_gpus).remote(
            base, data.real, cache_dir, space.pool_seeds, storage.current()))
        log(f"expert pool shared by every trial: {path}")
        base = apply_overrides(base, {"expert.pretrained": path})
        data = replace(data, real=None)
    return base, data


class WaitingTrials(tune.Callback):
    """One line per trial whose placement group waits longer than ``WAIT_NOTICE_S`` (other jobs on
    the cluster hold what it needs), as a condensation says it of its own group."""

    def __init__(self, resources: TrialResources, log: Log):
        self.bundles, self.log = resources.bundles(), log
        self.what = f"trial %s ({plural(resources.num_actors, 'matcher actor')} + 1 expert actor)"
        self.pending_since: dict[str, float] = {}
        self.said: set[str] = set()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        for trial in trials:
            if trial.status != "PENDING" or trial.trial_id in self.said:
                continue
            if now - self.pending_since.setdefault(trial.trial_id, now) >= WAIT_NOTICE_S:
                self.said.add(trial.trial_id)
                self.log(waiting_line(self.bundles, self.what % trial.trial_id))


def _tuner(space: TuneSpace, setup: TrialSetup, data: PreparedData, *, name: str, num_samples: int, scheduler: str,
           storage_uri: str, search_seed: int, verbose: int, callbacks: list) -> tune.Tuner:
    """The Tuner of the sweep: one trial per sample, each reserving ``setup.resources``' bundles
    (1.), handed the shared data by reference (2.), stopped early by ASHA at its stages (3.)."""
    stages = len(stage_outers(setup.base.schedule.outer_iters, space.stages))
    asha = ASHAScheduler(time_attr="training_iteration", max_t=stages, grace_period=min(space.grace_period, stages),
                         reduction_factor=space.reduction_factor)
    tune_path, tune_fs = _tune_storage(storage_uri)
    trainable = tune.with_resources(tune.with_parameters(condense_trial, setup=setup, prepared={data.key: data}),
                                    setup.resources.placement())
    return tune.Tuner(
        trainable,
        param_space=search_space(space),
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=num_samples,
                                    scheduler=asha if scheduler == "asha" else None,
                                    search_alg=BasicVariantGenerator(random_state=search_seed),
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=tune_path, storage_filesystem=tune_fs, verbose=verbose,
                                  callbacks=callbacks),
    )


def _write_results(ranked: list[TrialRow], space: TuneSpace, *, name: str, preset: str, scheduler: str,
                   experiment_uri: str, local: bool) -> SweepResult:
    """Write ``tune_results.md`` and, when a trial completed every stage, ``best_config.yaml`` into
    the experiment folder (and local copies under ``runs/tune/<name>`` when it is remote)."""
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


__all__ = ["SweepResult", "run_sweep"]
