"""A condensation job from a config to an output folder on the backend it is handed, with the
pretrained pool it needs, checkpoints and resume, the ``--eval-every`` curve and the evaluation of
the finished set (``jobs/condense.py``, the demo, Tune trials, continual stages)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from idc_ray import __version__, storage
from idc_ray.artifacts import record_metrics, save_condensed
from idc_ray.checkpoint import Checkpoint, CheckpointStore
from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec, get_spec, load_dataset, with_stats
from idc_ray.engine.matcher import stack_stored
from idc_ray.engine.plan import Plan, build_plan
from idc_ray.evaluation.protocol import check_models
from idc_ray.evaluation.report import table
from idc_ray.evaluation.run import evaluate_artifact
from idc_ray.run.backend import Backend, RunOptions, stderr_line
from idc_ray.run.curve import CurveWatcher, EvalEvery, EvaluationsFailed
from idc_ray.run.hooks import RunHooks, Snapshots
from idc_ray.run.recovery import run_with_restarts
from idc_ray.run.schedule import Progress
from idc_ray.tune.cache import AUTO_POOL

log = logging.getLogger("idc_ray")


@dataclass(frozen=True)
class FinalEval:
    """``jobs/condense.py --eval-models``: test models trained on the finished set (the paper's
    protocol, ``idc_ray.evaluation``); ``None`` fields take the config's ``eval`` section."""

    models: tuple[str, ...]
    repeat: int | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class PoolOptions:
    """Where ``expert.pretrained: auto`` keeps its pretrained pool, and how many networks it holds."""

    cache: str | None = None  # None: <output>/cache; pools live at <cache>/pools/<key> (as Tune's)
    seeds: int = 10  # the published ImageNet-100 pool: 10 seeds (settings sheet)


@dataclass(frozen=True)
class Run:
    """One condensation job: what to condense, where to, on which backend, and what to do around it."""

    cfg: IDCConfig
    output: str
    backend: Backend
    options: RunOptions = RunOptions()
    on_progress: Callable[[Progress], None] | None = None  # the progress line (cli.ProgressPrinter)
    final_eval: FinalEval | None = None
    pool: PoolOptions | None = None
    eval_every: EvalEvery | None = None


@dataclass
class JobResult:
    spec: DatasetSpec
    stored: torch.Tensor
    labels: torch.Tensor
    loss_history: list[float]
    seconds: float
    restarts: int = 0
    placement: list[dict] = field(default_factory=list)
    upsampler: dict | None = None  # formation learned: the trained upsampler's weights


def condense_to(run: Run) -> str:
    """Condense ``run.cfg`` on ``run.backend`` and write the output folder; returns the manifest's URI.

    Checkpoints go to ``output/checkpoints`` as the run goes; the artifact is written at the end.
    With ``eval_every``, the stored set is evaluated while the job runs (``run/curve.py``) and the
    curve lands in the output and the manifest's ``metrics.eval_curve``. With ``final_eval``, the
    written set is then evaluated by the backend's executor while its session is still open, the
    report lands next to the artifact and the accuracies in the manifest's metrics. With
    ``expert.pretrained: auto`` the pretrained pool is found in, or first built into, the cache of
    ``pool``; the written config names the pool's folder.
    """
    cfg, backend = run.cfg, run.backend
    spec = dataset_spec(cfg)
    plan = build_plan(cfg, spec)  # a bad config fails now, not after hours of pretraining or condensation
    check_evaluations(run, spec)
    pool_cache = pool_cache_dir(cfg, run.output, run.pool)
    with backend.session():
        if pool_cache is not None:
            cfg, plan = with_pool(cfg, plan, backend, pool_cache, (run.pool or PoolOptions()).seeds)
        watcher, snapshots, on_progress = None, None, run.on_progress
        if run.eval_every is not None:
            watcher = CurveWatcher(cfg, spec, run.output, run.eval_every, backend.curve_runner(), stderr_line)
            snapshots = Snapshots(run.eval_every.every, watcher.take)
            on_progress = lambda p: (watcher.poll(), run.on_progress and run.on_progress(p))
        job = condense_job(cfg, run.output, backend, run.options, spec=spec, plan=plan, on_progress=on_progress,
                           snapshots=snapshots)
        path = save(cfg, plan, run.output, job, backend)
        if watcher is not None:
            record_metrics(path, {"eval_curve": watcher.finish()})
        if run.final_eval is not None:
            evaluate_written(path, run.final_eval, backend)
    if watcher is not None and watcher.failed and run.eval_every.strict:
        raise EvaluationsFailed(path, watcher.failed)
    return path


