"""The Parquet dataset form: written by idc_ray.data.parquet or by hand, read locally and from S3."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.io import encode_png

from idc_ray.config import ConfigError, apply_overrides, load_preset
from idc_ray.data import DatasetFormatError, DatasetNotFoundError, get_spec, load_dataset
from idc_ray.data import parquet
from idc_ray.data.prepare import dataset_info
from idc_ray.engine.plan import build_plan
from idc_ray import storage
from idc_ray.storage import StorageError


def _write_tiny(out, **kw) -> str:
    data = load_dataset("tiny")
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    return parquet.write_dataset(out, splits, dataset_info(data.spec, {"dataset": "tiny"}), **kw)


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_roundtrip_in_small_batches_across_row_groups(tmp_path, monkeypatch, encoding):
    monkeypatch.setattr(parquet, "READ_BATCH", 7)  # batches straddle the 16-row row groups
    _write_tiny(tmp_path, rows_per_shard=50, row_group_size=16, encoding=encoding)
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["splits"]["train"]["files"] == [f"train-{i:05d}.parquet" for i in range(4)]
    assert info["splits"]["train"]["count"] == 160 and info["splits"]["test"]["class_counts"] == [20] * 4
    assert pq.ParquetFile(tmp_path / "train-00000.parquet").metadata.num_row_groups == 4
    original = load_dataset("tiny")
    for name in ("tiny", "parquet"):  # a registered name reads its Parquet copy; `parquet` reads any
        data = load_dataset(name, str(tmp_path))
        assert torch.equal(data.train_x, original.train_x) and torch.equal(data.train_y, original.train_y)
        assert torch.equal(data.test_x, original.test_x) and torch.equal(data.test_y, original.test_y)
        assert data.spec == original.spec


def test_class_filter_reads_only_those_rows(tmp_path):
    _write_tiny(tmp_path, rows_per_shard=60)
    original = load_dataset("tiny")
    part = load_dataset("parquet", str(tmp_path), classes=[3, 1])
    keep = (original.train_y == 1) | (original.train_y == 3)
    assert torch.equal(part.train_x, original.train_x[keep]) and torch.equal(part.train_y, original.train_y[keep])
    assert set(part.test_y.tolist()) == {1, 3}


def test_one_split_reads_only_its_shards(tmp_path, monkeypatch):
    """The --eval-every driver needs only the test split: Parquet opens no training shard."""
    _write_tiny(tmp_path, rows_per_shard=60)
    original = load_dataset("tiny")
    opened = []
    real_open = parquet.storage.open_input
    monkeypatch.setattr(parquet.storage, "open_input", lambda uri, *a, **k: opened.append(uri) or real_open(uri, *a, **k))
    test = load_dataset("parquet", str(tmp_path), split="test")
    assert torch.equal(test.test_x, original.test_x) and torch.equal(test.test_y, original.test_y)
    assert test.train_x.shape == (0, *original.train_x.shape[1:]) and len(test.train_y) == 0
    assert opened and all("test-" in uri for uri in opened)
    train = load_dataset("tiny", split="train")  # a source without Parquet: the other split is dropped
    assert torch.equal(train.train_x, original.train_x) and len(train.test_x) == 0
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_dataset("tiny", split="val")


def test_hand_written_dataset_with_split_column_and_jpeg(tmp_path):
    """A user's own dataset: one file, a split column, JPEG and PNG bytes, a minimal dataset.json."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    images[:, :, :, :] = images[:, :, :1, :1]  # flat colours survive JPEG almost exactly
    from torchvision.io import encode_jpeg

    encoded = [encode_png(x).numpy().tobytes() if i % 2 else encode_jpeg(x, quality=100).numpy().tobytes()
               for i, x in enumerate(images)]
    table = pa.table({"image": pa.array(encoded, pa.binary()), "label": pa.array([0, 1, 2, 0, 1, 2], pa.int32()),
                      "split": ["train", "train", "val", "test", "train", "train"]})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=4)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"class_names": ["a", "b", "c"], "shape": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3}))
    spec = get_spec("parquet", str(tmp_path))
    assert (spec.name, spec.num_classes, spec.size, spec.lr_base_size, spec.flip) == ("parquet", 3, 8, 8, True)
    data = load_dataset("parquet", str(tmp_path))
    assert data.train_y.tolist() == [0, 1, 1, 2] and data.test_y.tolist() == [2, 0]
    assert (data.train_x.int() - images[[0, 1, 4, 5]].int()).abs().max() <= 2
    assert torch.equal(data.train_x[1], images[1])  # PNG is exact


