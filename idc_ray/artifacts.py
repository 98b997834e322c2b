"""The condensed-data artifact: what a condensation writes and any training code reads back.

A folder (local path or fsspec URL such as ``s3://bucket/run``) holding:

* ``condensed.parquet``: one row per stored sample, class-major (every sample of the lowest
  label first): ``label`` int64, ``class_name`` string, ``data`` fixed_size_list<float32>[C*H*W]
  (CHW order, un-normalised, in [0, 1]);
* ``manifest.json``, written LAST, so its presence means the folder is complete: format and
  version, dataset, class names, ipc, factor, formation (mode, axis, bound), shape, mean/std,
  the full config, code version, metrics, and the sha256 of ``condensed.parquet``;
* ``preview.png`` (stored samples, one row per class), ``preview_formed.png`` (formed samples,
  one row per class), ``config.yaml`` (loadable with ``--config``);
* with a learned formation, ``upsampler.pt`` (the FSRCNN upsampler's weights, a ``torch.save``
  state dict) and its sha256 sidecar ``upsampler.pt.sha256``; the manifest's
  ``formation.upsampler`` gives its sizes (docs/formation.md).

Rewriting a folder first deletes its manifest, so a reader never pairs an old manifest with new
data. The schema and a torch + pyarrow-only reader are in docs/artifact.md.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from torchvision.utils import save_image

from idc_ray import __version__, storage
from idc_ray.config import from_dict
from idc_ray.data import DatasetSpec, get_spec
from idc_ray.engine.formation import form_classes, get_former
from idc_ray.engine.plan import resolve
from idc_ray.engine.training import Normalize
from idc_ray.engine.upsampler import UpsamplerSpec, parameter_count, upsampler_from_weights

FORMAT = "idc-ray/condensed"
FORMAT_VERSION = 2  # 1 was the condensed.pt of the first release
PARQUET = "condensed.parquet"
MANIFEST = "manifest.json"
PREVIEW = "preview.png"
PREVIEW_FORMED = "preview_formed.png"
CONFIG = "config.yaml"
UPSAMPLER = "upsampler.pt"
_PREVIEW_FORMED_PER_CLASS = 32  # columns of the formed preview: a readable image at any factor


class ArtifactError(ValueError):
    """A condensed-data folder that is missing, incomplete, corrupt or of a foreign format."""


def _png(images: torch.Tensor, per_row: int) -> bytes:
    buffer = io.BytesIO()
    save_image(images.detach().cpu().clamp(0, 1), buffer, nrow=per_row, padding=2, format="png")
    return buffer.getvalue()


def _formed(stored: torch.Tensor, labels: torch.Tensor, formation: Mapping[str, Any],
            upsampler: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Formed samples with the manifest's formation (and a learned one's upsampler), as
    evaluation forms them."""
    if formation["mode"] == "learned" and upsampler is None:
        raise ArtifactError("this set has a learned formation: form it with its upsampler "
                            "(formed_dataset(uri) or idc_ray.load(uri).formed() read it from the folder)")
    former = get_former(formation["mode"], formation["factor"], axis=formation["axis"], bound=formation["bound"],
                        upsampler=upsampler)
    return form_classes(stored, labels, former)


def _upsampler_entry(config: Mapping[str, Any], formation: Mapping[str, Any], channels: int,
                     weights: Mapping[str, torch.Tensor] | None) -> tuple[dict, torch.nn.Module]:
    """A learned formation's ``formation.upsampler`` manifest entry and the upsampler itself."""
    if weights is None:
        raise ValueError("a learned formation is saved with its upsampler's weights (upsampler=)")
    learned = (config.get("synset") or {}).get("learned") or {}
    sizes = {k: learned.get(k, getattr(UpsamplerSpec, k)) for k in ("d", "s", "m")}
    spec = UpsamplerSpec(channels=channels, factor=formation["factor"], **sizes)
    return {"file": UPSAMPLER, **sizes, "parameters": parameter_count(spec)}, upsampler_from_weights(spec, dict(weights))


