"""`ray job submit` end to end against a real local head started with `ray start`, and the
job's custom metrics on the head's Prometheus export port."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from idc_ray.artifacts import load_condensed

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import free_port, head_env, ray_head  # noqa: E402
METRICS = ("ray_idc_matching_loss", "ray_idc_class_steps_per_second", "ray_idc_outer_iteration",
           "ray_idc_expert_queue_depth")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head of its own with the job server (benchmarks/common.py ray_head, which
    benchmarks/concurrent_jobs.py starts too), 2 CPUs like CI's machine."""
    with ray_head(2, tmp_path_factory.mktemp("head") / "ray-start.log", ROOT) as ports:
        yield ports


def _ray(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=head_env(), capture_output=True, text=True,
                          timeout=timeout)


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


@pytest.mark.slow  # an end-to-end scenario: a head with the job server
def test_job_submit_runs_the_condensation_and_exports_metrics(head, tmp_path):
    address = f"http://127.0.0.1:{head['dashboard']}"
    out = tmp_path / "artifact"
    submit = ("job", "submit", "--address", address, "--working-dir", str(ROOT), "--no-wait",
              "--submission-id", "idc-e2e", "--", "python", "jobs/condense.py", "--preset", "smoke",
              "--set", "schedule.outer_iters=30", "--checkpoint-every", "5", "--output", str(out))
    for _ in range(20):  # the head's job agent needs a moment after `ray start` on a busy machine
        submitted = _ray(*submit)
        if submitted.returncode == 0 or "No available agent" not in submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr

    # Scrape while the job runs (the actors' gauges leave the export when the actors end);
    # `ray job status` runs alongside, as a user would poll it.
    seen, status, deadline = "", "", time.monotonic() + 300
    poll = None
    while time.monotonic() < deadline:
        seen += _scrape(head["metrics"])
        if poll is None:
            poll = subprocess.Popen([str(BIN / "ray"), "job", "status", "--address", address, "idc-e2e"],
                                    env=head_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        elif poll.poll() is not None:
            status = poll.stdout.read().lower()
            poll = None
            if any(f"job 'idc-e2e' {word}" in status for word in ("succeeded", "failed", "stopped")):
                break
        time.sleep(0.25)
    logs = _ray("job", "logs", "--address", address, "idc-e2e").stdout
    assert "job 'idc-e2e' succeeded" in status, status + logs
    missing = [m for m in METRICS if m not in seen]
    assert not missing, f"metrics not exported: {missing}"
    assert 'shard="matcher-0[classes 0-1]"' in seen
    assert "matcher-1[classes 2-3] on node" in logs and "condensed set written to" in logs
    assert "checkpoint after outer iteration 30" in logs
    stored, _, manifest = load_condensed(out)
    assert stored.shape == (4, 1, 1, 28, 28) and manifest["metrics"]["backend"] == "ray"
    assert torch.isfinite(stored).all()


def test_bad_address_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "jobs/condense.py", "--preset", "smoke", "--address",
                           f"127.0.0.1:{free_port()}", "--output", str(tmp_path / "x")],
                          cwd=ROOT, env=head_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no Ray cluster at --address" in errors[0], done.stderr
    assert not (tmp_path / "x").exists()
