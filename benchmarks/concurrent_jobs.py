"""Several jobs on one cluster: three condensations (one with --eval-every) and a Tune sweep
submitted at once, as `ray job submit` submits them, to a local head whose CPUs cover about half
of what they reserve; every job must finish with the bytes it gives alone.

    python benchmarks/concurrent_jobs.py [--tiny] [--outer 20] [--inner 5] [--head-cpus 2] [--workdir DIR]

Each job reserves 1 CPU (a matcher actor and an expert actor at 0.5 CPU each; the sweep's one
trial the same), so 4 jobs ask for 4 CPUs of a 2-CPU head and two of them wait. While they run,
the placement groups are read from the state API every second (how many jobs hold their group
at once, how many wait). Then each job's log is searched for its "waiting for ..." line, each
stored set compared with the in-process run of its config.yaml at one torch thread (the bytes it
gives alone: the backends give the same bytes, tests/distributed/test_invariance.py), and,
unless --tiny, each job is submitted again alone for its wall time alone. Writes
benchmarks/results/concurrent_jobs[_tiny].json; tests/distributed/test_load.py runs --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import head_env, ray_head, write  # noqa: E402

os.environ.update(head_env())  # before Ray is imported: it reads RAY_AUTH_MODE once (the clients send the token)

from idc_ray.artifacts import load_condensed  # noqa: E402
from idc_ray.backends import condense_job  # noqa: E402
from idc_ray.config import load_yaml  # noqa: E402
from idc_ray.run.backend import RunOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ACTORS = ["--num-actors", "1", "--cpus-per-actor", "0.5"]  # 1 CPU per job: a matcher and an expert actor
# a condensation's planner may add a second expert actor after its probe (1.5 CPUs); Tune trials keep one
CONDENSE_ACTORS = [*ACTORS, "--expert-actors", "1"]
DONE = ("SUCCEEDED", "FAILED", "STOPPED")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the test's size: 4 outer x 2 inner, 1 stage, no runs alone")
    p.add_argument("--outer", type=int, default=20, help="outer iterations of each job (default 20)")
    p.add_argument("--inner", type=int, default=5, help="inner iterations (default 5)")
    p.add_argument("--stages", type=int, default=2, help="the sweep's stages (evaluations; default 2)")
    p.add_argument("--head-cpus", type=int, default=2, help="the head's CPUs (default 2: half of the 4 reserved)")
    p.add_argument("--workdir", help="where outputs and job logs go (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.tiny:
        args.outer, args.inner, args.stages = 4, 2, 1
    return args


def jobs(out: Path, outer: int, inner: int, stages: int) -> dict[str, dict]:
    """Submission id -> entrypoint, metadata and output of the four jobs."""
    sizes = ["--set", f"schedule.outer_iters={outer}", "--set", f"schedule.inner_iters={inner}"]
    found = {}
    for seed in range(3):
        name = f"idc-load-condense-{seed}"
        curve = ["--eval-every", str(max(1, outer // 2)), "--eval-models", "convnet3", "--eval-epochs", "1"] if seed == 0 else []
        argv = ["jobs/condense.py", "--preset", "smoke", *sizes, "--set", f"schedule.seed={seed}", *CONDENSE_ACTORS, *curve,
                "--checkpoint-every", str(outer), "--output", str(out / name), "--quiet"]
        found[name] = {"argv": argv, "output": str(out / name), "kind": "condense"}
    name = "idc-load-tune"
    space = out / "space.yaml"  # one trial of tune_spaces/lr.yaml's data learning rate, its stages as ASHA rungs
    out.mkdir(parents=True, exist_ok=True)
    space.write_text(f"preset: smoke\nstages: {stages}\nparams: {{match.lr_img: {{type: choice, values: [0.01]}}}}\n")
    argv = ["jobs/tune.py", "--space", str(space), "--num-samples", "1", *sizes,
            *ACTORS, "--storage-path", str(out / name), "--name", "sweep", "--quiet"]
    found[name] = {"argv": argv, "output": str(out / name / "sweep"), "kind": "tune"}
    for name, job in found.items():
        job["entrypoint"] = " ".join(["python", *job["argv"]])
        job["metadata"] = {"idc_job": job["kind"], "preset": "smoke", "output": job["output"]}
    return found


def submit(client, specs: dict[str, dict], tag: str = "") -> dict[str, str]:
    """What `ray job submit --submission-id ID --metadata-json ... --working-dir . -- ENTRYPOINT`
    does, for each job at once; returns submission id -> id."""
    return {name: client.submit_job(entrypoint=job["entrypoint"], submission_id=name + tag, metadata=job["metadata"],
                                     runtime_env={"working_dir": str(ROOT), "excludes": ["runs/", "benchmarks/results/"]})
            for name, job in specs.items()}


def watch_groups(address: str, stop: threading.Event, samples: list[dict]) -> None:
    """Every second: how many placement groups are held (CREATED) and how many wait (PENDING)."""
    from ray.util.state import list_placement_groups

    while not stop.wait(1.0):
        try:
            groups = list_placement_groups(address=address, limit=1000, raise_on_missing_output=False)
        except Exception as e:  # noqa: BLE001 - a busy dashboard misses a sample, the run goes on
            samples.append({"error": str(e)[:200]})
            continue
        states = [g.state for g in groups]
        samples.append({"t": time.time(), "created": states.count("CREATED"), "pending": states.count("PENDING")})


def wait_all(client, ids: dict[str, str], timeout_s: float = 1800) -> dict[str, dict]:
    """Wait for every job; returns its status, wall time and the lines that matter from its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        infos = {name: client.get_job_info(sid) for name, sid in ids.items()}
        if all(str(i.status.value if hasattr(i.status, "value") else i.status) in DONE for i in infos.values()):
            break
        time.sleep(1.0)
    done = {}
    for name, info in infos.items():
        logs = client.get_job_logs(ids[name])
        done[name] = {"status": str(getattr(info.status, "value", info.status)), "metadata": info.metadata,
                      "entrypoint": info.entrypoint, "wall_s": (info.end_time - info.start_time) / 1000
                      if info.end_time else None, "start": info.start_time / 1000,
                      "end": info.end_time / 1000 if info.end_time else None,
                      "waiting_lines": [ln for ln in logs.splitlines() if "waiting for " in ln], "log": logs}
    return done


