"""Image-classification datasets as Parquet shards plus ``dataset.json``, local or on S3.

Shard columns: ``label`` (integer class id), ``image`` (encoded PNG/JPEG bytes, or a list of
C*H*W uint8 values in CHW order, fixed-size or not), optional ``split`` (``train``/``test``;
``val``/``validation`` count as test). Shards are read with pyarrow through the storage layer in
batches (``iter_batches``), never a whole file at once: one pass over the small ``label``/``split``
columns sizes the output exactly, a second decodes the images straight into it.

``dataset.json`` (next to the shards, written last by :func:`write_dataset`) holds the spec:

    {"format": "idc-ray/parquet-dataset", "version": 1,
     "name": "cifar10",                    # optional; a registered name brings that dataset's rules
     "class_names": ["airplane", ...],      # required; label i is class_names[i]
     "shape": [3, 32, 32],                  # required; C, H, W (H == W)
     "mean": [...], "std": [...],           # required; per channel, for pixels in [0, 1]
     "lr_base_size": 32, "flip": true,      # optional; default H and true
     "family": "cifar",                     # optional; whose rules apply (default: the registered name's, else the name)
     "splits": {"train": {"files": ["train-00000.parquet"], "count": 50000}, "test": {...}}}

A split may also list ``"labels"``, parallel to ``files``: the class ids each file holds (the
Ray Data writer, ``idc_ray.distributed.interop``, splits every batch by class); a reader that
wants some classes then never opens the other classes' files.

Without ``splits``, every ``*.parquet`` file beside dataset.json is read; a row's split is its
``split`` column, else the file-name prefix (``train-00000.parquet`` is train).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from idc_ray import storage

from .sources import Arrays, DatasetFormatError, DatasetNotFoundError

DATASET_JSON = "dataset.json"
DATASET_FORMAT = "idc-ray/parquet-dataset"
DATASET_VERSION = 1
SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test", "validation": "test"}
ENCODINGS = ("png", "raw")
READ_BATCH = 256  # rows decoded at a time: bounded memory whatever the row-group size
# pyarrow reports damaged bytes as ArrowInvalid or a plain OSError ("Corrupt snappy compressed
# data"); these OSErrors come from the transport instead and go to the storage layer's messages.
_TRANSPORT = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)


def _fix(uri: str) -> str:
    return f"regenerate it with jobs/prepare_data.py or fix {uri} (format in docs/artifact.md)"


def is_dataset(root) -> bool:
    """Whether ``root`` holds a dataset.json (the Parquet form)."""
    return root is not None and storage.exists(storage.join(root, DATASET_JSON))


def read_info(root) -> dict[str, Any]:
    """The validated dataset.json under ``root``."""
    uri = storage.join(os.fspath(root), DATASET_JSON)
    info = storage.read_json(uri, fmt=DATASET_FORMAT, version=DATASET_VERSION, implied=True,
                             kind="idc-ray Parquet dataset description", error=DatasetFormatError, fix=_fix(uri),
                             missing=DatasetNotFoundError(
                                 f"no {DATASET_JSON} at {uri}: point --data-uri at a folder written by "
                                 "jobs/prepare_data.py (or write dataset.json, see docs/artifact.md)"))
    missing = [k for k in ("class_names", "shape", "mean", "std") if k not in info]
    if missing:
        raise DatasetFormatError(f"{uri} lacks {', '.join(missing)}; {_fix(uri)}")
    shape = info["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)
            and shape[1] == shape[2]):
        raise DatasetFormatError(f"{uri}: shape must be [C, H, W] with H == W, got {shape!r}")
    if len(info["mean"]) != shape[0] or len(info["std"]) != shape[0]:
        raise DatasetFormatError(f"{uri}: mean and std need {shape[0]} entries (one per channel)")
    return info


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _shards(root: str, info: Mapping) -> list[tuple[str, str | None, set[int] | None]]:
    """(shard URI, its split or None when rows carry a ``split`` column, its labels or None when unlisted)."""
    if "splits" in info:
        unknown = sorted(set(info["splits"]) - set(SPLIT_ALIASES))
        if unknown:
            raise DatasetFormatError(f"{storage.join(root, DATASET_JSON)}: unknown splits {unknown}; use train and test")
        return [(storage.join(root, f), SPLIT_ALIASES[split], None if "labels" not in entry else set(entry["labels"][i]))
                for split, entry in info["splits"].items() for i, f in enumerate(entry["files"])]
    names = [n for n in storage.listdir(root) if n.endswith(".parquet")]
    if not names:
        raise DatasetNotFoundError(f"no .parquet files beside {storage.join(root, DATASET_JSON)}; {_fix(root)}")
    return [(storage.join(root, n), SPLIT_ALIASES.get(n.split("-")[0].split(".")[0]), None) for n in names]


def _open(f, uri: str):
    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, _TRANSPORT):
            raise
        raise DatasetFormatError(f"{uri} is not a readable Parquet file ({' '.join(str(e).split())[:120]}); "
                                 f"the file is truncated or corrupt: {_fix(uri)}") from None
    names = set(pf.schema_arrow.names)
    if not {"image", "label"} <= names:
        raise DatasetFormatError(f"{uri} has columns {sorted(names)}; needs 'image' and 'label'")
    return pf


def _batches(pf, uri: str, columns: list[str]):
    try:
        yield from pf.iter_batches(batch_size=READ_BATCH, columns=columns)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, _TRANSPORT):
            raise
        raise DatasetFormatError(f"{uri} cannot be read ({' '.join(str(e).split())[:120]}); "
                                 f"the file is truncated or corrupt: {_fix(uri)}") from None


def _scan(uri: str, split: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: labels and split of every row of one shard (small columns only)."""
    with storage.open_input(uri) as f:
        pf = _open(f, uri)
        if split is None and "split" not in pf.schema_arrow.names:
            raise DatasetFormatError(f"cannot tell the split of {uri}: name it train-*.parquet / test-*.parquet, "
                                     "add a 'split' column, or list it under 'splits' in dataset.json")
        columns = ["label"] + (["split"] if split is None else [])
        labels, splits = [], []
        for batch in _batches(pf, uri, columns):
            labels.append(batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64))
            if split is None:
                values = batch.column(1).to_pylist()
                unknown = {v for v in values if v not in SPLIT_ALIASES}
                if unknown:
                    raise DatasetFormatError(f"{uri}: unknown split values {sorted(map(str, unknown))}; use train or test")
                splits.append(np.array([SPLIT_ALIASES[v] == "test" for v in values], dtype=bool))
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    is_test = np.concatenate(splits) if split is None and splits else np.full(len(labels), split == "test")
    return labels, is_test


