"""Run a condensation from a config to an output folder (used by jobs/condense.py and the demo)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from idc_ray import __version__
from idc_ray.artifacts import save_condensed
from idc_ray.config import IDCConfig, resolve
from idc_ray.distributed.driver import RunOptions, condense_job
from idc_ray.engine.loop import CondenseResult, Progress


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first visible CUDA device (Ray sets CUDA_VISIBLE_DEVICES per actor), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but no CUDA device is visible; use --device cpu or auto")
    return device


def connect(address: str | None) -> str | None:
    """Join or start Ray (imported here so the local backend never needs Ray); dashboard URL."""
    from idc_ray.distributed.ray_group import connect as ray_connect

    return ray_connect(address)


class ProgressPrinter:
    """One status line per inner iteration on a terminal, one line per outer iteration otherwise."""

    def __init__(self, outer_iters: int, inner_iters: int, stream=sys.stderr):
        self.outer_iters, self.inner_iters, self.stream = outer_iters, inner_iters, stream
        self.tty = stream.isatty()
        self.losses: list[float] = []
        self.started = time.perf_counter()

    def __call__(self, p: Progress) -> None:
        self.losses.extend(p.losses.values())
        done = p.outer * self.inner_iters + p.inner + 1
        total = self.outer_iters * self.inner_iters
        width = 24
        bar = "#" * (width * done // total) + "." * (width - width * done // total)
        shards = "".join(f" {name} {loss:.4g}" for name, loss in p.shards.items())
        line = (f"[{bar}] outer {p.outer + 1}/{self.outer_iters} inner {p.inner + 1}/{self.inner_iters} "
                f"loss {sum(self.losses) / len(self.losses):.4g}{' (' + shards.strip() + ')' if shards else ''} "
                f"{p.class_steps_per_s:.1f} class-steps/s {time.perf_counter() - self.started:.0f}s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == total else ""))
        elif p.inner + 1 == self.inner_iters:
            self.stream.write(line + "\n")
        self.stream.flush()
        if p.inner + 1 == self.inner_iters:
            self.losses = []


def condense_to(cfg: IDCConfig, out_dir: str | Path, device: str = "auto", progress: bool = True,
                options: RunOptions | None = None, address: str | None = None,
                storage_options: dict | None = None) -> str:
    """Condense with ``cfg`` on the chosen backend and write the output folder.

    Checkpoints go to ``out_dir/checkpoints`` as the run goes; the artifact is written at the end.
    """
    options = options or RunOptions(backend="local")
    dev = resolve_device(device)
    started_ray = False
    if options.backend == "ray":
        import ray

        started_ray = not ray.is_initialized()
        url = connect(address)
        if progress and url:
            print(f"Ray dashboard: {url if url.startswith('http') else 'http://' + url}", file=sys.stderr, flush=True)
    printer = ProgressPrinter(cfg.schedule.outer_iters, cfg.schedule.inner_iters) if progress else None
    try:
        job = condense_job(cfg, str(out_dir), options, device=dev, on_progress=printer,
                           storage_options=storage_options)
    finally:
        if started_ray:  # leave a cluster we joined alone; shut down what we started, quietly
            import ray

            ray.shutdown()
    result = CondenseResult(job.stored, job.labels, resolve(cfg), job.loss_history, job.seconds)
    meta = {
        "dataset": cfg.data.dataset,
        "ipc": cfg.synset.ipc,
        "factor": cfg.synset.factor,
        "formation": cfg.synset.formation,
        "formation_axis": cfg.synset.formation_axis,
        "bound": cfg.synset.bound,
        "resolved": result.resolved.to_dict(),
        "loss_history": result.loss_history,
        "seconds": result.seconds,
        "device": str(dev),
        "backend": options.backend,
        "placement": job.placement,
        "restarts": job.restarts,
        "code_version": __version__,
    }
    return save_condensed(out_dir, result.stored, result.labels, config_yaml=cfg.to_yaml(), meta=meta,
                          spec=job.spec, storage_options=storage_options)
