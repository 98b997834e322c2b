"""A condensation job from a config to an output folder, on either backend, with the pretrained
pool it needs and the evaluation of the finished set (``jobs/condense.py``, the demo, Tune trials)."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from idc_ray import __version__, storage
from idc_ray.artifacts import record_metrics, save_condensed
from idc_ray.config import IDCConfig
from idc_ray.data import load_dataset, with_stats
from idc_ray.device import resolve_device
from idc_ray.distributed.driver import JobResult, RunOptions, condense_job, dataset_spec
from idc_ray.distributed.evaluation import RayExecutor
from idc_ray.distributed.pool import ensure_pool_on_ray
from idc_ray.distributed.schedule import Snapshots
from idc_ray.distributed.session import ray_session
from idc_ray.distributed.watch import CurveWatcher, EvalEvery
from idc_ray.engine.loop import Progress
from idc_ray.engine.plan import Plan, build_plan
from idc_ray.evaluation.protocol import check_models
from idc_ray.evaluation.report import table
from idc_ray.evaluation.run import Sequential, evaluate_artifact
from idc_ray.tune.cache import AUTO_POOL, ensure_pool


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressPrinter:
    """The job's progress line, after every inner iteration: on a terminal it is redrawn in
    place; otherwise (a job log) a line is written at the end of every outer iteration and, in
    between, whenever ``every_s`` seconds have passed since the last one, so a log never goes
    quiet for a whole outer iteration (at the paper's 100 inner iterations, minutes on a CPU).
    Each line has the rate in inner iterations per second since the first one this process saw
    (the first alone also carries the actors' start-up; a resumed job counts from where it
    resumed) and the estimated time left for the whole job at that rate."""

    def __init__(self, outer_iters: int, inner_iters: int, stream=sys.stderr, every_s: float = 10.0,
                 clock=time.perf_counter):
        self.outer_iters, self.inner_iters, self.stream = outer_iters, inner_iters, stream
        self.every_s, self.clock = every_s, clock
        self.tty = stream.isatty()
        self.losses: list[float] = []
        self.started = clock()
        self.last_line = self.started
        self.first: tuple[int, float] | None = None  # (steps done, time) at the first report

    def line(self, p: Progress, done: int, now: float) -> str:
        total = self.outer_iters * self.inner_iters
        width = 24
        bar = "#" * (width * done // total) + "." * (width - width * done // total)
        shards = "".join(f" {name} {loss:.4g}" for name, loss in p.shards.items())
        elapsed = now - self.started
        first_done, first_time = self.first
        if done > first_done:
            rate = (done - first_done) / max(now - first_time, 1e-9)
        else:
            rate = 1 / elapsed if elapsed > 0 else 0.0
        left = f"~{duration((total - done) / rate)} left" if rate > 0 else "time left unknown"
        return (f"[{bar}] outer {p.outer + 1}/{self.outer_iters} inner {p.inner + 1}/{self.inner_iters} "
                f"loss {sum(self.losses) / len(self.losses):.4g}{' (' + shards.strip() + ')' if shards else ''} "
                f"{rate:.3g} it/s {p.class_steps_per_s:.1f} class-steps/s {duration(elapsed)} elapsed, {left}")

    def __call__(self, p: Progress) -> None:
        now = self.clock()
        self.losses.extend(p.losses.values())
        done = p.outer * self.inner_iters + p.inner + 1
        if self.first is None:
            self.first = (done, now)
        end_of_outer = p.inner + 1 == self.inner_iters
        if self.tty:
            last = done == self.outer_iters * self.inner_iters
            self.stream.write("\r" + self.line(p, done, now) + ("\n" if last else ""))
        elif end_of_outer or now - self.last_line >= self.every_s:
            self.stream.write(self.line(p, done, now) + "\n")
            self.last_line = now
        self.stream.flush()
        if end_of_outer:
            self.losses = []


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


def with_pool(cfg: IDCConfig, cache: str, seeds: int, options: RunOptions, device: torch.device) -> IDCConfig:
    """``cfg`` with ``expert.pretrained: auto`` replaced by the folder of its pretrained pool,
    taken from ``cache`` or pretrained now and cached there, keyed by the settings that shape it
    (``idc_ray.tune.cache.ensure_pool``, the function Tune trials use); on the Ray backend the seeds
    run as parallel Ray tasks (``idc_ray.distributed.pool``)."""
    log = lambda message: print(f"[idc-ray] {message}", file=sys.stderr, flush=True)
    if options.backend == "ray":
        path = ensure_pool_on_ray(cfg, cache, seeds, options, log=log)
    else:
        load = lambda: load_dataset(cfg.data.dataset, cfg.data.data_uri)
        path = ensure_pool(cfg, load, cache, seeds, device=device, log=log)
    log(f"expert pool: {path}")
    return replace(cfg, expert=replace(cfg.expert, pretrained=path))


def condense_to(cfg: IDCConfig, out_dir: str | Path, device: str = "auto", progress: bool = True,
                options: RunOptions | None = None, address: str | None = None, final_eval: FinalEval | None = None,
                pool: PoolOptions | None = None, eval_every: EvalEvery | None = None) -> str:
    """Condense with ``cfg`` on the chosen backend and write the output folder.

    Checkpoints go to ``out_dir/checkpoints`` as the run goes; the artifact is written at the end.
    With ``final_eval``, the written set is then evaluated (Ray tasks on the Ray backend, while
    the session is still open; in this process otherwise), the report lands next to the
    artifact and the accuracies are added to the manifest's metrics. With
    ``expert.pretrained: auto`` the pretrained pool is found in, or first built into, the cache
    of ``pool`` (:func:`with_pool`); the written config names the pool's folder. With
    ``eval_every``, the stored set is evaluated while the job runs (``distributed/watch.py``) and
    the curve lands in the output and the manifest's ``metrics.eval_curve``.
    """
    spec = dataset_spec(cfg)
    plan = build_plan(cfg, spec)  # a bad config fails now, not after hours of pretraining or condensation
    if final_eval is not None:
        check_models(final_eval.models, spec.channels, spec.size)  # before hours of condensation
    if eval_every is not None:
        eval_every.check()
        check_models(eval_every.models, spec.channels, spec.size)
    options = options or RunOptions(backend="local")
    dev = resolve_device(device)
    pool_cache = pool_cache_dir(cfg, out_dir, pool)
    printer = ProgressPrinter(cfg.schedule.outer_iters, cfg.schedule.inner_iters) if progress else None
    # on Ray: joins the session in progress, else --address/RAY_ADDRESS, else a local Ray for the job
    with ray_session(address, log=_stderr if progress else None) if options.backend == "ray" else nullcontext():
        if pool_cache is not None:
            cfg = with_pool(cfg, pool_cache, (pool or PoolOptions()).seeds, options, dev)
            plan = replace(plan, expert=replace(plan.expert, pretrained=cfg.expert.pretrained))
        watcher, snapshots, on_progress = None, None, printer
        if eval_every is not None:
            watcher = CurveWatcher(cfg, spec, str(out_dir), eval_every, on_ray=options.backend == "ray",
                                   device=str(dev), log=_stderr)
            snapshots = Snapshots(eval_every.every, watcher.take)
            on_progress = lambda p: (watcher.poll(), printer and printer(p))
        job = condense_job(cfg, str(out_dir), options, device=dev, on_progress=on_progress,
                           spec=spec, plan=plan, snapshots=snapshots)
        path = _save(cfg, plan, out_dir, job, dev, options)
        if watcher is not None:
            record_metrics(path, {"eval_curve": watcher.finish()})
        if final_eval is not None:  # on Ray while the session is still open
            _evaluate_written(path, final_eval, options, str(dev))
    return path


def _save(cfg: IDCConfig, plan: Plan, out_dir: str | Path, job: JobResult, dev: torch.device, options: RunOptions) -> str:
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
        "device": str(dev),
        "backend": options.backend,
        "placement": job.placement,
        "restarts": job.restarts,
        "code_version": __version__,
    }
    return save_condensed(out_dir, job.stored, job.labels, config_yaml=cfg.to_yaml(), meta=meta,
                          spec=with_stats(job.spec, cfg.data.stats))


def _evaluate_written(manifest_uri: str, final_eval: FinalEval, options: RunOptions, device: str) -> None:
    executor = RayExecutor(log=_stderr) if options.backend == "ray" else Sequential(device, log=_stderr)
    results = evaluate_artifact(manifest_uri, models=final_eval.models, repeat=final_eval.repeat,
                                epochs=final_eval.epochs, executor=executor)
    summary = {name: {k: m[k] for k in ("mean", "std", "best_mean", "best_std", "epochs")}
               for name, m in results["models"].items()}  # best: selected on the test set (report.METRIC)
    record_metrics(manifest_uri, {"eval": summary})
    print(table([results]), file=sys.stderr, flush=True)
