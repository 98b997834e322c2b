"""Stage class lists, each stage's data, the task-incremental stream, and the USPS reader."""

import bz2

import pytest
import torch

from idc_ray.continual.stages import stage_data, task_incremental, to_shape
from idc_ray.data import DatasetFormatError, DatasetNotFoundError, load_dataset
from idc_ray.data.store import class_blocks


@pytest.mark.parametrize("n,s", [(10, 5), (10, 3), (100, 5), (7, 7), (4, 1)])
def test_stage_class_lists_cover_every_class_once(n, s):
    stages = class_blocks(n, s, "--stages")
    flat = [c for st in stages for c in st]
    assert len(stages) == s and sorted(flat) == list(range(n)) and len(flat) == n
    assert max(map(len, stages)) - min(map(len, stages)) <= 1
    assert flat == sorted(flat)  # in label order: the head grows by contiguous blocks


def test_more_stages_than_classes_is_refused():
    with pytest.raises(ValueError, match="--stages 5 is more than the 4 classes; use at most 4"):
        class_blocks(4, 5, "--stages")
    with pytest.raises(ValueError, match="--stages must be at least 1, got 0"):
        class_blocks(4, 0, "--stages")


def test_stage_data_holds_only_its_classes_renumbered():
    data = load_dataset("tiny")
    part = stage_data(data, [2, 3])
    assert part.spec.num_classes == 2 and part.spec.class_names == data.spec.class_names[2:]
    assert set(part.train_y.tolist()) == {0, 1} and len(part.train_y) == int((data.train_y >= 2).sum())
    assert torch.equal(part.train_x, data.train_x[data.train_y >= 2])


def write_usps(folder, name, rows):
    """A libsvm-format bz2 file as the USPS distribution ships it: label in 1..10, 256 values in [-1, 1]."""
    lines = [f"{label} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(values)) for label, values in rows]
    (folder / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def usps_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(i % 10 + 1, (torch.rand(256, generator=g) * 2 - 1).tolist()) for i in range(n)]


def test_usps_reads_torchvisions_libsvm_files(tmp_path):
    train = usps_rows(20, 0)
    write_usps(tmp_path, "usps.bz2", train)
    write_usps(tmp_path, "usps.t.bz2", usps_rows(10, 1))
    data = load_dataset("usps", tmp_path)
    assert data.train_x.shape == (20, 1, 16, 16) and data.test_x.shape == (10, 1, 16, 16)
    assert data.train_x.dtype == torch.uint8 and data.train_y.tolist() == [i % 10 for i in range(20)]
    expected = ((torch.tensor(train[3][1]) + 1) / 2 * 255).to(torch.uint8).view(16, 16)
    assert torch.equal(data.train_x[3, 0], expected)
    assert data.spec.mean != (0.0,)  # measured on the training split


def test_usps_missing_or_damaged_files_say_so(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="usps.bz2"):
        load_dataset("usps", tmp_path)
    (tmp_path / "usps.bz2").write_bytes(b"not bz2")
    (tmp_path / "usps.t.bz2").write_bytes(b"not bz2")
    with pytest.raises(DatasetFormatError, match="usps"):
        load_dataset("usps", tmp_path)


def test_task_incremental_stream_brings_every_task_to_one_shape(tmp_path):
    write_usps(tmp_path, "usps.bz2", usps_rows(20, 0))
    write_usps(tmp_path, "usps.t.bz2", usps_rows(10, 1))
    s = task_incremental(("tiny", "usps"), str(tmp_path), size=32)
    assert s.data.train_x.shape[1:] == (3, 32, 32) and s.data.spec.num_classes == 14
    assert s.stages == [list(range(4)), list(range(4, 14))]
    assert s.groups.tolist() == [0] * 4 + [1] * 10
    assert set(s.data.test_y[-10:].tolist()) <= set(range(4, 14))
    assert torch.equal(s.data.train_x[:, 0], s.data.train_x[:, 2])  # grey repeated to 3 channels
    assert to_shape(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 3, 32).shape == (2, 3, 32, 32)


def test_task_incremental_job_end_to_end(tmp_path):
    """The task scenario through the whole job (local backend): one head per task, tested with
    task identity, exemplars of each task from its own data."""
    import importlib.util
    import json
    from pathlib import Path

    write_usps(tmp_path, "usps.bz2", usps_rows(20, 0))
    write_usps(tmp_path, "usps.t.bz2", usps_rows(10, 1))
    path = Path(__file__).resolve().parents[2] / "jobs" / "continual.py"
    spec = importlib.util.spec_from_file_location("continual_job_task", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = tmp_path / "out"
    assert job.main(["--base", "smoke", "--scenario", "task", "--tasks", "tiny,usps", "--data-uri", str(tmp_path),
                     "--memory-ipc", "1", "--epochs", "1", "--repeat", "1", "--herding-epochs", "1", "--width", "8",
                     "--exemplars", "herding,random", "--backend", "local", "--output", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["stages"] == [list(range(4)), list(range(4, 14))] and doc["classes_seen"] == [4, 14]
    assert doc["memory_per_stage"] == {"herding": [4, 10], "random": [4, 10]} and doc["recipe"]["cutmix_prob"] == 0.0
