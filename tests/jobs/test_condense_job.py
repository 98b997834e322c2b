"""jobs/condense.py end to end on the smoke preset: its main() in this process (the ``run_job``
fixture of tests/conftest.py), and the real command line once for the process's exit code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from idc_ray.artifacts import load_condensed
from idc_ray.config import load_yaml
from idc_ray.data import load_dataset
from idc_ray.data.store import ClassStore
from idc_ray.engine.synset import init_synset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def condense(run_job):
    return lambda *args: run_job("condense", *args)


def test_condense_writes_a_loadable_artifact_and_its_config_reruns_to_the_same_bytes(condense, tmp_path):
    out = tmp_path / "run"
    done = condense("--preset", "smoke", "--ipc", "2", "--output", str(out), "--quiet", "--backend", "local")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= {"condensed.parquet", "manifest.json", "config.yaml", "preview.png"}
    stored, labels, manifest = load_condensed(out)
    assert stored.shape == (4, 2, 1, 28, 28)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert manifest["resolved"]["init"] == "mix"
    assert load_yaml(out / "config.yaml").synset.ipc == 2
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = tmp_path / "again"
    done = condense("--config", str(out / "config.yaml"), "--output", str(again), "--quiet", "--backend", "local")
    assert done.returncode == 0, done.stderr
    assert torch.equal(load_condensed(again)[0], stored)


def test_outer_iters_zero_writes_the_initialisation(condense, tmp_path):
    done = condense("--preset", "smoke", "--outer-iters", "0", "--output", str(tmp_path / "init"), "--quiet",
                    "--backend", "local")
    assert done.returncode == 0, done.stderr
    stored, labels, manifest = load_condensed(tmp_path / "init")
    assert manifest["metrics"]["loss_history"] == []
    # The smoke preset's values (tiny data, ipc 1, factor 2 -> the mix init, seed 0), given here.
    tiny = load_dataset("tiny")
    init = init_synset(ClassStore(tiny.train_x, tiny.train_y), range(4), ipc=1, factor=2, kind="mix", seed=0)
    assert torch.equal(stored, torch.stack([init[c] for c in range(4)]))
    assert labels.tolist() == [0, 1, 2, 3]


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
        (["--expert-actors", "0"], "--expert-actors must be >= 1"),
        (["--expert-memory-mb", "0"], "--expert-memory-mb > 0"),
        (["--inject-fault", "{actor: 1"], "--inject-fault must be JSON"),
        (["--eval-models", "lenet"], "unknown model"),
        (["--eval-models", "convnet3", "--eval-repeat", "0"], "--eval-repeat must be at least 1"),
        (["--eval-epochs", "3"], "--eval-repeat/--eval-epochs need --eval-models"),
        (["--pool-seeds", "2"], "--pool-cache/--pool-seeds apply to expert.pretrained=auto"),
        (["--set", "expert.pretrained=auto", "--pool-seeds", "0"], "--pool-seeds must be at least 1"),
        (["--set", "expert.pretrained=auto", "--pool-cache", "s3://bucket/pools"], "not object storage"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_no_output(condense, ray_cluster, tmp_path, args, message):
    out = tmp_path / "out"
    done = condense("--preset", "smoke", "--address", ray_cluster, *args, "--output", str(out), "--quiet")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not out.exists()


def test_the_command_line_exits_2_with_one_error_line(tmp_path):
    """The process boundary itself, once: `python jobs/condense.py` with bad input."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "jobs/condense.py", "--preset", "smoke", "--ipc", "0", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: synset.ipc must be at least 1, got 0"], done.stderr
    assert not out.exists()


def test_help_lists_every_flag(condense):
    done = condense("--help")
    assert done.returncode == 0
    for flag in ("--preset", "--dataset", "--ipc", "--factor", "--seed", "--outer-iters", "--inner-iters",
                 "--output", "--config", "--set", "--backend", "--address", "--num-actors", "--gpus-per-actor",
                 "--checkpoint-every", "--resume", "--max-restarts", "--eval-models", "--eval-repeat",
                 "--eval-epochs", "--pool-cache", "--pool-seeds"):
        assert flag in done.stdout


def test_pretrain_pool_feeds_the_expert(condense, run_job, tmp_path):
    pool = tmp_path / "pool"
    done = run_job("pretrain", "--preset", "smoke", "--seeds", "2", "--epochs", "1", "--output", str(pool))
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*.pt")) == [
        "seed0/epoch0.pt", "seed0/epoch1.pt", "seed1/epoch0.pt", "seed1/epoch1.pt"]
    one_outer = ["--preset", "smoke", "--outer-iters", "1", "--quiet", "--backend", "local"]
    out, plain = tmp_path / "run", tmp_path / "plain"
    done = condense(*one_outer, "--set", f"expert.pretrained={pool}", "--set", "expert.pt_from=1", "--output", str(out))
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["expert"]["pretrained"] == str(pool)
    assert condense(*one_outer, "--output", str(plain)).returncode == 0
    assert not torch.equal(load_condensed(out)[0], load_condensed(plain)[0])  # the pool's experts were matched


def test_eval_models_evaluates_the_finished_set_into_its_folder_and_manifest(condense, tmp_path):
    out = tmp_path / "run"
    done = condense("--preset", "smoke", "--outer-iters", "1", "--output", str(out), "--quiet", "--backend", "local",
                    "--eval-models", "convnet3", "--eval-repeat", "2", "--eval-epochs", "3")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    runs = results["models"]["convnet3"]["runs"]
    assert len(runs) == 2 and results["models"]["convnet3"]["epochs"] == 3
    metrics = load_condensed(out)[2]["metrics"]
    assert metrics["eval"]["convnet3"]["mean"] == pytest.approx(sum(r["last"] for r in runs) / 2)
    assert (out / "results.md").exists() and (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny | 1 |" in done.stderr  # the results table ends the job log
