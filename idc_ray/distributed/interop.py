"""Ray's own libraries from the user's side: a ``ray.data.Dataset`` written to the Parquet
dataset format by Ray Data workers, a condensed set read back as a ``ray.data.Dataset`` of formed
samples, and the report of a trainable run by a user's ``ray.tune.Tuner`` (``idc_ray.api``).

The driver never holds the training set: every batch is converted, split by class and written
as one shard per class by a Ray Data worker (``map_batches``), which returns only a small
summary (file names, counts, per-channel sums for the mean and std). The execution keeps the
input's row order (``preserve_order``), so each class's rows keep their order, and with it the
sampling of the condensation: a Ray Dataset of a registered dataset's rows condenses to the
bytes of the registered run.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import ray
import torch

from idc_ray import storage
from idc_ray.artifacts import PARQUET, form_training_set, load_upsampler, read_manifest
from idc_ray.data import parquet

WRITE_BATCH = 4096  # rows per Ray Data batch written: one shard per class present in it


def is_ray_dataset(data: Any) -> bool:
    """Whether ``data`` is a ``ray.data.Dataset``."""
    return isinstance(data, ray.data.Dataset)


def _uint8_images(images: np.ndarray, column: str) -> np.ndarray:
    """A batch's image column as (n, C, H, W) uint8: uint8 as is, floats in [0, 1] scaled."""
    if images.dtype == object:
        images = np.stack(list(images))
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"data: column '{column}' holds images of shape {images.shape[1:]}; expected square (C, H, W) "
                         "or (H, W)")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating) or images.min() < 0 or images.max() > 1:
        raise ValueError(f"data: column '{column}' must hold uint8 images or floats in [0, 1], got {images.dtype}")
    return np.round(images.astype(np.float64) * 255).astype(np.uint8)


def _write_batch(batch: Mapping[str, np.ndarray], *, folder: str, split: str, image: str, label: str,
                 options: dict | None) -> dict[str, np.ndarray]:
    """Runs in a Ray Data worker: one shard per class of this batch, and the batch's summary."""
    x, y = _uint8_images(np.asarray(batch[image]), image), np.asarray(batch[label]).astype(np.int64)
    files, labels = [], []
    with storage.configured(options):
        for c in np.unique(y).tolist():
            name = f"{split}-{uuid.uuid4().hex}-c{c}.parquet"
            rows = torch.from_numpy(np.ascontiguousarray(x[y == c]))
            table = parquet.encode_table(rows, torch.from_numpy(y[y == c]), "raw")
            with storage.atomic_open(storage.join(folder, name)) as f:
                pq.write_table(table, f, compression="zstd")
            files.append(name)
            labels.append(c)
    values = x.astype(np.float64) / 255
    summary = {"files": files, "labels": labels, "counts": np.bincount(y).tolist(), "shape": list(x.shape[1:]),
               "sum": values.sum(axis=(0, 2, 3)).tolist(), "squares": np.square(values).sum(axis=(0, 2, 3)).tolist(),
               "min_label": int(y.min()) if len(y) else 0}
    return {"summary": np.array([json.dumps(summary)])}


@contextmanager
def _order_kept() -> Iterator[None]:
    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        yield
    finally:
        context.execution_options.preserve_order = before


def write_split(ds, folder: str, split: str, *, image: str = "image", label: str = "label") -> dict[str, Any]:
    """Write ``ds`` as the ``split`` shards of the Parquet dataset at ``folder`` with Ray Data;
    returns the split's entry (files in row order, their labels, counts) plus ``shape`` and the
    per-channel ``sum``/``squares``/``n`` of its [0, 1] values. Only summaries reach the driver."""
    columns = ds.schema().names  # the schema only: the first block at most
    if image not in columns or label not in columns:
        raise ValueError(f"image_column/label_column: the Ray Dataset has columns {sorted(columns)}, not '{image}' "
                         f"and '{label}'; pass image_column= and label_column=")
    writer = dict(folder=folder, split=split, image=image, label=label, options=storage.current())
    with _order_kept():
        summaries = [json.loads(row["summary"]) for row in
                     ds.map_batches(_write_batch, fn_kwargs=writer, batch_size=WRITE_BATCH, batch_format="numpy").take_all()]
    summaries = [s for s in summaries if s["files"]]
    if any(s["min_label"] < 0 for s in summaries):
        raise ValueError(f"data: the {split} labels must be class ids 0, 1, ..., K-1, found a negative one")
    shapes = {tuple(s["shape"]) for s in summaries}
    if len(shapes) > 1:
        raise ValueError(f"data: the {split} images have several shapes {sorted(shapes)}; resize them to one")
    width = max((len(s["counts"]) for s in summaries), default=0)
    counts = sum((np.pad(s["counts"], (0, width - len(s["counts"]))) for s in summaries), np.zeros(width, np.int64))
    return {"files": [f for s in summaries for f in s["files"]], "labels": [[c] for s in summaries for c in s["labels"]],
            "count": int(counts.sum()), "class_counts": counts.tolist(), "shape": next(iter(shapes), None),
            "sum": np.sum([s["sum"] for s in summaries], axis=0) if summaries else None,
            "squares": np.sum([s["squares"] for s in summaries], axis=0) if summaries else None}


def _form_class(batch: pa.Table, *, formation: Mapping[str, Any], shape: list[int], mean: list[float],
                std: list[float], normalize: bool, upsampler: torch.nn.Module | None) -> dict[str, np.ndarray]:
    """Runs in a Ray Data worker: one class's stored rows -> its formed samples (a learned
    formation with the set's ``upsampler``, shipped with the function's arguments)."""
    labels = torch.from_numpy(batch.column("label").to_numpy().astype(np.int64))
    values = batch.column("data").combine_chunks().flatten().to_numpy().astype(np.float32)
    stored = torch.from_numpy(values.reshape(1, len(labels), *shape))
    manifest = {"formation": formation, "mean": mean, "std": std}
    x, y = form_training_set(stored, labels, manifest, normalize=normalize, upsampler=upsampler)
    return {"image": x.numpy(), "label": y.numpy()}


def formed_ray_dataset(uri: str, *, normalize: bool = True):
    """The condensed set at ``uri`` as a ``ray.data.Dataset`` of formed samples (``image`` float32
    (C, H, W), ``label``): Ray Data reads the stored rows and forms each class in ``map_groups``
    (a learned formation with the set's upsampler, read and checked here once)."""
    manifest = read_manifest(uri)
    upsampler = load_upsampler(uri, manifest)
    folder = uri[: -len("/manifest.json")] if uri.endswith("/manifest.json") else uri
    fs, path = storage.open_fs(storage.join(folder, PARQUET))
    table = ray.data.read_parquet(path, filesystem=pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs))).select_columns(
        ["label", "data"])
    form = dict(formation=manifest["formation"], shape=manifest["shape"], mean=manifest["mean"], std=manifest["std"],
                normalize=normalize, upsampler=upsampler)
    partitions = max(1, min(manifest["num_classes"], ray.data.DataContext.get_current().min_parallelism or 1))
    return table.groupby("label", num_partitions=partitions).map_groups(_form_class, fn_kwargs=form,
                                                                        batch_format="pyarrow")


def trial_id() -> str:
    """The id of the Ray Tune trial this process runs."""
    from ray import tune

    return tune.get_context().get_trial_id()


def report(metrics: Mapping[str, Any]) -> None:
    """Report ``metrics`` to the Ray Tune trial this process runs."""
    from ray import tune

    tune.report(dict(metrics))


__all__ = ["formed_ray_dataset", "is_ray_dataset", "report", "trial_id", "write_split"]