def condense_job(cfg: IDCConfig, output: str, backend: Backend, options: RunOptions, *, spec: DatasetSpec | None = None,
                 plan: Plan | None = None, on_progress: Callable[[Progress], None] | None = None,
                 snapshots: Snapshots | None = None) -> JobResult:
    """The whole schedule on ``backend``, checkpointing under ``output`` (and resuming from there
    with ``options.resume``). ``spec``, ``plan``: the run's, when the caller has them already."""
    spec = spec or dataset_spec(cfg)
    plan = plan or build_plan(cfg, spec)
    ckpts = CheckpointStore(output)
    ckpts.check_reachable()
    hooks = RunHooks(cfg, store=ckpts, every=options.checkpoint_every, start=resume_point(cfg, ckpts, options, output),
                     on_progress=on_progress, snapshots=snapshots)
    started = time.perf_counter()
    with backend.place(cfg, plan, spec) as attempts:
        states, shared, restarts = run_with_restarts(cfg, attempts, hooks, window=options.window,
                                                     max_restarts=options.max_restarts)
    stored, labels = stack_stored({c: s["data"] for c, s in states.items()})
    return JobResult(spec, stored, labels, hooks.history, time.perf_counter() - started, restarts, attempts.placement,
                     shared["net"] if shared else None)


def dataset_spec(cfg: IDCConfig) -> DatasetSpec:
    """The spec every process must share. Datasets whose statistics are measured at load
    (speech) are loaded once here, so all matchers normalise with the same numbers."""
    spec = get_spec(cfg.data.dataset, cfg.data.data_uri)
    if spec.measure_stats:
        spec = load_dataset(cfg.data.dataset, cfg.data.data_uri).spec
    return spec


def check_evaluations(run: Run, spec: DatasetSpec) -> None:
    """The test models of ``final_eval`` and ``eval_every`` fit the data: checked before hours of work."""
    if run.final_eval is not None:
        check_models(run.final_eval.models, spec.channels, spec.size)
    if run.eval_every is not None:
        run.eval_every.check()
        check_models(run.eval_every.models, spec.channels, spec.size)


def resume_point(cfg: IDCConfig, ckpts: CheckpointStore, options: RunOptions, output: str) -> Checkpoint | None:
    """The checkpoint ``--resume`` continues from (None: start from the beginning)."""
    if not options.resume:
        return None
    start = ckpts.latest()
    if start is None:
        log.info("--resume: no checkpoint under %s, starting from the beginning", output)
        return None
    check_resume(cfg, start)
    log.info("resuming from the checkpoint after outer iteration %d", start.outer)
    return start


def check_resume(cfg: IDCConfig, ckpt: Checkpoint) -> None:
    """A checkpoint continues only the run it came from (outer_iters may grow)."""
    theirs, mine = dict(ckpt.config), cfg.to_dict()
    theirs_sched, mine_sched = dict(theirs.get("schedule", {})), dict(mine["schedule"])
    theirs_sched.pop("outer_iters", None)
    mine_sched.pop("outer_iters", None)
    if {**theirs, "schedule": theirs_sched} != {**mine, "schedule": mine_sched}:
        raise ValueError("--resume: the checkpoint in the output folder was written with another config; "
                         "use the same --preset/--config/--set, or another --output")
    if ckpt.outer > cfg.schedule.outer_iters:
        raise ValueError(f"--resume: the checkpoint is at outer {ckpt.outer}, beyond --outer-iters {cfg.schedule.outer_iters}")