def artifact_of(job: dict) -> Path:
    """The stored set a job wrote: the condensation's output, or the sweep's one trial's artifact."""
    if job["kind"] == "condense":
        return Path(job["output"])
    return next(Path(job["output"], "artifacts").glob("*/manifest.json")).parent


def alone_bytes_equal(artifact: Path) -> bool:
    """The stored set equals the in-process run of its own config.yaml (1 torch thread, as the
    0.5-CPU actors), labels included."""
    stored, labels, _ = load_condensed(artifact)
    cfg = load_yaml(artifact / "config.yaml")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as out:
            alone = condense_job(cfg, out, RunOptions(backend="local"))
    finally:
        torch.set_num_threads(before)
    return torch.equal(stored, alone.stored) and torch.equal(labels, alone.labels)


def held_at_once(done: dict[str, dict]) -> int:
    """The most jobs running at once by their own start and end times."""
    marks = sorted([(d["start"], 1) for d in done.values()] + [(d["end"], -1) for d in done.values() if d["end"]])
    running = peak = 0
    for _, step in marks:
        running += step
        peak = max(peak, running)
    return peak


def run(args: argparse.Namespace, work: Path) -> dict:
    from ray.job_submission import JobSubmissionClient

    specs = jobs(work / "together", args.outer, args.inner, args.stages)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    with ray_head(args.head_cpus, work / "ray-start.log", ROOT) as ports:
        address = f"http://127.0.0.1:{ports['dashboard']}"
        client = connect(JobSubmissionClient, address)
        samples, stop = [], threading.Event()
        watcher = threading.Thread(target=watch_groups, args=(address, stop, samples), daemon=True)
        started = time.time()
        ids = submit(client, specs)
        watcher.start()
        together = wait_all(client, ids)
        stop.set()
        watcher.join()
        wall_together = max(d["end"] or time.time() for d in together.values()) - started
        alone = {} if args.tiny else alone_walls(client, work, args)
    for name, d in together.items():
        (work / "logs" / f"{name}.log").write_text(d.pop("log"))
        d["bytes_equal_alone"] = d["status"] == "SUCCEEDED" and alone_bytes_equal(artifact_of(specs[name]))
        d["artifact"] = str(artifact_of(specs[name])) if d["status"] == "SUCCEEDED" else None
    held = [s for s in samples if "created" in s]
    return {"head_cpus": args.head_cpus, "cpus_reserved_per_job": 1.0, "outer_iters": args.outer, "stages": args.stages,
            "inner_iters": args.inner, "workdir": str(work), "jobs": together,
            "wall_s_together": wall_together, "wall_s_alone": alone,
            "wall_s_alone_sum": sum(alone.values()) if alone else None,
            "jobs_held_at_once": held_at_once(together),
            "groups_held_at_once_max": max((s["created"] for s in held), default=None),
            "groups_waiting_max": max((s["pending"] for s in held), default=None),
            "jobs_that_said_they_waited": sorted(n for n, d in together.items() if d["waiting_lines"]),
            "all_succeeded": all(d["status"] == "SUCCEEDED" for d in together.values()),
            "all_bytes_equal_alone": all(d["bytes_equal_alone"] for d in together.values())}


def connect(client_class, address: str, timeout_s: float = 120):
    """The job client, once the head's job agent answers (it needs a moment after `ray start`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = client_class(address)
            client.list_jobs()
            return client
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def alone_walls(client, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Each job submitted again on its own (fresh outputs), one after the other: its wall time."""
    walls = {}
    for name, job in jobs(work / "alone", args.outer, args.inner, args.stages).items():
        done = wait_all(client, submit(client, {name: job}, tag="-alone"))[name]
        if done["status"] != "SUCCEEDED":
            raise RuntimeError(f"{name} alone: {done['status']}\n{done['log'][-3000:]}")
        walls[name] = done["wall_s"]
    return walls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        result = run(args, Path(args.workdir))
    else:
        with tempfile.TemporaryDirectory() as work:
            result = run(args, Path(work))
    path = write("concurrent_jobs_tiny" if args.tiny else "concurrent_jobs", result)
    print(json.dumps({k: v for k, v in result.items() if k != "jobs"}, indent=2))
    print(f"written to {path}")
    return 0 if result["all_succeeded"] and result["all_bytes_equal_alone"] else 1


if __name__ == "__main__":
    sys.exit(main())
