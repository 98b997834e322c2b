"""jobs/continual.py end to end on a tiny setting (4 synthetic classes, 2 stages), on the
session's Ray cluster: reports, the exemplar cache and its resumption, bad input."""

import hashlib
import importlib.util
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from idc_ray.artifacts import load_condensed
from idc_ray.config import apply_overrides, load_preset
from idc_ray.continual.exemplars import ExemplarJob, load_memory, make_exemplars, stage_config, stage_folder
from idc_ray.continual.stages import stage_data, write_stage_dataset
from idc_ray.data import load_dataset
from idc_ray.storage import ChecksumError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--base", "smoke", "--stages", "2", "--memory-ipc", "1", "--epochs", "2", "--repeat", "2",
        "--herding-epochs", "1", "--width", "8", "--exemplars", "idc,herding,random"]


def job():
    spec = importlib.util.spec_from_file_location("continual_job", ROOT / "jobs" / "continual.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args):
    return job().main([*TINY, *args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def first_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("continual") / "run"
    assert run("--output", str(out)) == 0
    return out


def test_job_writes_results_per_stage_and_method(first_run):
    doc = json.loads((first_run / "results.json").read_text())
    assert doc["stages"] == [[0, 1], [2, 3]] and doc["classes_seen"] == [2, 4]
    assert set(doc["results"]) == {"idc", "herding", "random"}
    for method in doc["results"].values():
        e = method["convnet3"]
        assert len(e["runs"]) == 2 and all(len(r) == 2 for r in e["runs"]) and len(e["mean"]) == 2
        assert all(0 <= a <= 100 for r in e["runs"] for a in r)
    # the memory: 1 stored image per class; IDC's factor 2 forms 4 per stored one
    assert doc["memory_per_stage"] == {"idc": [8, 8], "herding": [2, 2], "random": [2, 2]}
    assert "| idc | convnet3 |" in (first_run / "results.md").read_text()
    assert (first_run / "continual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(first_run.rglob("*.tmp*"))


def test_exemplars_come_from_their_stage_only(first_run):
    (cache,) = (first_run / "cache").iterdir()
    stored, labels, manifest = load_condensed(cache / "stage-2" / "idc")
    assert stored.shape == (2, 1, 1, 28, 28) and manifest["classes"] == ["synthetic_blob_2", "synthetic_blob_3"]
    herding = torch.load(cache / "stage-2" / "herding.pt", weights_only=True)
    assert herding["labels"].tolist() == [0, 1]


def _exemplar_files(out: Path) -> dict[str, str]:
    """sha256 of every file the exemplars are made of (stage data, IDC's Parquet set and config,
    the baselines' torch files), by path under OUTPUT/cache; manifests (wall times) and
    checkpoints left out, as the resumption test does; the output folder's name, which IDC's
    config.yaml records in its data URI, replaced by OUTPUT."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes().replace(str(out).encode(), b"OUTPUT")).hexdigest()
            for p in (out / "cache").rglob("*")
            if p.is_file() and "checkpoints" not in p.parts and p.name != "manifest.json"}


def test_the_ray_run_equals_the_in_process_run_in_bytes(first_run, tmp_path):
    """The same job with --backend local, one torch thread as each Ray task has: the same
    exemplar files byte for byte and the same table (every run's accuracy at every stage)."""
    out = tmp_path / "local"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run("--output", str(out), "--backend", "local") == 0
    finally:
        torch.set_num_threads(before)
    table = lambda folder: {m: {k: e["convnet3"][k] for k in ("runs", "mean", "std")}
                            for m, e in json.loads((folder / "results.json").read_text())["results"].items()}
    assert table(out) == table(first_run)
    files = _exemplar_files(out)
    assert len(files) > 10 and files == _exemplar_files(first_run)


@pytest.mark.slow  # a stage killed mid-run
def test_killed_stage_resumes_from_the_cache_with_the_same_bytes(first_run, tmp_path):
    (cache,) = (first_run / "cache").iterdir()
    # every data file; manifests also record wall times, so they are compared by their checksums
    before = {p: digest(p) for p in cache.rglob("*")
              if p.is_file() and "checkpoints" not in p.parts and p.name != "manifest.json"}
    sums = {s: load_condensed(cache / s / "idc")[2]["files"] for s in ("stage-1", "stage-2")}
    kept = cache / "stage-1" / "herding.pt"
    kept_mtime = kept.stat().st_mtime_ns
    # stage 1's condensation killed after its last checkpoint, stage 2's before any checkpoint
    (cache / "stage-1" / "idc" / "manifest.json").unlink()
    (cache / "stage-2" / "idc" / "manifest.json").unlink()
    (cache / "stage-2" / "idc" / "condensed.parquet").unlink()
    for ckpt in (cache / "stage-2" / "idc" / "checkpoints").iterdir():
        ckpt.unlink() if ckpt.is_file() else None
    runs = lambda: {m: e["convnet3"]["runs"] for m, e in json.loads((first_run / "results.json").read_text())["results"].items()}
    results = runs()
    assert run("--output", str(first_run)) == 0
    after = {p: digest(p) for p in before}
    assert after == before
    assert {s: load_condensed(cache / s / "idc")[2]["files"] for s in sums} == sums
    assert kept.stat().st_mtime_ns == kept_mtime  # finished work is not redone
    assert runs() == results  # the same learners on the same memories: the same accuracies


def _kill_when_running(title: str, killed: list[int], stop: threading.Event) -> None:
    """Kill (SIGKILL, by its pid) the Ray worker whose process title is ``ray::<title>``, once,
    as soon as it runs: Ray titles a worker with the name of the task it executes."""
    while not stop.is_set() and not killed:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text.startswith(f"ray::{title}"):
                pid = int(cmdline.parent.name)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.02)


@pytest.mark.slow  # a stage's process killed by its pid while it condenses
def test_a_stage_killed_by_its_pid_is_retried_and_the_table_is_the_undisturbed_one(first_run, tmp_path):
    out = tmp_path / "run"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_when_running, args=("exemplars idc stage 2", killed, stop))
    killer.start()
    try:
        assert run("--output", str(out)) == 0
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1  # the stage really was killed mid-run, by its process id
    # a placement group outlives the task that made it: the retry must have reclaimed the killed one's
    assert not any(pg["state"] in ("CREATED", "PENDING") for pg in ray.util.placement_group_table().values())
    results = lambda folder: {m: e["convnet3"]["runs"]
                              for m, e in json.loads((folder / "results.json").read_text())["results"].items()}
    assert results(out) == results(first_run)
    (cache,) = (out / "cache").iterdir()
    (reference,) = (first_run / "cache").iterdir()
    assert torch.equal(load_condensed(cache / "stage-2" / "idc")[0], load_condensed(reference / "stage-2" / "idc")[0])


@pytest.mark.parametrize("method,how", [("random", "flip"), ("random", "truncate"), ("herding", "flip"),
                                        ("idc", "flip")])  # a condensation: one damage only, for the suite's time
def test_a_corrupt_cached_exemplar_file_is_refused_in_one_line_and_made_again(tmp_path, idc_log, damage, method, how):
    """In this process, no Ray: a cached stage result (a baseline's torch file, sealed with its
    sha256; IDC's Parquet file, checked against its manifest) with a flipped byte or cut short is
    refused with one warning line naming it and made again, with the same exemplars as before.
    Without the check the damaged file would count as cached: no line, or wrong exemplars."""
    base = apply_overrides(load_preset("smoke"), {"expert.width": 4})
    folder = stage_folder(tmp_path, 0)
    data_dir = str(Path(folder) / "data")
    write_stage_dataset(stage_data(load_dataset(base.data.dataset, base.data.data_uri), [0, 1]), data_dir)
    job = ExemplarJob(0, method, stage_config(base, data_dir, 1), folder, herding_epochs=1)
    target = make_exemplars(job)
    first = load_memory(job, [2, 3])
    damaged = Path(target) / "condensed.parquet" if method == "idc" else Path(target)
    damage(damaged, how)
    seen = idc_log(logging.WARNING)
    assert make_exemplars(job) == target
    refusals = [line for line in seen if str(damaged) in line]
    assert len(refusals) == 1 and "sha256" in refusals[0] and "again" in refusals[0], seen
    again = load_memory(job, [2, 3])
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    if method != "idc":  # read back after the check: a file damaged since is refused, not trained on
        damage(damaged, how)
        with pytest.raises(ChecksumError, match="does not match its sha256"):
            load_memory(job, [2, 3])


@pytest.mark.parametrize("args,message", [
    (["--memory-ipc", "0"], "--memory-ipc must be at least 1"),
    (["--stages", "5"], "--stages 5 is more than the 4 classes"),
    (["--exemplars", "dsa=BAD"], "samples are (3, 32, 32)"),
    (["--stage-cpus", "0"], "--stage-cpus must be > 0, got 0"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capsys, ray_cluster):
    if args[1] == "dsa=BAD":
        bad = tmp_path / "dsa.pt"
        torch.save({"data": torch.rand(4, 3, 32, 32), "labels": torch.arange(4)}, bad)
        args = ["--exemplars", f"dsa={bad}"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        from idc_ray.cli import run_main

        run_main(lambda: run("--output", str(out), "--backend", "local", *args))
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_a_learned_stage_memory_is_formed_with_that_stages_upsampler(tmp_path):
    """IDC exemplars condensed with synset.formation=learned: the memory the learner trains on is
    formed with the stage's own trained upsampler (saved in its artifact), not bilinearly."""
    from idc_ray.evaluation.protocol import form_stored

    base = apply_overrides(load_preset("smoke"), {"synset.formation": "learned", "schedule.outer_iters": 1})
    data = stage_data(load_dataset("tiny"), [2, 3])
    write_stage_dataset(data, str(tmp_path / "data"))
    cfg = stage_config(base, str(tmp_path / "data"), 1)
    job = ExemplarJob(stage=1, method="idc", cfg=cfg, folder=stage_folder(tmp_path / "cache", 1))
    make_exemplars(job)
    x, y = load_memory(job, [2, 3])
    stored, labels, _ = load_condensed(Path(job.folder) / "idc")
    assert (Path(job.folder) / "idc" / "upsampler.pt").exists() and y.tolist() == [2] * 4 + [3] * 4
    uniform = apply_overrides(cfg, {"synset.formation": "uniform"})
    bilinear, _ = form_stored(uniform, data.spec, stored, labels)
    assert x.shape == bilinear.shape and not torch.allclose(x, bilinear)  # the stage's learned residual
