"""Load: a job whose placement group waits says so once and runs when the group is free; a job
leaves the object store as it found it; several jobs submitted at once to one head all finish
with the bytes each gives alone (benchmarks/concurrent_jobs.py at its smallest size)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group

from idc_ray.artifacts import load_condensed
from idc_ray.distributed.backend import reserve
from idc_ray.distributed.session import object_store_use

ROOT = Path(__file__).resolve().parents[2]


def test_a_waiting_placement_group_says_so_once_and_is_granted_when_freed(ray_cluster, idc_log):
    """The session's 2 CPUs held by another group: the reservation waits (no time limit, since the
    cluster could hold it), logs one line naming what it waits for, and gets its group once the
    other is removed."""
    lines = idc_log()
    held = placement_group([{"CPU": 2}])
    ray.get(held.ready(), timeout=60)
    got = []
    waiter = threading.Thread(target=lambda: got.append(reserve([{"CPU": 1}], False, None, what="the test's actor")))
    try:
        waiter.start()
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not got  # still waiting: the other group holds every CPU
    finally:
        remove_placement_group(held)
    waiter.join(timeout=60)
    assert got and got[0] is not None and got[0].wait(1)
    remove_placement_group(got[0])
    waits = [line for line in lines if line.startswith("waiting for")]
    assert waits == ["waiting for 1 CPU for the placement group of the test's actor (cluster busy: 0 of 2 CPUs "
                     "free); it starts when other jobs release theirs"], lines


def _settled(start: dict, timeout_s: float = 10.0) -> dict:
    """The object store's use once it is back to ``start`` (freeing is asynchronous), else its last reading."""
    deadline = time.monotonic() + timeout_s
    while (now := object_store_use()) != start and time.monotonic() < deadline:
        time.sleep(0.2)
    return now


def test_a_job_leaves_the_object_store_as_it_found_it(ray_cluster, tmp_path):
    """A Ray condensation with its --eval-every curve puts expert states (width 64: larger than
    Ray inlines, so they live in the object store), snapshots and the test split there; once it
    ends, every one of them is freed."""
    from idc_ray.backends import backend_for
    from idc_ray.config import apply_overrides, load_preset
    from idc_ray.run.backend import RunOptions
    from idc_ray.run.curve import EvalEvery
    from idc_ray.run.job import Run, condense_to

    cfg = apply_overrides(load_preset("smoke"), {"expert.width": 64})
    options = RunOptions(num_actors=1, cpus_per_actor=0.5)
    seen = []
    start = object_store_use()
    condense_to(Run(cfg, str(tmp_path / "out"), backend_for(options), options,
                    on_progress=lambda p: seen.append(object_store_use()),
                    eval_every=EvalEvery(1, ("convnet3",), repeat=1, epochs=1)))
    assert max(s["bytes"] for s in seen) > start["bytes"]  # the job used the store: a leak would show
    assert _settled(start) == start


@pytest.mark.slow  # a head with the job server and four jobs on it
def test_four_jobs_on_half_the_cpus_all_finish_with_their_own_bytes(tmp_path, one_thread):
    """benchmarks/concurrent_jobs.py --tiny: 3 condensations (one with --eval-every, whose tasks
    run outside any placement group) and a Tune sweep submitted at once, 1 CPU each, to a 2-CPU
    head. Every job succeeds and gives the bytes its config gives alone; at most 2 groups are held
    at once, the jobs that waited said so once each, and the jobs carry their submission ids and
    metadata (what the dashboard's Jobs page lists)."""
    env = {**os.environ, "IDC_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "concurrent_jobs.py"), "--tiny",
                           "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads((tmp_path / "concurrent_jobs_tiny.json").read_text())
    jobs = r["jobs"]
    assert sorted(jobs) == ["idc-load-condense-0", "idc-load-condense-1", "idc-load-condense-2", "idc-load-tune"]
    for name, job in jobs.items():
        assert job["status"] == "SUCCEEDED" and job["bytes_equal_alone"], (name, job)
        assert job["metadata"]["idc_job"] == ("tune" if name.endswith("tune") else "condense")
        assert job["entrypoint"].startswith("python jobs/")
        assert len(job["waiting_lines"]) <= 1, job["waiting_lines"]
    assert 1 <= r["groups_held_at_once_max"] <= 2 and r["jobs_that_said_they_waited"], r
    said = [line for job in jobs.values() for line in job["waiting_lines"]]
    assert all("waiting for 1 CPU for the placement group of " in line and "cluster busy" in line for line in said)
    log = (tmp_path / "work" / "logs" / "idc-load-condense-0.log").read_text()
    assert "[curve] outer 4 convnet3" in log  # the --eval-every evaluations finished beside the matchers

    stored = [load_condensed(job["artifact"])[0] for job in jobs.values()]
    assert not torch.equal(stored[0], stored[1])  # each job its own set (seeds 0 and 1)
    # One of them checked here too: the in-process run of its config at one thread.
    from idc_ray.backends import condense_job
    from idc_ray.config import load_yaml
    from idc_ray.run.backend import RunOptions

    artifact = Path(jobs["idc-load-condense-0"]["artifact"])
    alone = condense_job(load_yaml(artifact / "config.yaml"), str(tmp_path / "alone"), RunOptions(backend="local"))
    assert torch.equal(alone.stored, stored[0]) and torch.equal(alone.labels, load_condensed(artifact)[1])
