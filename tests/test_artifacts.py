"""The condensed-data artifact: write, read back (local and S3), integrity checks, formed dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from idc_ray import artifacts, storage
from idc_ray.artifacts import ArtifactError
from idc_ray.config import load_preset
from idc_ray.data import get_spec

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def _stored(classes=4, ipc=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    stored = torch.rand(classes, ipc, 1, 28, 28, generator=g)
    labels = torch.arange(classes).repeat_interleave(ipc)
    return stored, labels


def _save(out, stored, labels, **meta):
    cfg = load_preset("smoke")
    meta = {"dataset": "tiny", "ipc": stored.shape[1], "factor": 2, "formation": "uniform", "formation_axis": -1,
            "bound": 128, "loss_history": [0.5, 0.25], "seconds": 1.5, "code_version": "test", **meta}
    return artifacts.save_condensed(out, stored, labels, config_yaml=cfg.to_yaml(), meta=meta)


def test_save_and_load_roundtrip_local(tmp_path):
    stored, labels = _stored()
    target = _save(tmp_path / "run", stored, labels)
    assert target == str(tmp_path / "run" / "manifest.json")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"condensed.parquet", "manifest.json", "preview.png", "preview_formed.png", "config.yaml"}
    assert (tmp_path / "run" / "preview.png").read_bytes()[:8] == PNG
    assert (tmp_path / "run" / "preview_formed.png").read_bytes()[:8] == PNG
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["name"] == "smoke"

    for where in (tmp_path / "run", target):  # the folder or its manifest
        got, got_labels, manifest = artifacts.load_condensed(where)
        assert got.dtype == torch.float32 and torch.equal(got, stored) and torch.equal(got_labels, labels)
    spec = get_spec("tiny")
    assert manifest["format_version"] == artifacts.FORMAT_VERSION and manifest["dataset"] == "tiny"
    assert manifest["classes"] == list(spec.class_names) and manifest["shape"] == [1, 28, 28]
    assert manifest["mean"] == list(spec.mean) and manifest["std"] == list(spec.std)
    assert manifest["formation"] == {"mode": "uniform", "factor": 2, "axis": -1, "bound": 128}
    assert manifest["metrics"] == {"loss_history": [0.5, 0.25], "seconds": 1.5} and manifest["code_version"] == "test"
    assert manifest["config"]["synset"]["ipc"] == load_preset("smoke").synset.ipc
    assert manifest["files"]["condensed.parquet"]["rows"] == 8


def test_parquet_rows_follow_the_documented_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    stored, labels = _stored(classes=3, ipc=2)
    _save(tmp_path, stored, labels)
    table = pq.read_table(tmp_path / "condensed.parquet")
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("class_name").type == pa.string()
    kind = table.schema.field("data").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 28 * 28 and kind.value_type == pa.float32()
    assert table.column("class_name").to_pylist() == [get_spec("tiny").class_names[c] for c in labels.tolist()]
    first = torch.tensor(table.column("data")[3].as_py()).view(1, 28, 28)
    assert torch.equal(first, stored[1, 1])  # row 3 = class 1, sample 1 (class-major)


def test_formed_dataset_is_formed_and_normalised(tmp_path):
    stored, labels = _stored(classes=2, ipc=3)
    _save(tmp_path, stored, labels)
    ds = artifacts.formed_dataset(tmp_path)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 2 * 3 * 4
    mean, std = get_spec("tiny").mean[0], get_spec("tiny").std[0]
    x0, y0 = ds[0]
    # Independent computation: class 0, crop 0 (top-left 14x14) of stored sample 0, upsampled.
    crop = F.interpolate(stored[0, 0:1, :, :14, :14], size=(28, 28), mode="bilinear", align_corners=False)[0]
    assert int(y0) == 0 and torch.allclose(x0, (crop - mean) / std, atol=1e-5)
    x3, _ = ds[3]  # crop 1 (top-right) of stored sample 0: crops are crop-major within the class
    crop1 = F.interpolate(stored[0, 0:1, :, :14, 14:], size=(28, 28), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(x3, (crop1 - mean) / std, atol=1e-5)
    labels_seen = [int(ds[i][1]) for i in range(len(ds))]
    assert labels_seen == [0] * 12 + [1] * 12
    raw = artifacts.formed_dataset(tmp_path, normalize=False)
    assert torch.allclose(raw[0][0], crop, atol=1e-6)


def test_docs_snippet_loads_it_with_torch_and_pyarrow_only(tmp_path, monkeypatch):
    stored, labels = _stored(classes=2, ipc=2)
    _save(tmp_path / "runs" / "c10", stored, labels)
    text = (ROOT / "docs" / "artifact.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "pyarrow" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "docs/artifact.md", "exec"), scope)
    expected = artifacts.formed_dataset(tmp_path / "runs" / "c10")
    got = scope["train_set"]
    assert len(got) == len(expected)
    for x, y in expected:  # the same samples, in another order
        assert any(int(y) == int(gy) and torch.allclose(x, gx, atol=1e-5) for gx, gy in got)


def test_artifact_on_s3(s3):
    stored, labels = _stored()
    target = _save(s3.uri("runs", "a"), stored, labels)
    assert target == s3.uri("runs", "a", "manifest.json")
    assert s3.keys("runs/a/") == [f"runs/a/{n}" for n in sorted(
        ["condensed.parquet", "manifest.json", "preview.png", "preview_formed.png", "config.yaml"])]
    got, got_labels, manifest = artifacts.load_condensed(s3.uri("runs", "a"))
    assert torch.equal(got, stored) and torch.equal(got_labels, labels) and manifest["ipc"] == 2
    assert len(artifacts.formed_dataset(s3.uri("runs", "a"))) == 4 * 2 * 4


# ------------------------------------------------------------------ integrity
def _error_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_corrupt_parquet_fails_its_checksum(tmp_path):
    _save(tmp_path, *_stored())
    path = tmp_path / "condensed.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as err:
        artifacts.load_condensed(tmp_path)
    assert "sha256" in _error_line(err) and str(path) in str(err.value)


def test_truncated_parquet_fails_its_checksum(tmp_path):
    _save(tmp_path, *_stored())
    path = tmp_path / "condensed.parquet"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="sha256"):
        artifacts.load_condensed(tmp_path)


@pytest.mark.parametrize("edit,message", [
    (lambda m: {**m, "format_version": 99}, "format version 99"),
    (lambda m: {**m, "format": "someone-else"}, "not an idc-ray condensed-set manifest"),
    (lambda m: ["not", "a", "manifest"], "not an idc-ray condensed-set manifest"),
])
def test_foreign_or_future_manifest_is_one_clear_line(tmp_path, edit, message):
    _save(tmp_path, *_stored())
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(edit(json.loads(manifest.read_text()))))
    with pytest.raises(ArtifactError) as err:
        artifacts.load_condensed(tmp_path)
    assert message in _error_line(err)


def test_not_json_manifest(tmp_path):
    _save(tmp_path, *_stored())
    (tmp_path / "manifest.json").write_bytes(b"\x00\x01 garbage")
    with pytest.raises(ArtifactError, match="foreign or damaged"):
        artifacts.load_condensed(tmp_path)


def test_missing_folder_or_manifest(tmp_path):
    with pytest.raises(ArtifactError) as err:
        artifacts.load_condensed(tmp_path / "nothing")
    assert "not a condensed set" in _error_line(err)


def test_interrupted_write_leaves_no_manifest_and_hides_the_old_one(tmp_path, monkeypatch):
    _save(tmp_path, *_stored(seed=0))
    real = storage.atomic_write_bytes

    def crash_before_manifest(uri, data):
        if str(uri).endswith("manifest.json"):
            raise KeyboardInterrupt
        real(uri, data)

    monkeypatch.setattr(storage, "atomic_write_bytes", crash_before_manifest)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, *_stored(seed=1))
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(ArtifactError, match="did not finish"):
        artifacts.load_condensed(tmp_path)


def test_missing_bucket_writes_nothing(s3):
    with pytest.raises(storage.StorageError) as err:
        _save(f"s3://missing-{s3.bucket}/run", *_stored())
    assert err.value.kind == "bucket" and f"missing-{s3.bucket}" in _error_line(err)


def test_save_rejects_inconsistent_inputs(tmp_path):
    stored, labels = _stored()
    with pytest.raises(ValueError, match="class-major"):
        _save(tmp_path, stored, labels.flip(0))
    with pytest.raises(ValueError, match=r"\(classes, ipc, C, H, W\)"):
        _save(tmp_path, stored[0], labels)
    with pytest.raises(ValueError, match="spec=data.spec"):  # speech's mean/std are measured at load
        artifacts.save_condensed(tmp_path, torch.rand(8, 1, 1, 64, 64), torch.arange(8),
                                 config_yaml="{}", meta={"dataset": "speech"})
    assert not (tmp_path / "manifest.json").exists()