def pool_cache_dir(cfg: IDCConfig, out_dir: str | Path, pool: PoolOptions | None) -> str | None:
    """The cache folder of ``cfg``'s pretrained pool (``pool.cache``, else ``<output>/cache``), or
    None when ``cfg`` names its pool itself. Checked before any work starts.

    Raises:
        ValueError: pool options for a config without ``expert.pretrained: auto``, fewer than one
            seed, or a cache in object storage (the expert reads the pool through the file system,
            so it must be a local folder or one every node mounts).
    """
    if cfg.expert.pretrained != AUTO_POOL:
        if pool is not None:
            raise ValueError(f"--pool-cache/--pool-seeds apply to expert.pretrained=auto (the imagenet100 preset), "
                             f"not to expert.pretrained={cfg.expert.pretrained}")
        return None
    pool = pool or PoolOptions()
    if pool.seeds < 1:
        raise ValueError(f"--pool-seeds must be at least 1, got {pool.seeds}")
    if pool.cache is not None:
        if not storage.is_local(pool.cache):
            raise ValueError(f"--pool-cache {pool.cache}: the pool must be a local folder or one every node mounts, "
                             "not object storage (the expert reads it through the file system)")
        return pool.cache
    if not storage.is_local(str(out_dir)):
        raise ValueError(f"expert.pretrained=auto with --output {out_dir}: pass --pool-cache DIR, a folder every node "
                         "mounts, for the pretrained pool (the expert reads it through the file system)")
    return str(Path(out_dir) / "cache")


def with_pool(cfg: IDCConfig, plan: Plan, backend: Backend, cache: str, seeds: int) -> tuple[IDCConfig, Plan]:
    """``cfg`` and ``plan`` with ``expert.pretrained: auto`` replaced by the folder of its pretrained
    pool, taken from ``cache`` or pretrained now by the backend and cached there, keyed by the
    settings that shape it (``idc_ray.tune.cache``, shared with Tune trials)."""
    say = lambda message: stderr_line(f"[idc-ray] {message}")
    path = backend.pretrained_pool(cfg, cache, seeds, say)
    say(f"expert pool: {path}")
    cfg = replace(cfg, expert=replace(cfg.expert, pretrained=path))
    return cfg, replace(plan, expert=replace(plan.expert, pretrained=path))


def save(cfg: IDCConfig, plan: Plan, out_dir: str, job: JobResult, backend: Backend) -> str:
    """The artifact (``idc_ray.artifacts``) with what the run was and how it went in the manifest."""
    meta = {
        "dataset": cfg.data.dataset,
        "ipc": cfg.synset.ipc,
        "factor": cfg.synset.factor,
        "formation": plan.resolved.formation,
        "formation_axis": cfg.synset.formation_axis,
        "bound": cfg.synset.bound,
        "resolved": plan.resolved.to_dict(),
        "loss_history": job.loss_history,
        "seconds": job.seconds,
        "device": backend.device,
        "backend": backend.name,
        "placement": job.placement,
        "restarts": job.restarts,
        "code_version": __version__,
    }
    return save_condensed(out_dir, job.stored, job.labels, config_yaml=cfg.to_yaml(), meta=meta,
                          spec=with_stats(job.spec, cfg.data.stats), upsampler=job.upsampler)


def evaluate_written(manifest_uri: str, final_eval: FinalEval, backend: Backend) -> None:
    """``--eval-models``: the written set evaluated by the backend's executor, accuracies in the manifest."""
    results = evaluate_artifact(manifest_uri, models=final_eval.models, repeat=final_eval.repeat,
                                epochs=final_eval.epochs, executor=backend.executor())
    summary = {name: {k: m[k] for k in ("mean", "std", "best_mean", "best_std", "epochs")}
               for name, m in results["models"].items()}  # best: selected on the test set (report.METRIC)
    record_metrics(manifest_uri, {"eval": summary})
    stderr_line(table([results]))