def load_upsampler(uri: str | os.PathLike, manifest: Mapping[str, Any]) -> torch.nn.Module | None:
    """A learned formation's upsampler from the artifact at ``uri``, checked against its sha256
    sidecar (:class:`ArtifactError`, one line, when missing or corrupt); None for other formations."""
    entry = manifest["formation"].get("upsampler")
    if manifest["formation"]["mode"] != "learned" or entry is None:
        return None
    target = storage.join(_folder(uri), entry["file"])
    try:
        raw = storage.read_checked(target)
        weights = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except storage.StorageError as e:
        raise ArtifactError(f"the set's upsampler is refused: {e}; rerun jobs/condense.py") from None
    except Exception as e:  # noqa: BLE001 - a file that matches its sha256 but does not load
        raise ArtifactError(f"'{target}' is not a torch file of weights ({type(e).__name__}); rerun jobs/condense.py") from None
    spec = UpsamplerSpec(channels=manifest["shape"][0], factor=manifest["formation"]["factor"],
                         d=entry["d"], s=entry["s"], m=entry["m"])
    return upsampler_from_weights(spec, weights)


def save_preview(uri: str | os.PathLike, stored: torch.Tensor) -> None:
    """A PNG grid of stored samples (classes, ipc, C, H, W): one row per class."""
    storage.atomic_write_bytes(uri, _png(stored.flatten(0, 1), stored.shape[1]))


def _spec_for(meta: Mapping[str, Any], config: Mapping[str, Any]) -> DatasetSpec:
    spec = get_spec(meta["dataset"], (config.get("data") or {}).get("data_uri"))
    if spec.measure_stats:
        raise ValueError(f"save_condensed needs spec=data.spec for dataset '{spec.name}': its mean/std are "
                         "measured when the data is loaded")
    return spec


def _table(stored: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> bytes:
    flat = stored.detach().cpu().to(torch.float32).contiguous().reshape(-1).numpy()
    table = pa.table({
        "label": pa.array(labels.cpu().numpy().astype(np.int64)),
        "class_name": pa.array([class_names[int(c)] for c in labels.tolist()], type=pa.string()),
        "data": pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), int(np.prod(stored.shape[2:]))),
    })
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, write_statistics=False)
    return buffer.getvalue().to_pybytes()


