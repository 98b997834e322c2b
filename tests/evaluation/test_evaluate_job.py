"""jobs/evaluate.py end to end on the smoke preset's tiny data: its main() in this process (the
``run_job`` fixture of tests/conftest.py), and as a separate process joining the session's Ray
where the test reads the Ray tasks' lines forwarded into the job log."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from idc_ray.config import load_preset
from idc_ray.data.parquet import write_dataset
from idc_ray.run.backend import RunOptions
from idc_ray.local import LocalBackend
from idc_ray.run.job import Run, condense_to

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"mean", "std", "best_mean", "best_std", "runs", "epochs", "wall_s", "device"}


@pytest.fixture
def evaluate(run_job):
    return lambda *args: run_job("evaluate", *args)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("condensed") / "smoke-ipc1"
    condense_to(Run(load_preset("smoke"), str(out), LocalBackend("cpu"), RunOptions(backend="local")))
    return out


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """A Parquet dataset of 6 x 6 images: too small for ResNet-10 (and ConvNet-3)."""
    root = tmp_path_factory.mktemp("small")
    x = torch.randint(0, 256, (8, 1, 6, 6), dtype=torch.uint8)
    y = torch.arange(2).repeat(4)
    write_dataset(root, {"train": (x, y), "test": (x, y)},
                  {"name": "small", "class_names": ["a", "b"], "shape": [1, 6, 6], "mean": [0.5], "std": [0.25]},
                  encoding="raw")
    return root


def test_condensed_set_and_baselines_on_ray(artifact, ray_cluster, tmp_path):
    out = tmp_path / "eval"
    # A process of its own: the tasks' progress reaches its stderr as Ray forwards a job's worker output.
    done = subprocess.run([sys.executable, "jobs/evaluate.py", "--condensed", str(artifact), "--baseline", "random",
                           "herding", "--ipc", "1", "--herding-epochs", "1", "--repeat", "2", "--models", "convnet3",
                           "--output", str(out), "--address", ray_cluster],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    labels = [s["label"] for s in summary["sets"]]
    assert labels == ["smoke-ipc1", "random-ipc1", "herding-ipc1"]
    for label in labels:
        results = json.loads((out / label / "results.json").read_text())
        m = results["models"]["convnet3"]
        assert set(m) == SCHEMA and len(m["runs"]) == 2 and m["epochs"] == 5 and results["backend"] == "ray"
        assert {t["threads"] for t in results["tasks"]} == {1}  # a 1-CPU share each on this 2-CPU Ray
        assert (out / label / "curves.png").is_file() and (out / label / "results.md").is_file()
    assert (out / "herding_net.pt").is_file() and (out / "herding_net.pt.sha256").is_file()
    assert (out / "curves.png").is_file()
    assert "| tiny | 1 | herding | 4 / 4 |" in (out / "results.md").read_text()
    # progress in the job log: set, model, repeat, epoch and accuracy, from the Ray tasks
    assert "[eval] smoke-ipc1 convnet3 repeat 2/2 epoch 5/5 acc" in done.stderr
    assert "[eval] 6 tasks submitted" in done.stderr and "[eval] done herding-ipc1 convnet3 repeat 2/2" in done.stderr
    assert "| training set |" in done.stdout and f"report written to {out / 'summary.json'}" in done.stdout


def test_a_single_artifact_gets_its_report_in_its_folder(evaluate, artifact):
    done = evaluate("--condensed", str(artifact), "--backend", "local", "--repeat", "1", "--fixed-compute")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((artifact / "results.json").read_text())
    assert results["models"]["convnet3"]["epochs"] == 1 and results["fixed_compute"]  # int(5 / 2^2)
    assert (artifact / "results.md").is_file() and (artifact / "curves.png").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--condensed", "ART", "--models", "lenet"], "unknown model 'lenet'"),
        (["--condensed", "ART", "--repeat", "0"], "--repeat must be at least 1"),
        (["--condensed", "/nonexistent/run"], "no manifest.json at '/nonexistent/run'"),
        (["--baseline", "random", "--ipc", "1", "--dataset", "tiny"], "--output DIR is required"),
        (["--baseline", "random", "--ipc", "1", "--dataset", "parquet", "--data-uri", "SMALL", "--models", "resnet10",
          "--output", "OUT"], "resnet10 cannot take 6x6 inputs"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(evaluate, artifact, small_images, tmp_path, args, message):
    out = tmp_path / "out"
    places = {"ART": str(artifact), "OUT": str(out), "SMALL": str(small_images)}
    before = sorted(p.name for p in artifact.iterdir())
    done = evaluate(*[places.get(a, a) for a in args], "--backend", "local")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not out.exists()
    assert sorted(p.name for p in artifact.iterdir()) == before, done.stderr


def test_the_published_codes_data_pt_evaluates_as_its_test_py_would(evaluate, tmp_path):
    # condense.py saves torch.save([data, labels]) un-normalised and unclamped; test.py forms and
    # trains on it unclipped. Values from -0.2 to 1.24, as seen after 49 inner iterations on MNIST.
    g = torch.Generator().manual_seed(2)
    data = torch.rand(8, 1, 28, 28, generator=g) * 1.44 - 0.2
    torch.save([data, torch.arange(4).repeat_interleave(2)], tmp_path / "data.pt")
    out = tmp_path / "eval"
    done = evaluate("--condensed", str(tmp_path / "data.pt"), "--dataset", "tiny", "--factor", "2", "--epochs", "1",
                   "--repeat", "1", "--models", "convnet3", "--set", "eval.width=8", "--backend", "local",
                   "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())  # one set: its report is the folder
    assert (results["set"]["stored_samples"], results["set"]["formed_samples"], results["set"]["factor"]) == (8, 32, 2)
    assert len(results["models"]["convnet3"]["runs"]) == 1
