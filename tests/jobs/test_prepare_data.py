"""jobs/prepare_data.py: every kind of source into Parquet, locally and on S3, and its failures."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idc_ray.cli import run_main
from idc_ray.data import get_spec, load_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("prepare_data_job", ROOT / "jobs" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def prepare(job, capsys):
    """Run the job's main in-process exactly as its __main__ does: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as done:
            run_main(lambda: job.main(list(args)))
        out = capsys.readouterr()
        return done.value.code, out.out, out.err

    return run


def _one_error_line(code: int, err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for part in parts:
        assert part in lines[0], lines[0]


# ------------------------------------------------------------------ sources
def test_tiny_to_s3_as_a_user_runs_it(s3):
    done = subprocess.run([sys.executable, "jobs/prepare_data.py", "--dataset", "tiny", "--output", s3.uri("tiny"),
                           "--rows-per-shard", "100"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dataset written to {s3.uri('tiny', 'dataset.json')}"
    assert s3.keys() == ["tiny/dataset.json", "tiny/test-00000.parquet", "tiny/train-00000.parquet",
                         "tiny/train-00001.parquet"]
    original, copy = load_dataset("tiny"), load_dataset("parquet", s3.uri("tiny"))
    assert torch.equal(copy.train_x, original.train_x) and torch.equal(copy.test_y, original.test_y)
    assert copy.spec == original.spec


def test_cifar10_files_to_local_parquet(tmp_path, prepare):
    rng = np.random.default_rng(0)
    folder = tmp_path / "src" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 5, 9]}, f)
    code, out, err = prepare("--dataset", "cifar10", "--data-uri", str(tmp_path / "src"), "--output",
                             str(tmp_path / "pq"), "--encoding", "raw")
    assert code == 0, err
    original, copy = load_dataset("cifar10", str(tmp_path / "src")), load_dataset("cifar10", str(tmp_path / "pq"))
    assert torch.equal(copy.train_x, original.train_x) and torch.equal(copy.test_x, original.test_x)
    info = json.loads((tmp_path / "pq" / "dataset.json").read_text())
    assert info["name"] == "cifar10" and info["mean"] == list(get_spec("cifar10").mean) and info["encoding"] == "raw"
    assert info["source"]["dataset"] == "cifar10" and info["splits"]["train"]["count"] == 15


