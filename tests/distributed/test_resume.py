"""Kill the driver process mid-run, start it again with --resume: same bytes as one clean run."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from idc_ray.artifacts import load_condensed
from idc_ray.config import apply_overrides, load_preset
from idc_ray.backends import condense_job
from idc_ray.run.backend import RunOptions

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ["--set", "schedule.outer_iters=12", "--set", "schedule.inner_iters=2"]


def _condense(address: str, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "jobs/condense.py", "--preset", "smoke", *SETTINGS, "--address", address,
           "--num-actors", "2", "--expert-actors", "2", "--checkpoint-every", "1", "--output", str(out), "--quiet",
           *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_outer(out: Path) -> int:
    pointer = out / "checkpoints" / "latest.json"
    try:
        return json.loads(pointer.read_text())["outer"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow  # a driver killed by its pid
def test_resume_after_killing_the_driver_gives_the_same_bytes(ray_cluster, one_thread, tmp_path):
    cfg = apply_overrides(load_preset("smoke"), ["schedule.outer_iters=12", "schedule.inner_iters=2"])
    clean = condense_job(cfg, str(tmp_path / "clean"), RunOptions(backend="local"))

    out = tmp_path / "run"
    driver = _condense(ray_cluster, out)
    deadline = time.monotonic() + 120
    while _checkpoint_outer(out) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, f"the run ended before it could be interrupted: {driver.stderr.read()}"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    interrupted_at = _checkpoint_outer(out)
    assert 3 <= interrupted_at < 12 and not (out / "manifest.json").exists()

    resumed = _condense(ray_cluster, out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from the checkpoint after outer iteration {interrupted_at}" in err
    stored, _, manifest = load_condensed(out)
    assert torch.equal(stored, clean.stored)
    assert manifest["metrics"]["loss_history"] == pytest.approx(clean.loss_history, abs=0)


def test_resume_refuses_a_checkpoint_of_another_config(ray_cluster, tmp_path):
    out = tmp_path / "run"
    first = _condense(ray_cluster, out, "--set", "schedule.outer_iters=1")  # outer_iters may grow on resume
    assert first.wait(timeout=300) == 0, first.stderr.read()
    other = _condense(ray_cluster, out, "--resume", "--set", "match.lr_img=0.5")
    _, err = other.communicate(timeout=300)
    assert other.returncode == 2
    assert err.strip().splitlines() == [
        "error: --resume: the checkpoint in the output folder was written with another config; "
        "use the same --preset/--config/--set, or another --output"]


def _condense_main():
    """jobs/condense.py as a module (jobs/ is not a package), to call its main() in this process."""
    spec = importlib.util.spec_from_file_location("condense_job_for_resume_tests", ROOT / "jobs" / "condense.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def resume_past_a_corrupt_newest_checkpoint(tmp_path, idc_log, backend: list[str]) -> dict:
    """A run stopped after outer 2 whose newest checkpoint is then damaged, resumed to outer 3 on
    ``backend``: --resume refuses the file (a warning naming it), continues from the previous one
    and ends with the bytes of an uninterrupted run. Returns the manifest."""
    cfg = apply_overrides(load_preset("smoke"), ["schedule.outer_iters=3", "schedule.inner_iters=2"])
    clean = condense_job(cfg, str(tmp_path / "clean"), RunOptions(backend="local"))
    main, out = _condense_main(), tmp_path / "run"
    common = ["--preset", "smoke", "--set", "schedule.inner_iters=2", *backend,
              "--checkpoint-every", "1", "--output", str(out), "--quiet"]
    assert main([*common, "--set", "schedule.outer_iters=2"]) == 0  # stands for a run stopped after outer 2
    newest = out / "checkpoints" / "ckpt-0000002.pt"
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))

    seen = idc_log()
    assert main([*common, "--set", "schedule.outer_iters=3", "--resume"]) == 0
    refused = [line for line in seen if "falling back" in line]
    assert len(refused) == 1 and str(newest) in refused[0] and "sha256" in refused[0]
    assert "resuming from the checkpoint after outer iteration 1" in seen
    stored, _, manifest = load_condensed(out)
    assert torch.equal(stored, clean.stored)
    assert manifest["metrics"]["loss_history"] == pytest.approx(clean.loss_history, abs=0)
    return manifest


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, idc_log):
    manifest = resume_past_a_corrupt_newest_checkpoint(tmp_path, idc_log, ["--backend", "local", "--device", "cpu"])
    assert manifest["metrics"]["backend"] == "local"


@pytest.mark.slow  # two Ray runs: about 17 s on the shared 2-core machine
def test_resume_on_ray_falls_back_past_a_corrupt_newest_checkpoint(ray_cluster, one_thread, tmp_path, idc_log):
    """The driver reads the latest good checkpoint before it starts the actors, which then
    continue from the previous one."""
    manifest = resume_past_a_corrupt_newest_checkpoint(tmp_path, idc_log,
                                                       ["--address", ray_cluster, "--num-actors", "2"])
    assert manifest["metrics"]["backend"] == "ray"


def test_resume_of_a_learned_formation_gives_the_set_and_upsampler_of_an_uninterrupted_run(tmp_path):
    """jobs/condense.py --resume with synset.formation=learned: the checkpoint carries the
    upsampler's weights and Adam moments, so the resumed run writes the uninterrupted run's bytes."""
    main = _condense_main()
    common = ["--preset", "smoke", "--set", "synset.formation=learned", "--set", "schedule.inner_iters=2",
              "--backend", "local", "--device", "cpu", "--checkpoint-every", "1", "--quiet"]
    assert main([*common, "--outer-iters", "2", "--output", str(tmp_path / "whole")]) == 0
    assert main([*common, "--outer-iters", "1", "--output", str(tmp_path / "run")]) == 0  # stopped after outer 1
    assert main([*common, "--outer-iters", "2", "--output", str(tmp_path / "run"), "--resume"]) == 0
    whole, resumed = load_condensed(tmp_path / "whole"), load_condensed(tmp_path / "run")
    assert torch.equal(whole[0], resumed[0])
    upsampler = lambda out: torch.load(out / "upsampler.pt", weights_only=True)
    w, r = upsampler(tmp_path / "whole"), upsampler(tmp_path / "run")
    assert w.keys() == r.keys() and all(torch.equal(w[k], r[k]) for k in w)
