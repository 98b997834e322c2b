"""Storage failing mid-run (issue 25.2): the S3 server stops answering (a pausing proxy in front of
the session's moto server, conftest ``s3_proxy``) while a job writes its checkpoints or artifact,
or reads its training data. The job retries for ``--storage-timeout`` seconds, then stops with
one line naming the URI and publishes no manifest; once the server answers again, ``--resume``
ends with the bytes of an undisturbed run."""

import pytest
import torch

from idc_ray.artifacts import load_condensed
from idc_ray.backends import condense_job
from idc_ray.config import apply_overrides, load_preset
from idc_ray.run.backend import RunOptions

SETTINGS = ["schedule.outer_iters=3", "schedule.inner_iters=2"]
BOUND_S = "3"


def _one_error(done) -> str:
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return errors[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The undisturbed run, in process with 1 torch thread (as each Ray actor has here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = apply_overrides(load_preset("smoke"), SETTINGS)
        return condense_job(cfg, str(tmp_path_factory.mktemp("clean")), RunOptions(backend="local"))
    finally:
        torch.set_num_threads(before)


def _stopped_by_outage(s3, run_job, common: list[str], out: str) -> None:
    """The job ran into the outage: one line naming a URI under ``out`` and the bound, no manifest."""
    error = _one_error(run_job("condense", *common))
    assert error.startswith(f"error: storage at {out}/") and f"did not answer for {BOUND_S} s" in error, error
    assert "--resume" in error and "--storage-timeout" in error
    assert "run/checkpoints/latest.json" in s3.keys("run/") and "run/manifest.json" not in s3.keys("run/")


@pytest.mark.slow  # three Ray runs and two outages of the storage timeout
def test_outages_while_writing_stop_in_one_line_and_resume_gives_the_same_bytes(
        s3, s3_proxy, ray_cluster, run_job, one_thread, clean):
    """The server stops answering when the job writes its second checkpoint; after it answers
    again, --resume runs until the server stops answering at the artifact's Parquet file; the
    second --resume finishes, with the bytes of the undisturbed run."""
    out = s3.uri("run")
    common = ["--preset", "smoke", *(f for s in SETTINGS for f in ("--set", s)), "--address", ray_cluster,
              "--num-actors", "2", "--checkpoint-every", "1", "--output", out, "--storage-timeout", BOUND_S, "--quiet"]
    s3_proxy.pause_at("PUT", "/run/checkpoints/ckpt-0000002.pt")
    _stopped_by_outage(s3, run_job, common, out)
    s3_proxy.resume()
    s3_proxy.pause_at("PUT", "/run/condensed.parquet")
    _stopped_by_outage(s3, run_job, [*common, "--resume"], out)

    s3_proxy.resume()
    resumed = run_job("condense", *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    stored, labels, manifest = load_condensed(out)
    assert torch.equal(stored, clean.stored) and torch.equal(labels, clean.labels)
    assert manifest["metrics"]["loss_history"] == pytest.approx(clean.loss_history, abs=0)


@pytest.mark.slow  # an outage of the storage timeout
def test_training_data_unreachable_while_read_stops_in_one_line(s3, s3_proxy, run_job, tmp_path):
    data = s3.uri("data", "tiny")
    assert run_job("prepare_data", "--dataset", "tiny", "--output", data).returncode == 0
    out = tmp_path / "run"
    common = ["--preset", "smoke", "--outer-iters", "1", "--data-uri", data, "--backend", "local", "--device", "cpu",
              "--output", str(out), "--storage-timeout", BOUND_S, "--quiet"]
    s3_proxy.pause_at("GET", "/data/tiny/train-")  # the first read of a training shard's bytes
    stopped = run_job("condense", *common)
    error = _one_error(stopped)
    assert error.startswith(f"error: storage at {data}/train-") and f"did not answer for {BOUND_S} s" in error, error
    assert not (out / "manifest.json").exists()

    s3_proxy.resume()
    again = run_job("condense", *common)
    assert again.returncode == 0, again.stderr
    assert (out / "manifest.json").exists()