def _formation(meta: Mapping[str, Any], config: Mapping[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """The manifest's formation: meta's values, else the config's synset section, ``auto`` resolved
    (the manifest records the formation the run used)."""
    synset = config.get("synset") or {}
    formation = {field: meta.get(key, synset.get(key)) for field, key in
                 (("mode", "formation"), ("factor", "factor"), ("axis", "formation_axis"), ("bound", "bound"))}
    if formation["mode"] == "auto":
        formation["mode"] = resolve(from_dict(config), spec).formation
    return formation


def _save_formed_preview(uri: str, stored: torch.Tensor, labels: torch.Tensor, formation: Mapping[str, Any],
                         net: torch.nn.Module | None) -> None:
    """A PNG grid of formed samples, one row per class, at most _PREVIEW_FORMED_PER_CLASS each."""
    formed, _ = _formed(stored, labels, formation, net)
    per_row = len(formed) // stored.shape[0]
    shown = formed.view(stored.shape[0], per_row, *formed.shape[1:])[:, :_PREVIEW_FORMED_PER_CLASS]
    storage.atomic_write_bytes(uri, _png(shown.flatten(0, 1), shown.shape[1]))


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_condensed(out_dir: str | os.PathLike, stored: torch.Tensor, labels: torch.Tensor, *, config_yaml: str,
                   meta: dict[str, Any], spec: DatasetSpec | None = None,
                   upsampler: Mapping[str, torch.Tensor] | None = None) -> str:
    """Write the artifact folder ``out_dir`` (local or URL); returns the URI of manifest.json.

    Args:
        stored: (classes, ipc, C, H, W) in [0, 1]; labels: (classes * ipc,), class-major.
        config_yaml: the run's config (saved as config.yaml and inside the manifest).
        meta: ``dataset`` (required), ``ipc``/``factor``/``formation``/``formation_axis``/``bound``
            (default: the config's synset section), ``code_version``, ``resolved``; every other
            key (loss_history, seconds, ...) is recorded under ``metrics``.
        spec: the dataset spec the run used (``RealData.spec``); default: looked up by name,
            which cannot know measured statistics (speech needs it passed).
        upsampler: a learned formation's upsampler weights (its state dict), written to
            ``upsampler.pt`` with a sha256 sidecar; required for that formation only.
    Raises:
        ValueError on inconsistent inputs; idc_ray.storage.StorageError when writing fails, in
        which case no manifest exists and readers see no artifact.
    """
    out = os.fspath(out_dir)
    if stored.dim() != 5 or labels.shape != (stored.shape[0] * stored.shape[1],):
        raise ValueError(f"stored must be (classes, ipc, C, H, W) with labels (classes*ipc,), "
                         f"got {tuple(stored.shape)} and {tuple(labels.shape)}")
    per_class = labels.view(stored.shape[:2])
    if not (per_class == per_class[:, :1]).all() or not (per_class[1:, 0] > per_class[:-1, 0]).all():
        raise ValueError("labels must be class-major: ipc equal labels per class, classes ascending")
    config = yaml.safe_load(config_yaml) or {}
    spec = spec or _spec_for(meta, config)
    if tuple(stored.shape[2:]) != (spec.channels, spec.size, spec.size):
        raise ValueError(f"stored samples are {tuple(stored.shape[2:])}, dataset '{spec.name}' has "
                         f"{(spec.channels, spec.size, spec.size)}")
    formation = _formation(meta, config, spec)
    consumed = {"dataset", "ipc", "factor", "formation", "formation_axis", "bound", "code_version", "resolved"}
    net = None
    if formation["mode"] == "learned":
        formation["upsampler"], net = _upsampler_entry(config, formation, spec.channels, upsampler)

    storage.remove(storage.join(out, MANIFEST))  # from here on, readers see no artifact
    if net is not None:
        storage.write_checked(storage.join(out, UPSAMPLER), _torch_bytes(dict(upsampler)))
    storage.atomic_write_bytes(storage.join(out, CONFIG), config_yaml.encode())
    save_preview(storage.join(out, PREVIEW), stored)
    _save_formed_preview(storage.join(out, PREVIEW_FORMED), stored, labels, formation, net)
    data = _table(stored, labels, spec.class_names)
    storage.atomic_write_bytes(storage.join(out, PARQUET), data)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "dataset": meta["dataset"], "classes": list(spec.class_names), "num_classes": spec.num_classes,
        "ipc": int(stored.shape[1]), "factor": formation["factor"], "formation": formation,
        "shape": [spec.channels, spec.size, spec.size], "mean": list(spec.mean), "std": list(spec.std),
        "config": config, "resolved": meta.get("resolved"), "code_version": meta.get("code_version", __version__),
        "metrics": {k: v for k, v in meta.items() if k not in consumed},
        "files": {PARQUET: {"sha256": storage.sha256(data), "bytes": len(data), "rows": len(labels)}},
        # Table 9's accounting: what is stored, the stored pixels plus a learned formation's parameters
        "storage": {"stored_pixels": stored.numel(),
                    "upsampler_parameters": formation["upsampler"]["parameters"] if net is not None else 0},
    }
    target = storage.join(out, MANIFEST)
    storage.atomic_write_bytes(target, json.dumps(manifest, indent=1).encode())
    return target


def record_metrics(uri: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
    """Add ``metrics`` (e.g. the evaluation of the finished set) to the manifest's metrics.

    The manifest is replaced atomically, so readers see the artifact complete before and after;
    the Parquet file and its checksum are untouched.
    """
    manifest = read_manifest(uri)
    manifest["metrics"] = {**manifest["metrics"], **metrics}
    target = storage.join(_folder(uri), MANIFEST)
    storage.atomic_write_bytes(target, json.dumps(manifest, indent=1).encode())


def _folder(uri: str | os.PathLike) -> str:
    uri = os.fspath(uri)
    return uri.rstrip("/").rsplit("/", 1)[0] if uri.rstrip("/").endswith("/" + MANIFEST) else uri


def read_manifest(uri: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact at ``uri`` (its folder or its manifest.json), format-checked."""
    folder = _folder(uri)
    target = storage.join(folder, MANIFEST)
    return storage.read_json(target, fmt=FORMAT, version=FORMAT_VERSION, version_key="format_version",
                             kind="idc-ray condensed-set manifest", error=ArtifactError,
                             fix="load it with the idc_ray that wrote it, or rerun jobs/condense.py",
                             missing=ArtifactError(f"no {MANIFEST} at '{folder}': not a condensed set, or its writing "
                                                   "did not finish; pass the output folder of a completed jobs/condense.py run"))


def load_condensed(uri: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read a condensed set: ``(stored, labels, manifest)``.

    Args:
        uri: the artifact folder (or its manifest.json), a local path or URL (``s3://...``),
            read with the process's storage options (``idc_ray.storage.configure``).
    Returns:
        stored float32 (classes, ipc, C, H, W) in [0, 1], labels int64 (classes * ipc,)
        class-major, and the manifest dict.
    Raises:
        ArtifactError (a ValueError) when the folder is incomplete, the Parquet file does not
        match its checksum, or the format is foreign or of another version;
        idc_ray.storage.StorageError when the storage cannot be read.
    """
    folder = _folder(uri)
    manifest = read_manifest(folder)
    target = storage.join(folder, PARQUET)
    data = storage.read_required(target, ArtifactError(
        f"'{target}' is missing although its manifest exists; the folder was altered, rerun jobs/condense.py"))
    expected = manifest.get("files", {}).get(PARQUET, {}).get("sha256")
    storage.verify(data, expected, ArtifactError(
        f"'{target}' does not match the sha256 in its manifest: the file is corrupt or was modified"))
    try:
        # ParquetFile.read, not pq.read_table: read_table's dataset scan can still be cleaning up
        # after it returns, and releasing this Python-owned buffer then, at interpreter exit,
        # aborts the process (apache/arrow#33975; it aborted a finished job here, four jobs on 2
        # CPUs). ParquetFile.read is synchronous and the block closes the file before it returns.
        with pq.ParquetFile(pa.BufferReader(data)) as parquet:
            table = parquet.read(columns=["label", "data"])
    except (pa.ArrowException, OSError) as e:
        raise ArtifactError(f"'{target}' is not readable Parquet ({type(e).__name__}) despite its checksum") from None
    c, h, w = manifest["shape"]
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    values = table.column("data").combine_chunks().flatten().to_numpy()
    ipc = manifest["ipc"]
    if len(values) != len(labels) * c * h * w or len(labels) % ipc:
        raise ArtifactError(f"'{target}' holds {len(labels)} rows of {len(values) // max(1, len(labels))} values; "
                            f"the manifest says rows of {c * h * w} values in groups of ipc {ipc}")
    stored = torch.from_numpy(values.astype(np.float32).reshape(len(labels) // ipc, ipc, c, h, w))
    return stored, labels, manifest


def formed_dataset(uri: str | os.PathLike, *, normalize: bool = True) -> torch.utils.data.TensorDataset:
    """The formed training samples of a condensed set as a ``TensorDataset`` of (image, label).

    Each class's stored samples are formed with the manifest's formation (mode, factor, axis,
    bound), exactly as IDC evaluates them, then normalised with the manifest's mean/std
    (``normalize=False``: left in [0, 1], e.g. to apply your own augmentation first).
    """
    stored, labels, manifest = load_condensed(uri)
    return torch.utils.data.TensorDataset(*form_training_set(stored, labels, manifest, normalize=normalize,
                                                             upsampler=load_upsampler(uri, manifest)))


def form_training_set(stored: torch.Tensor, labels: torch.Tensor, manifest: Mapping[str, Any], *,
                      normalize: bool = True, upsampler: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Formed samples and labels of stored samples with the manifest's ``formation`` (a learned
    one with ``upsampler``, :func:`load_upsampler`), normalised with its ``mean``/``std``
    unless ``normalize=False``."""
    x, y = _formed(stored, labels, manifest["formation"], upsampler)
    if normalize:
        x = Normalize(manifest["mean"], manifest["std"])(x)
    return x, y

