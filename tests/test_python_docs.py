"""docs/python.md runs as written: its code blocks, extracted and run in order in one namespace
in a fresh folder. ``python`` blocks run in the fast suite; the ``python ray`` blocks (Ray Data
in and out, a 2-trial Tuner of idc_ray.tune_trainable) after them in the slow suite, which then
checks what the Tuner reported. examples/train_on_condensed.py (Ray Train) runs here too."""

import importlib.util
import re
from pathlib import Path

import pytest

import idc_ray

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python( ray)?\n(.*?)^```", flags=re.S | re.M)


def blocks(ray: bool) -> list[str]:
    return [code for tag, code in BLOCK.findall((ROOT / "docs" / "python.md").read_text()) if ray or not tag]


def run_blocks(codes: list[str], folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    namespace: dict = {}
    for i, code in enumerate(codes):
        exec(compile(code, f"docs/python.md block {i + 1}", "exec"), namespace)
    return namespace


def test_the_python_blocks_of_the_walkthrough_run(tmp_path, monkeypatch):
    assert len(blocks(ray=False)) >= 4 and len(blocks(ray=True)) > len(blocks(ray=False))
    ns = run_blocks(blocks(ray=False), tmp_path, monkeypatch)
    assert ns["folder"].manifest["classes"] == ["class0", "class1", "class2"]
    assert ns["mine"].stored.shape == (4, 1, 1, 16, 16) and 0 <= ns["report"].accuracy["convnet3"] <= 1


@pytest.mark.slow
def test_every_block_runs_and_the_tuner_reports_both_trials(ray_cluster, tmp_path, monkeypatch):
    ns = run_blocks(blocks(ray=True), tmp_path, monkeypatch)
    assert ns["formed"].count() == len(ns["from_ray"].formed())
    trials = [r for r in ns["results"]]
    assert len(trials) == 2 and not ns["results"].errors
    for result in trials:
        condensed = idc_ray.load(result.metrics["artifact"])
        assert condensed.manifest["config"]["match"]["lr_img"] == result.config["match.lr_img"]
        assert result.metrics["accuracy"] == result.metrics["accuracy_convnet3"]
    assert {r.config["match.lr_img"] for r in trials} == {0.01, 0.03}


@pytest.mark.slow
def test_the_ray_train_example_trains_on_the_condensed_set(ray_cluster, tmp_path):
    condensed = idc_ray.condense("tiny", ipc=1, preset="smoke", backend="local", output=tmp_path / "set")
    spec = importlib.util.spec_from_file_location("train_on_condensed", ROOT / "examples" / "train_on_condensed.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    accuracy = example.main(["--condensed", condensed.uri, "--epochs", "3", "--width", "8", "--batch-size", "8"])
    assert 0 <= accuracy <= 1