def _decode(column, shape: Sequence[int], uri: str) -> np.ndarray:
    """An Arrow image column -> (n, C, H, W) uint8."""
    c, h, w = shape
    kind = column.type
    if column.null_count:
        raise DatasetFormatError(f"{uri}: {column.null_count} rows have no image")
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != c * h * w).any():
            raise DatasetFormatError(f"{uri}: image lists hold {sorted(set(lengths.tolist()))[:3]} values; "
                                     f"expected {c * h * w} (= {c}x{h}x{w}, CHW order)")
        return column.flatten().to_numpy(zero_copy_only=False).astype(np.uint8, copy=False).reshape(-1, c, h, w)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        from torchvision.io import ImageReadMode, decode_image

        if c not in (1, 3):
            raise DatasetFormatError(f"{uri}: encoded images must be gray or RGB, dataset.json says {c} channels")
        mode = ImageReadMode.GRAY if c == 1 else ImageReadMode.RGB
        out = np.empty((len(column), c, h, w), dtype=np.uint8)
        for i, data in enumerate(column.to_pylist()):
            try:
                image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
            except RuntimeError as e:
                raise DatasetFormatError(f"{uri}: an image does not decode ({' '.join(str(e).split())[:80]})") from None
            if tuple(image.shape) != (c, h, w):
                raise DatasetFormatError(f"{uri}: an image is {tuple(image.shape)}, dataset.json says {(c, h, w)}")
            out[i] = image.numpy()
        return out
    raise DatasetFormatError(f"{uri}: column 'image' has type {kind}; expected binary (PNG/JPEG) or a uint8 list")


