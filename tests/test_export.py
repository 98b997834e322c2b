"""jobs/export.py: each format read back with the reader its tool uses and compared with
``formed_dataset`` (bit for bit for torch; after the same 8-bit quantisation for PNG), the
manifest's stored/formed counts, and nothing half-written when an export fails."""

from __future__ import annotations

import json

import pytest
import torch

from idc_ray import artifacts, export
from idc_ray.config import load_preset
from idc_ray.data import get_spec


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A factor-2 set of the tiny dataset, 2 stored images per class."""
    spec = get_spec("tiny")
    stored = torch.rand(spec.num_classes, 2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(spec.num_classes).repeat_interleave(2)
    out = tmp_path_factory.mktemp("art") / "tiny-ipc2"
    meta = {"dataset": "tiny", "ipc": 2, "factor": 2, "formation": "uniform", "formation_axis": -1, "bound": 128,
            "loss_history": [], "seconds": 0.0, "code_version": "test"}
    artifacts.save_condensed(out, stored, labels, config_yaml=load_preset("smoke").to_yaml(), meta=meta)
    return out


def test_torch_export_is_formed_dataset_bit_for_bit(run_job, artifact, tmp_path):
    done = run_job("export", "--format", "torch", "--condensed", str(artifact), "--output", str(tmp_path / "t"))
    assert done.returncode == 0, done.stderr
    payload = torch.load(tmp_path / "t" / export.TORCH_FILE, weights_only=True)
    x, y = artifacts.formed_dataset(artifact).tensors
    assert torch.equal(payload["data"], x) and torch.equal(payload["labels"], y) and y.dtype == torch.int64
    doc = json.loads((tmp_path / "t" / export.MANIFEST).read_text())
    assert doc["images"] == "formed" and doc["stored_per_class"] == 2
    assert set(doc["formed_per_class"].values()) == {8}  # factor 2: 4 formed per stored image
    assert "equal storage" in doc["comparison"] and set(doc["files"]) == {export.TORCH_FILE}


def test_imagefolder_reads_back_with_torchvision_after_8_bit_quantisation(artifact, tmp_path):
    from torchvision import datasets, transforms

    export.export(str(artifact), "imagefolder", str(tmp_path / "png"))
    folder = datasets.ImageFolder(str(tmp_path / "png"), transform=transforms.PILToTensor())
    x, y = artifacts.formed_dataset(artifact, normalize=False).tensors
    assert [c.split("_", 1)[1] for c in folder.classes] == list(get_spec("tiny").class_names)
    got = torch.stack([img for img, _ in folder])
    assert torch.equal(torch.tensor(folder.targets), y)  # class order kept by the NNN_ prefix
    assert torch.equal(got[:, :1], export.quantise(x))  # ImageFolder gives RGB; all three channels equal the grey
    assert json.loads((tmp_path / "png" / export.MANIFEST).read_text())["normalized"] is False


def test_dcbench_layout_reads_back_as_its_loaders_do(artifact, tmp_path):
    doc = export.export(str(artifact), "dcbench", str(tmp_path / "dc"))
    x, y = artifacts.formed_dataset(artifact).tensors
    per_class = len(y) // get_spec("tiny").num_classes
    # DC-BENCH: os.path.join(root, METHOD, dataset, 'IPC' + str(ipc), file); torch.load(...)['data'][-1]
    path = tmp_path / "dc" / "distilled_results" / "IDC" / "tiny" / f"IPC{per_class}" / f"res_IDC_tiny_ConvNet_{per_class}ipc.pt"
    images, labels = torch.load(path, weights_only=True)["data"][-1]
    assert torch.equal(images, x) and torch.equal(labels, y)
    assert doc["stored_per_class"] == 2 and set(doc["formed_per_class"].values()) == {per_class}


def test_a_failed_export_leaves_nothing(artifact, tmp_path, monkeypatch):
    def broken(tmp, uri, manifest):
        (tmp / "half.png").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setitem(export.WRITERS, "torch", broken)
    with pytest.raises(OSError):
        export.export(str(artifact), "torch", str(tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []
