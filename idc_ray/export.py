"""Export a condensed set's FORMED images for other benchmarks (``jobs/export.py``).

Formats (every one class-major, formed with the manifest's formation by
:func:`~idc_ray.artifacts.formed_dataset`, exactly as IDC evaluates the set):

- ``torch``: ``condensed.pt``, a dict ``{"data": (N, C, H, W) float32 normalised with the
  manifest's mean/std, "labels": (N,) int64}``: the tensor DD-Ranking's ``compute_metrics(image_tensor=...)``
  takes, and what ``jobs/evaluate.py --condensed condensed.pt --normalized`` reads back.
- ``imagefolder``: one 8-bit PNG per formed image (un-normalised pixels, rounded) under
  ``NNN_<class name>/`` (the index prefix keeps torchvision's ``ImageFolder``, which numbers
  classes by sorted folder name, in the dataset's class order): DD-Ranking's ``image_path``.
- ``dcbench``: DC-BENCH's layout (github.com/justincui03/dc_benchmark, ``data_loader/*``):
  ``distilled_results/IDC/<dataset>/IPC<k>/res_IDC_<dataset>_ConvNet_<k>ipc.pt`` holding
  ``{"data": [[images, labels]]}`` (its loaders take ``data[-1]``), images normalised as DC/DSA
  save theirs, ``k`` the FORMED images per class.

``export.json`` (written last) records that the images are formed, not stored, and how many per
class of each: at equal storage IDC trains on f^2 formed images per stored one, so a comparison
with another method's k images per class is "equal storage" only at the stored count.
Everything is written into a temporary folder next to ``output`` and renamed onto it last, so a
failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from idc_ray import storage
from idc_ray.artifacts import formed_dataset, read_manifest

FORMATS = ("torch", "imagefolder", "dcbench")
MANIFEST = "export.json"
TORCH_FILE = "condensed.pt"


def check_request(fmt: str, output: str) -> Path:
    """The output folder of a valid request; ValueError (one line) for an unknown format or an
    existing non-empty output, before anything is read or written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if not storage.is_local(output):
        raise ValueError(f"--output '{output}' must be a local folder; export there, then copy it")
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--output '{output}' exists and is not empty; choose a new or empty folder")
    return out


def quantise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8 as a PNG holds them: clipped, times 255, rounded."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def folder_name(index: int, name: str, classes: int) -> str:
    """``NNN_name``: sorts like the class index (ImageFolder numbers classes by sorted name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"
    return f"{index:0{max(3, len(str(classes - 1)))}d}_{safe}"


def _write_torch(tmp: Path, uri: str, manifest: dict) -> list[str]:
    x, y = formed_dataset(uri).tensors
    torch.save({"data": x.contiguous(), "labels": y.long()}, tmp / TORCH_FILE)
    return [TORCH_FILE]


def _write_imagefolder(tmp: Path, uri: str, manifest: dict) -> list[str]:
    from PIL import Image

    x, y = formed_dataset(uri, normalize=False).tensors
    pixels = quantise(x).permute(0, 2, 3, 1).numpy()  # N, H, W, C
    names = [folder_name(i, n, manifest["num_classes"]) for i, n in enumerate(manifest["classes"])]
    files, count = [], {}
    for image, label in zip(pixels, y.tolist()):
        k = count[label] = count.get(label, -1) + 1
        rel = f"{names[label]}/{k:05d}.png"
        (tmp / names[label]).mkdir(exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp / rel)
        files.append(rel)
    return files


def dcbench_path(dataset: str, per_class: int) -> str:
    """Where DC-BENCH's loaders look for a method's set: root/METHOD/dataset/IPCk/res_..._kipc.pt."""
    return f"distilled_results/IDC/{dataset}/IPC{per_class}/res_IDC_{dataset}_ConvNet_{per_class}ipc.pt"


def _write_dcbench(tmp: Path, uri: str, manifest: dict) -> list[str]:
    x, y = formed_dataset(uri).tensors
    rel = dcbench_path(manifest["dataset"], len(y) // manifest["num_classes"])
    (tmp / rel).parent.mkdir(parents=True)
    torch.save({"data": [[x.contiguous(), y.long()]]}, tmp / rel)
    return [rel]


WRITERS: dict[str, Callable[[Path, str, dict], list[str]]] = {
    "torch": _write_torch, "imagefolder": _write_imagefolder, "dcbench": _write_dcbench}


def export_manifest(fmt: str, uri: str, manifest: dict, labels: torch.Tensor, files: list[str], tmp: Path) -> dict:
    """What ``export.json`` says: formed vs stored images and their counts per class."""
    formed = torch.bincount(labels, minlength=manifest["num_classes"]).tolist()
    return {"format": fmt, "source": uri, "dataset": manifest["dataset"], "images": "formed",
            "normalized": fmt != "imagefolder", "mean": manifest.get("mean"), "std": manifest.get("std"),
            "stored_per_class": manifest["ipc"], "formed_per_class": dict(zip(manifest["classes"], formed)),
            "formation": manifest["formation"], "storage": manifest.get("storage"),
            "comparison": (f"equal storage: {manifest['ipc']} stored images per class; "
                           f"{max(formed)} formed (training) images per class, not equal images"),
            "files": {f: storage.file_sha256(str(tmp / f)) for f in files}}


def export(uri: str, fmt: str, output: str) -> dict[str, Any]:
    """Export the artifact at ``uri`` as ``fmt`` into the new folder ``output``; returns export.json.

    Raises ValueError (one line) for an unknown format or a non-empty output, the artifact's
    errors (missing, damaged) before anything is written.
    """
    out = check_request(fmt, output)
    manifest = read_manifest(uri)
    _, labels = formed_dataset(uri, normalize=False).tensors
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = WRITERS[fmt](tmp, uri, manifest)
        doc = export_manifest(fmt, uri, manifest, labels, files, tmp)
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=1))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return doc


__all__ = ["FORMATS", "MANIFEST", "TORCH_FILE", "dcbench_path", "export", "folder_name", "quantise"]
