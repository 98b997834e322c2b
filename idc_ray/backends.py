"""The one place a job's backend is chosen, by ``RunOptions.backend`` (``--backend``): everything
below asks the backend object it is handed, never which one it is."""

from __future__ import annotations

from typing import Callable

from idc_ray.config import IDCConfig
from idc_ray.distributed.backend import RayBackend
from idc_ray.local import LocalBackend
from idc_ray.run.backend import Backend, RunOptions
from idc_ray.run.job import JobResult
from idc_ray.run.job import condense_job as run_condense_job
from idc_ray.run.schedule import Progress

BACKENDS = {
    "local": lambda options, address, device, log: LocalBackend(device, log),
    "ray": lambda options, address, device, log: RayBackend(options, address=address, device=device, log=log),
}


def backend_for(options: RunOptions, *, address: str | None = None, device: str = "auto",
                log: Callable[[str], None] | None = None) -> Backend:
    """The backend ``options.backend`` names: ``local`` (this process, on ``device``) or ``ray``
    (the cluster at ``address``, else RAY_ADDRESS, else a local Ray; ``log`` gets the dashboard lines)."""
    if options.backend not in BACKENDS:
        raise ValueError(f"unknown backend '{options.backend}'; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[options.backend](options, address, device, log)


def condense_job(cfg: IDCConfig, output: str, options: RunOptions, *, device: str = "cpu",
                 on_progress: Callable[[Progress], None] | None = None) -> JobResult:
    """The schedule alone (checkpoints under ``output``, no artifact) on the backend ``options``
    names, in the Ray session this process has open (else a local one): for tests and benchmarks."""
    backend = backend_for(options, device=device)
    with backend.session():
        return run_condense_job(cfg, output, backend, options, on_progress=on_progress)
