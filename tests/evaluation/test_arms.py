"""The full-data arm, soft labels and --scores through jobs/evaluate.py on the embedded MNIST
subset (4,000 / 1,000 images), ConvNet-3 of width 8 for 2 epochs, 1 repeat: on Ray (the arms and
the teacher travel to evaluation tasks) the full data beats the condensed set, soft labels change
the accuracy and every DD-Ranking-style score is reported; a second report, in-process, takes the
full-data arm from the cache the Ray tasks filled."""

import json

import pytest
import torch

from idc_ray import artifacts
from idc_ray.config import load_preset
from idc_ray.data import load_dataset
from idc_ray.evaluation import scores

ARGS = ["--epochs", "2", "--repeat", "1", "--set", "eval.width=8", "--eval-every", "0"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """An artifact of one real image per class (factor 2): a tiny condensed set of mnist5k."""
    data = load_dataset("mnist5k")
    first = [int((data.train_y == c).nonzero()[0]) for c in range(data.spec.num_classes)]
    stored = (data.train_x[first].float() / 255).unsqueeze(1)
    out = tmp_path_factory.mktemp("art") / "mnist5k-ipc1"
    meta = {"dataset": "mnist5k", "ipc": 1, "factor": 2, "formation": "uniform", "formation_axis": -1, "bound": 128,
            "loss_history": [], "seconds": 0.0, "code_version": "test"}
    cfg = load_preset("mnist5k-demo")
    artifacts.save_condensed(out, stored, torch.arange(len(first)), config_yaml=cfg.to_yaml(), meta=meta)
    return out


def _mean(out, label):
    return json.loads((out / label / "results.json").read_text())["models"]["convnet3"]["mean"]


@pytest.mark.slow
def test_full_soft_and_scores_then_the_cache(run_job, artifact, ray_cluster, tmp_path):
    out = tmp_path / "eval"
    done = run_job("evaluate", "--condensed", str(artifact), "--scores", "--labels", "hard", "soft", *ARGS,
                   "--address", ray_cluster, "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    label = artifact.name
    full = _mean(out, "full")
    condensed = [_mean(out, label + suffix) for suffix in ("", "-soft", "-noaug", "-soft-noaug")]
    assert all(full > acc for acc in condensed), (full, condensed)
    # soft labels change what the same images teach
    assert _mean(out, label + "-soft") != _mean(out, label) or _mean(out, "random-ipc1-soft") != _mean(out, "random-ipc1")
    doc = json.loads((out / label / "results.json").read_text())
    got = doc[scores.KEY]["models"]["convnet3"]
    assert set(got) == {"hlr", "ior", "lrs", "ars"}
    assert got["hlr"]["mean"] == pytest.approx(full - condensed[0])
    assert got["ior"]["mean"] == pytest.approx(condensed[0] - _mean(out, "random-ipc1"))
    soft = json.loads((out / f"{label}-soft" / "results.json").read_text())
    assert soft["soft_labels"]["label_bytes_if_stored"] == 40 * 10 * 4  # 40 formed images x 10 classes x 4 bytes
    assert soft["soft_labels"]["teacher_bytes"]["convnet3"] > 0
    assert "DD-Ranking-style scores" in (out / "results.md").read_text()

    again = run_job("evaluate", "--dataset", "mnist5k", "--preset", "mnist5k-demo", "--baseline", "full", *ARGS,
                    "--backend", "local", "--output", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 1 runs reused from the cache" in again.stderr and "done full" not in again.stderr
    assert json.loads((tmp_path / "again" / "results.json").read_text())["models"]["convnet3"]["runs"] == \
        json.loads((out / "full" / "results.json").read_text())["models"]["convnet3"]["runs"]
