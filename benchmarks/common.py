"""Shared helpers for the benchmarks: the paper's matching setting and where results go."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_env() -> dict:
    """The environment of a head started with :func:`ray_head` and of the `ray` commands and
    clients that talk to it: this venv's `python` first on the PATH (the jobs' entrypoints),
    metrics every second, token authentication, and no RAY_ADDRESS pointing elsewhere."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["RAY_metrics_report_interval_ms"] = "1000"
    env["RAY_AUTH_MODE"] = "token"  # the head enables token auth; the job CLI must send the token
    env.pop("RAY_ADDRESS", None)
    return env


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def ray_head(num_cpus: int, log_path: Path, cwd: Path) -> Iterator[dict[str, int]]:
    """A head of its own with the job server (`ray start --head --block`), every port explicit
    (another Ray on this machine holds the default ones) and its own short temp dir (so its
    address file never redirects a later local Ray); yields its ports by name. Stopped by
    signalling `ray start` alone, which drains the node and stops its processes (signalling the
    whole group first kills the GCS and the drain then waits 30 s for it), then killing whatever
    of its process group is left: `ray stop` would stop every Ray process of the user."""
    names = ("gcs", "dashboard", "metrics", "agent-listen", "agent-grpc", "runtime-env", "client")
    ports = {name: free_port() for name in names}
    temp_dir = tempfile.mkdtemp(prefix="rayh")
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={ports['gcs']}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
             f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent-listen']}",
             f"--dashboard-agent-grpc-port={ports['agent-grpc']}", f"--runtime-env-agent-port={ports['runtime-env']}",
             f"--ray-client-server-port={ports['client']}", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
             "--num-gpus=0", "--disable-usage-stats"],
            cwd=cwd, env=head_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not (listening(ports["gcs"]) and listening(ports["dashboard"])):
                log.seek(0)
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start failed: {log.read()[-3000:]}")
                time.sleep(0.5)
            yield ports
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            shutil.rmtree(temp_dir, ignore_errors=True)