def read_arrays(root, info: Mapping | None = None, classes: Sequence[int] | None = None,
                split: str | None = None) -> Arrays:
    """The dataset under ``root`` as uint8 arrays, optionally only the rows of ``classes``, or of
    one ``split`` ("train" or "test"; the other split's arrays are then empty).

    Rows keep their order (shards in listing order, rows in file order). Filtering by class
    happens while reading, so a worker that owns a few classes never holds the others' pixels.
    """
    root = os.fspath(root)
    info = info or read_info(root)
    shape = info["shape"]
    wanted = None if classes is None else np.asarray(sorted({int(c) for c in classes}), dtype=np.int64)
    scans = []
    for uri, shard_split, shard_labels in _shards(root, info):
        if split is not None and shard_split is not None and shard_split != split:
            continue  # a shard of the other split is never opened
        if wanted is not None and shard_labels is not None and not shard_labels & set(wanted.tolist()):
            continue  # nor a shard of other classes
        labels, is_test = _scan(uri, shard_split)
        keep = np.ones(len(labels), bool) if wanted is None else np.isin(labels, wanted)
        if split is not None:
            keep &= is_test == (split == "test")
        scans.append((uri, labels, is_test, keep))
    out = {}
    for test in (False, True):
        n = sum(int((keep & (is_test == test)).sum()) for _, _, is_test, keep in scans)
        out[test] = (np.empty((n, *shape), np.uint8), np.empty(n, np.int64), [0])
    for uri, labels, is_test, keep in scans:
        if not keep.any():
            continue
        with storage.open_input(uri) as f:
            pf = _open(f, uri)
            row = 0
            for batch in _batches(pf, uri, ["image"]):
                rows = slice(row, row + batch.num_rows)
                row += batch.num_rows
                for test in (False, True):
                    mask = keep[rows] & (is_test[rows] == test)
                    if mask.any():
                        x, y, pos = out[test]
                        images = _decode(batch.column(0).filter(pa.array(mask)), shape, uri)
                        x[pos[0] : pos[0] + len(images)] = images
                        y[pos[0] : pos[0] + len(images)] = labels[rows][mask]
                        pos[0] += len(images)
            if row != len(labels):
                raise DatasetFormatError(f"{uri} changed while it was read ({len(labels)} then {row} rows); read it again")
    (train_x, train_y, _), (test_x, test_y, _) = out[False], out[True]
    return torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), torch.from_numpy(test_y)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def encode_table(x: torch.Tensor, y: torch.Tensor, encoding: str) -> pa.Table:
    """Shard rows: ``label`` int64 and ``image`` (PNG bytes or a raw uint8 CHW list) of uint8 images."""
    if encoding == "png":
        from torchvision.io import encode_png

        images = pa.array([encode_png(img).numpy().tobytes() for img in x], type=pa.binary())
    else:
        flat = pa.array(x.contiguous().reshape(-1).numpy(), type=pa.uint8())
        images = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(x.shape[1:])))
    return pa.table({"label": pa.array(y.numpy(), type=pa.int64()), "image": images})


def write_dataset(out, splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], info: Mapping[str, Any], *,
                  rows_per_shard: int = 10_000, row_group_size: int = 1_000, encoding: str = "png",
                  overwrite: bool = False) -> str:
    """Write ``splits`` ({"train": (x uint8, y int64), ...}) as shards under ``out``, then
    dataset.json (``info`` + files and counts) LAST. Returns the dataset.json URI.

    Existing dataset at ``out``: refused unless ``overwrite``, which first deletes its dataset.json
    (so no reader ever sees old metadata over new shards). On any failure the shards written so
    far are removed, so ``out`` never holds a partial dataset.
    """
    out = os.fspath(out)
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if rows_per_shard < 1 or row_group_size < 1:
        raise ValueError("rows per shard and row-group size must be at least 1")
    target = storage.join(out, DATASET_JSON)
    old_files: list[str] = []
    if storage.exists(target):
        if not overwrite:
            raise ValueError(f"'{out}' already holds a dataset ({DATASET_JSON}); choose an empty location or pass --overwrite")
        try:
            old_files = [f for entry in read_info(out).get("splits", {}).values() for f in entry["files"]]
        except DatasetFormatError:
            old_files = []
        storage.remove(target)
    written: list[str] = []
    entries: dict[str, dict[str, Any]] = {}
    try:
        for split, (x, y) in splits.items():
            files = []
            for i, start in enumerate(range(0, len(x), rows_per_shard)):
                name = f"{split}-{i:05d}.parquet"
                table = encode_table(x[start : start + rows_per_shard], y[start : start + rows_per_shard], encoding)
                with storage.atomic_open(storage.join(out, name)) as f:
                    pq.write_table(table, f, row_group_size=row_group_size, compression="zstd")
                written.append(name)
                files.append(name)
            counts = torch.bincount(y, minlength=len(info["class_names"])).tolist()
            entries[split] = {"files": files, "count": len(x), "class_counts": counts}
        write_info(out, info, entries, encoding)
    except BaseException:
        for name in written:
            try:
                storage.remove(storage.join(out, name))
            except storage.StorageError:
                pass  # the first error is the one to report
        raise
    for name in set(old_files) - set(written):
        storage.remove(storage.join(out, name))
    return target


def write_info(out, info: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]], encoding: str) -> str:
    """dataset.json under ``out``: ``info`` and the splits' ``entries`` (files, counts), written
    after the shards it lists. Returns its URI."""
    target = storage.join(os.fspath(out), DATASET_JSON)
    document = {"format": DATASET_FORMAT, "version": DATASET_VERSION, **info, "encoding": encoding, "splits": dict(entries)}
    storage.atomic_write_bytes(target, json.dumps(document, indent=1).encode())
    return target
