"""The Ray job against a real S3 server (moto on 127.0.0.1): Parquet data prepared on S3,
condensation reading it, checkpoints and the artifact written to S3, a resume from the S3
checkpoint, and the artifact loaded back from S3."""

import pytest
import subprocess
import sys
from pathlib import Path

import torch

from idc_ray.artifacts import load_condensed
from idc_ray.config import apply_overrides, load_preset
from idc_ray.backends import condense_job
from idc_ray.run.backend import RunOptions

ROOT = Path(__file__).resolve().parents[2]


def _job(script: str, *args: str) -> subprocess.CompletedProcess:
    """A process of its own with a local Ray of its own: the s3 fixture's AWS variables reach the
    job, its Ray and the actors (the session's Ray started before them; its actors would not
    see them)."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # an end-to-end scenario: S3 in and out, a resume
def test_condense_from_s3_to_s3_with_resume(s3, one_thread, run_job, tmp_path):
    prepared = run_job("prepare_data", "--dataset", "tiny", "--output", s3.uri("data", "tiny"))
    assert prepared.returncode == 0, prepared.stderr
    data, out = s3.uri("data", "tiny"), s3.uri("runs", "tiny")
    common = ["--preset", "smoke", "--data-uri", data, "--output", out, "--checkpoint-every", "1", "--quiet"]

    first = _job("jobs/condense.py", *common, "--outer-iters", "2")
    assert first.returncode == 0, first.stderr
    assert "runs/tiny/checkpoints/latest.json" in s3.keys("runs/tiny/checkpoints")
    resumed = _job("jobs/condense.py", *common, "--outer-iters", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint after outer iteration 2" in resumed.stderr

    keys = s3.keys("runs/tiny/")
    for name in ("condensed.parquet", "manifest.json", "config.yaml", "preview.png"):
        assert f"runs/tiny/{name}" in keys
    assert "runs/tiny/checkpoints/ckpt-0000004.pt" in keys

    stored, labels, manifest = load_condensed(out)
    cfg = apply_overrides(load_preset("smoke"), {"data.data_uri": data, "schedule.outer_iters": 4})
    clean = condense_job(cfg, str(tmp_path / "clean"), RunOptions(backend="local", checkpoint_every=100))
    assert torch.equal(stored, clean.stored) and torch.equal(labels, clean.labels)
    assert manifest["dataset"] == "tiny" and manifest["metrics"]["backend"] == "ray"


def test_missing_output_bucket_is_one_line_and_nothing_written(s3, run_job):
    prepared = run_job("prepare_data", "--dataset", "tiny", "--output", s3.uri("data", "tiny"))
    assert prepared.returncode == 0, prepared.stderr
    done = run_job("condense", "--preset", "smoke", "--data-uri", s3.uri("data", "tiny"), "--backend", "local",
                   "--output", "s3://no-such-bucket-idc/run", "--quiet")
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "no-such-bucket-idc" in errors[0], done.stderr
    assert s3.keys("run") == []
