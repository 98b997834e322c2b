"""Shared helpers for the benchmarks: the paper's matching setting and where results go."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from idc_ray.config import apply_overrides, load_preset

RESULTS = Path(__file__).resolve().parent / "results"

# ConvNet-3 (width 128) at ipc 10, factor 2, batch_real 64, as in the benchmark issue.
PAPER_STEP = {
    "synset.ipc": 10,
    "synset.factor": 2,
    "match.batch_real": 64,
    "expert.model": "convnet3",
    "expert.width": 128,
    "expert.n_data": 500,
}


def use_actor_allocator() -> None:
    """Re-run this script under the allocator settings the job gives its actors (actors.ALLOCATOR_ENV),
    so in-process and Ray measurements compare the same arithmetic on the same allocator."""
    from idc_ray.distributed.actors import ALLOCATOR_ENV, keeps_freed_memory

    if not keeps_freed_memory():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})


def paper_config(dataset: str = "mnist5k"):
    return apply_overrides(load_preset("mnist5k-demo"), {**PAPER_STEP, "data.dataset": dataset})


def machine(device: str | torch.device = "cpu") -> dict:
    """What a result was measured on: CPU model, cores, torch threads, device, versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from idc_ray.distributed.actors import keeps_freed_memory

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "allocator": "keeps freed memory (actors.ALLOCATOR_ENV)" if keeps_freed_memory() else "glibc defaults",
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def results_dir() -> Path:
    """benchmarks/results, or $IDC_BENCH_RESULTS (the benchmark tests write to a temporary folder)."""
    return Path(os.environ.get("IDC_BENCH_RESULTS") or RESULTS)


def write(name: str, payload: dict, device: str | torch.device = "cpu") -> Path:
    """Write results/<name>.json atomically, with the machine and the date (UTC) it was measured on."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(device), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               **payload}, indent=2))
    tmp.replace(path)
    return path


def timed_job(cfg, options) -> tuple[Any, dict]:
    """A condensation through the job (``idc_ray.backends.condense_job``, in the Ray session this
    process has) and its timing: the median gap between two finished inner iterations (the first
    carries the actors' start-up), the wall time with start-up, and the first step's delay."""
    from idc_ray.backends import condense_job

    marks: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        job = condense_job(cfg, out, options, on_progress=lambda p: marks.append(time.perf_counter()))
        wall = time.perf_counter() - started
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return job, {"seconds_per_inner_iteration": statistics.median(gaps) if gaps else float("nan"),
                 "inner_iterations": len(marks), "gaps_s": gaps, "wall_s_with_startup": wall,
                 "first_inner_s_after_start": marks[0] - started if marks else None}
