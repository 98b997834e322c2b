"""Checkpoints of a condensation run: the stored set, the optimiser state and the counters.

A checkpoint is written under a new name (``ckpt-<outer>.pt``, itself written atomically) and
then published by rewriting the small pointer ``latest.json`` last, so an interrupted write
never replaces the previous checkpoint. Older checkpoints are removed after the pointer moves.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch

import fsspec

from idc_ray.artifacts import _atomic_write

FORMAT = 1
POINTER = "latest.json"


@dataclass
class Checkpoint:
    outer: int  # outer iterations completed
    classes: dict[int, dict]  # class -> {"data": tensor, "optimizer": {...}}
    config: dict[str, Any]
    loss_history: list[float] = field(default_factory=list)


class CheckpointStore:
    """Checkpoints under ``<output>/checkpoints`` on any fsspec storage (local path, s3://...)."""

    def __init__(self, output_uri: str, storage_options: dict | None = None, keep: int = 2):
        self.fs, root = fsspec.core.url_to_fs(str(output_uri), **(storage_options or {}))
        self.root = root.rstrip("/") + "/checkpoints"
        self.local = "file" in self.fs.protocol
        self.keep = keep

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _write(self, name: str, data: bytes) -> None:
        """Local: temporary name + rename. Object stores: one PUT, which is atomic per object."""
        if self.local:
            from pathlib import Path

            _atomic_write(Path(self._path(name)), lambda tmp: tmp.write_bytes(data))
        else:
            self.fs.pipe_file(self._path(name), data)

    def save(self, ckpt: Checkpoint) -> str:
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "outer": ckpt.outer, "classes": ckpt.classes, "config": ckpt.config,
                    "loss_history": ckpt.loss_history}, buffer)
        name = f"ckpt-{ckpt.outer:07d}.pt"
        self._write(name, buffer.getvalue())
        self._write(POINTER, json.dumps({"format": FORMAT, "outer": ckpt.outer, "file": name}).encode())
        self._prune(name)
        return self._path(name)

    def latest(self) -> Checkpoint | None:
        if not self.fs.exists(self._path(POINTER)):
            return None
        try:
            pointer = json.loads(self.fs.cat_file(self._path(POINTER)))
            raw = self.fs.cat_file(self._path(pointer["file"]))
            payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged checkpoint must not be half-used
            raise ValueError(f"checkpoint under '{self.root}' is unreadable ({type(e).__name__}); "
                             "remove the checkpoints folder to start over") from None
        if payload.get("format") != FORMAT:
            raise ValueError(f"checkpoint under '{self.root}' has format {payload.get('format')}, expected {FORMAT}")
        return Checkpoint(payload["outer"], payload["classes"], payload["config"], payload["loss_history"])

    def _prune(self, current: str) -> None:
        names = sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))
        names = [n for n in names if n.startswith("ckpt-") and n.endswith(".pt")]
        for name in names[: max(0, len(names) - self.keep)]:
            if name != current:
                self.fs.rm_file(self._path(name))
