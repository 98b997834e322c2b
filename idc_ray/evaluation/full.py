"""The full-data arm (``--baseline full``): each test model trained on the whole real training
split with the same recipe as the sets it is compared with (the paper's "full data" column),
and the cache that lets a second report reuse it.

A run is cached per (dataset, data root, model, recipe, seed, width, normalisation, repeat) in
``<cache>/full-arm/`` (the cache folder of ``idc_ray.data.cache``: ``$IDC_CACHE_DIR``, else the
user's cache), as its record and trained weights, sealed with a sha256 sidecar: a damaged entry
is refused with one warning line and trained again. The weights of repeat 1 are the teacher of
the soft-label arms (``--labels soft``).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path

import torch

from idc_ray import storage
from idc_ray.data.cache import cache_dir
from idc_ray.evaluation.protocol import EvalTask, RunRecord

CACHE_VERSION = 1
KIND = "full"
METHOD = "full data"


def cache_file(task: EvalTask, data_key: tuple) -> Path:
    """Where the full-data run of ``task`` on the real data ``data_key`` (dataset, data_uri) lives."""
    key = {"version": CACHE_VERSION, "data": list(data_key), "model": task.model, "recipe": asdict(task.recipe),
           "seed": task.seed, "width": task.width, "mean": list(task.mean), "std": list(task.std),
           "repeat": task.repeat, "classes": task.num_classes}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / "full-arm" / f"{task.model}-r{task.repeat}-{digest}.pt"


def load_cached(task: EvalTask, data_key: tuple) -> RunRecord | None:
    """The cached record (with weights) of ``task``, or None when absent or refused."""
    path = cache_file(task, data_key)
    if not storage.cache_intact(path, "training the full-data arm again"):
        return None
    payload = torch.load(io.BytesIO(storage.read_checked(path)), map_location="cpu", weights_only=True)
    record = RunRecord(**{**payload["record"], "history": [tuple(h) for h in payload["record"]["history"]]})
    record.set_label = task.set_label  # the same run, under this evaluation's label
    return record


def store(task: EvalTask, data_key: tuple, record: RunRecord) -> Path:
    """Cache ``record`` (it must hold the trained weights) for the next report."""
    buffer = io.BytesIO()
    torch.save({"record": asdict(record)}, buffer)
    path = cache_file(task, data_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_checked(str(path), buffer.getvalue())
    return path


__all__ = ["KIND", "METHOD", "cache_file", "load_cached", "store"]