def test_parquet_spec_drives_the_run_checks(tmp_path):
    """The config is a leaf (it reads no dataset); the run's plan checks it against the spec
    that dataset.json gives."""
    _write_tiny(tmp_path)
    cfg = apply_overrides(load_preset("smoke"), {"data.dataset": "parquet", "data.data_uri": str(tmp_path)})
    spec = get_spec("parquet", str(tmp_path))
    assert build_plan(cfg, spec).match.num_classes == spec.num_classes == 4
    with pytest.raises(ConfigError, match=f"larger than the image side {spec.size}"):
        build_plan(apply_overrides(cfg, {"synset.factor": spec.size + 1}), spec)
    with pytest.raises(DatasetNotFoundError, match="--data-uri"):
        get_spec("parquet", None)


def test_s3_roundtrip_and_configured_storage_options(s3, monkeypatch):
    _write_tiny(s3.uri("tiny"), rows_per_shard=100)
    assert s3.keys("tiny/") == ["tiny/dataset.json", "tiny/test-00000.parquet",
                                "tiny/train-00000.parquet", "tiny/train-00001.parquet"]
    original = load_dataset("tiny")
    data = load_dataset("parquet", s3.uri("tiny"))
    assert torch.equal(data.train_x, original.train_x) and torch.equal(data.test_y, original.test_y)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint can come from the configured options instead
    with storage.configured({"endpoint_url": s3.endpoint}):
        again = load_dataset("tiny", s3.uri("tiny"), classes=[0])
    assert torch.equal(again.train_x, original.train_x[original.train_y == 0])


# ------------------------------------------------------------------ failures
def test_truncated_shard_is_one_clear_line(tmp_path):
    _write_tiny(tmp_path, rows_per_shard=100)
    shard = tmp_path / "train-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("parquet", str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "train-00001.parquet" in msg and "truncated or corrupt" in msg


def test_corrupt_page_is_one_clear_line(tmp_path):
    _write_tiny(tmp_path, rows_per_shard=200, encoding="raw")
    shard = tmp_path / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match="train-00000.parquet"):
        load_dataset("parquet", str(tmp_path))


def test_missing_and_bad_dataset_json(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="dataset.json"):
        load_dataset("parquet", str(tmp_path))
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        load_dataset("parquet", str(tmp_path))
    (tmp_path / "dataset.json").write_text(json.dumps({"class_names": ["a"], "shape": [1, 4, 4]}))
    with pytest.raises(DatasetFormatError, match="lacks mean, std"):
        load_dataset("parquet", str(tmp_path))
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "idc-ray/parquet-dataset", "version": 7,
                                                       "class_names": ["a"], "shape": [1, 4, 4], "mean": [0], "std": [1]}))
    with pytest.raises(DatasetFormatError, match="version 7"):
        load_dataset("parquet", str(tmp_path))


def test_registered_name_must_match_its_parquet_copy(tmp_path):
    _write_tiny(tmp_path)
    with pytest.raises(DatasetFormatError, match="--dataset parquet"):
        load_dataset("cifar10", str(tmp_path))


def test_wrong_image_shape_is_named(tmp_path):
    table = pa.table({"image": [encode_png(torch.zeros(1, 5, 5, dtype=torch.uint8)).numpy().tobytes()], "label": [0]})
    pq.write_table(table, tmp_path / "train-0.parquet")
    (tmp_path / "dataset.json").write_text(json.dumps({"class_names": ["a"], "shape": [1, 4, 4], "mean": [0], "std": [1]}))
    with pytest.raises(DatasetFormatError, match=r"\(1, 5, 5\)"):
        load_dataset("parquet", str(tmp_path))


def test_existing_dataset_is_not_overwritten_unless_asked(tmp_path):
    _write_tiny(tmp_path, rows_per_shard=40)
    with pytest.raises(ValueError, match="already holds a dataset"):
        _write_tiny(tmp_path)
    _write_tiny(tmp_path, rows_per_shard=200, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "test-00000.parquet", "train-00000.parquet"]


def test_failed_write_leaves_no_partial_dataset(tmp_path, monkeypatch):
    calls = []
    real = parquet.pq.write_table

    def fail_on_third_shard(table, where, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        real(table, where, **kw)

    monkeypatch.setattr(parquet.pq, "write_table", fail_on_third_shard)
    with pytest.raises(StorageError, match="cannot write .*train-00002.parquet.*disk full"):
        _write_tiny(tmp_path / "out", rows_per_shard=50)
    assert list((tmp_path / "out").iterdir()) == []