def test_speech_keeps_its_measured_statistics(tmp_path, prepare):
    for label, name in enumerate(get_spec("speech").class_names):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):
            t = np.arange(8000) / 16000
            with wave.open(str(tmp_path / "src" / name / f"{k}.wav"), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
                w.writeframes((0.4 * np.sin(2 * np.pi * 300 * (label + 1) * t) * 32767).astype("<i2").tobytes())
    code, _, err = prepare("--dataset", "speech", "--data-uri", str(tmp_path / "src"), "--output", str(tmp_path / "pq"))
    assert code == 0, err
    original, copy = load_dataset("speech", str(tmp_path / "src")), load_dataset("speech", str(tmp_path / "pq"))
    assert torch.equal(copy.train_x, original.train_x) and copy.spec.mean == original.spec.mean != (0.0,)
    assert copy.spec.std == original.spec.std


def test_imagenet_subset_with_class_list_and_size(tmp_path, prepare):
    wnids = ["n01440764", "n02102040"]
    for split in ("train", "val"):
        for label, wnid in enumerate(wnids):
            (tmp_path / "src" / split / wnid).mkdir(parents=True)
            Image.new("RGB", (20, 12), (200 * label, 50, 90)).save(tmp_path / "src" / split / wnid / "a.JPEG")
    (tmp_path / "classes.txt").write_text("n02102040  # springer first\nn01440764 tench\n")
    code, _, err = prepare("--dataset", "imagenet-subset", "--class-list", str(tmp_path / "classes.txt"), "--size", "8",
                           "--data-uri", str(tmp_path / "src"), "--output", str(tmp_path / "pq"))
    assert code == 0, err
    spec = get_spec("parquet", str(tmp_path / "pq"))
    assert spec.name == "imagenet-subset" and spec.class_names == ("n02102040", "n01440764") and spec.size == 8
    data = load_dataset("parquet", str(tmp_path / "pq"))
    assert data.train_x.shape == (2, 3, 8, 8)
    red = {int(y): int(x[0].float().mean()) for x, y in zip(data.train_x, data.train_y)}
    assert red[0] > 150 and red[1] < 30  # label 0 is the list's first wnid (n02102040, red 200)


# ------------------------------------------------------------------ failures: one line, exit 2, no output
def test_missing_bucket(s3, prepare):
    code, _, err = prepare("--dataset", "tiny", "--output", f"s3://missing-{s3.bucket}/tiny")
    _one_error_line(code, err, f"bucket 'missing-{s3.bucket}' does not exist")


def test_no_credentials(s3, prepare, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = prepare("--dataset", "tiny", "--output", s3.uri("tiny"))
    _one_error_line(code, err, "no credentials", "AWS_ACCESS_KEY_ID")
    assert s3.keys() == []


def test_endpoint_down_via_storage_options(s3, prepare, dead_endpoint):
    code, _, err = prepare("--dataset", "tiny", "--output", s3.uri("tiny"),
                           "--storage-options", json.dumps({"endpoint_url": dead_endpoint}))
    _one_error_line(code, err, "cannot reach the storage endpoint", dead_endpoint)
    assert s3.keys() == []


def test_truncated_parquet_source(tmp_path, prepare):
    code, _, err = prepare("--dataset", "tiny", "--output", str(tmp_path / "a"), "--rows-per-shard", "100")
    assert code == 0, err
    shard = tmp_path / "a" / "train-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    code, _, err = prepare("--dataset", "parquet", "--data-uri", str(tmp_path / "a"), "--output", str(tmp_path / "b"))
    _one_error_line(code, err, "train-00001.parquet", "truncated or corrupt")
    assert not (tmp_path / "b").exists()


def test_failure_midway_removes_the_shards(s3, prepare, monkeypatch):
    import idc_ray.data.parquet as parquet

    real, calls = parquet.pq.write_table, []

    def fail_second_shard(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("connection reset by peer")
        real(*args, **kw)

    monkeypatch.setattr(parquet.pq, "write_table", fail_second_shard)
    code, _, err = prepare("--dataset", "tiny", "--output", s3.uri("tiny"), "--rows-per-shard", "50")
    _one_error_line(code, err, "train-00001.parquet")
    assert s3.keys() == []


@pytest.mark.parametrize("args,message", [
    (["--dataset", "cifar11"], "unknown source dataset 'cifar11'"),
    (["--dataset", "cifar10", "--size", "64"], "--size and --class-list apply to"),
    (["--dataset", "imagenet-subset"], "needs --class-list"),
    (["--dataset", "cifar10", "--data-uri", "/nonexistent/data"], "/nonexistent/data"),
    (["--dataset", "tiny", "--storage-options", "{oops"], "--storage-options is not valid JSON"),
    (["--dataset", "tiny", "--rows-per-shard", "0"], "at least 1"),
])
def test_bad_input(tmp_path, prepare, args, message):
    code, _, err = prepare(*args, "--output", str(tmp_path / "out"))
    _one_error_line(code, err, message)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path, prepare):
    assert prepare("--dataset", "tiny", "--output", str(tmp_path))[0] == 0
    before = (tmp_path / "dataset.json").read_bytes()
    code, _, err = prepare("--dataset", "tiny", "--output", str(tmp_path))
    _one_error_line(code, err, "already holds a dataset", "--overwrite")
    assert (tmp_path / "dataset.json").read_bytes() == before
    assert prepare("--dataset", "tiny", "--output", str(tmp_path), "--overwrite", "--encoding", "raw")[0] == 0
    assert json.loads((tmp_path / "dataset.json").read_text())["encoding"] == "raw"
