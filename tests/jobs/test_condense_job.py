"""jobs/condense.py end to end on the smoke preset, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from idc_ray.artifacts import load_condensed
from idc_ray.config import load_yaml

ROOT = Path(__file__).resolve().parents[2]


def run_job(*args: str, script: str = "jobs/condense.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_condense_writes_a_loadable_artifact_and_its_config_reruns_to_the_same_bytes(tmp_path):
    out = tmp_path / "run"
    done = run_job("--preset", "smoke", "--ipc", "2", "--output", str(out), "--quiet", "--backend", "local")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= {"condensed.parquet", "manifest.json", "config.yaml", "preview.png"}
    stored, labels, manifest = load_condensed(out)
    assert stored.shape == (4, 2, 1, 28, 28)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert manifest["resolved"]["init"] == "mix"
    assert load_yaml(out / "config.yaml").synset.ipc == 2
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = tmp_path / "again"
    done = run_job("--config", str(out / "config.yaml"), "--output", str(again), "--quiet", "--backend", "local")
    assert done.returncode == 0, done.stderr
    assert torch.equal(load_condensed(again)[0], stored)


def test_outer_iters_zero_writes_the_initialisation(tmp_path):
    done = run_job("--preset", "smoke", "--outer-iters", "0", "--output", str(tmp_path / "init"), "--quiet",
                   "--backend", "local")
    assert done.returncode == 0, done.stderr
    assert load_condensed(tmp_path / "init")[2]["metrics"]["loss_history"] == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ipc", "0"], "synset.ipc must be at least 1"),
        (["--factor", "64"], "larger than the image side"),
        (["--set", "expert.model=lenet"], "unknown model"),
        (["--dataset", "cifar11"], "unknown dataset"),
        (["--set", "match.colour=red"], "unknown key 'match.colour'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--config", "/nonexistent/x.yaml"], "not found"),
        (["--dataset", "cifar10", "--data-uri", "/nonexistent/data"], "/nonexistent/data"),
        (["--dataset", "cifar10", "--data-uri", "/nonexistent/data", "--backend", "local"], "/nonexistent/data"),
        (["--num-actors", "5"], "--num-actors 5 is more than the 4 classes"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
        (["--inject-fault", "{actor: 1"], "--inject-fault must be JSON"),
        (["--eval-models", "lenet"], "unknown model"),
        (["--eval-models", "convnet3", "--eval-repeat", "0"], "--eval-repeat must be at least 1"),
        (["--eval-epochs", "3"], "--eval-repeat/--eval-epochs need --eval-models"),
        (["--pool-seeds", "2"], "--pool-cache/--pool-seeds apply to expert.pretrained=auto"),
        (["--set", "expert.pretrained=auto", "--pool-seeds", "0"], "--pool-seeds must be at least 1"),
        (["--set", "expert.pretrained=auto", "--pool-cache", "s3://bucket/pools"], "not object storage"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_no_output(tmp_path, args, message):
    out = tmp_path / "out"
    done = run_job("--preset", "smoke", *args, "--output", str(out), "--quiet")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not out.exists()


def test_help_lists_every_flag():
    done = run_job("--help")
    assert done.returncode == 0
    for flag in ("--preset", "--dataset", "--ipc", "--factor", "--seed", "--outer-iters", "--inner-iters",
                 "--output", "--config", "--set", "--backend", "--address", "--num-actors", "--gpus-per-actor",
                 "--checkpoint-every", "--resume", "--max-restarts", "--eval-models", "--eval-repeat",
                 "--eval-epochs", "--pool-cache", "--pool-seeds"):
        assert flag in done.stdout


def test_pretrain_pool_feeds_the_expert(tmp_path):
    pool = tmp_path / "pool"
    done = run_job("--preset", "smoke", "--seeds", "2", "--epochs", "1", "--output", str(pool),
                   script="jobs/pretrain.py")
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*.pt")) == [
        "seed0/epoch0.pt", "seed0/epoch1.pt", "seed1/epoch0.pt", "seed1/epoch1.pt"]
    out = tmp_path / "run"
    done = run_job("--preset", "smoke", "--set", f"expert.pretrained={pool}", "--set", "expert.pt_from=1",
                   "--output", str(out), "--quiet", "--backend", "local")
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["expert"]["pretrained"] == str(pool)


def test_eval_models_evaluates_the_finished_set_into_its_folder_and_manifest(tmp_path):
    out = tmp_path / "run"
    done = run_job("--preset", "smoke", "--output", str(out), "--quiet", "--backend", "local",
                   "--eval-models", "convnet3", "--eval-repeat", "2", "--eval-epochs", "3")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    runs = results["models"]["convnet3"]["runs"]
    assert len(runs) == 2 and results["models"]["convnet3"]["epochs"] == 3
    metrics = load_condensed(out)[2]["metrics"]
    assert metrics["eval"]["convnet3"]["mean"] == pytest.approx(sum(r["last"] for r in runs) / 2)
    assert (out / "results.md").exists() and (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny | 1 |" in done.stderr  # the results table ends the job log
