"""Checkpoints of a condensation run: the stored set, the optimiser state and the counters.

A checkpoint is written under a new name (``ckpt-<outer>.pt``, itself written atomically: a
local rename or one object-store PUT) and then published by rewriting the small pointer
``latest.json`` last, so an interrupted write
never replaces the previous checkpoint. Older checkpoints are removed after the pointer moves.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from idc_ray import storage

FORMAT = 1
POINTER = "latest.json"


@dataclass
class Checkpoint:
    outer: int  # outer iterations completed
    classes: dict[int, dict]  # class -> {"data": tensor, "optimizer": {...}}
    config: dict[str, Any]
    loss_history: list[float] = field(default_factory=list)


class CheckpointStore:
    """Checkpoints under ``<output>/checkpoints`` on any storage the storage layer reaches."""

    def __init__(self, output_uri: str, storage_options: dict | None = None, keep: int = 2):
        self.root = storage.join(output_uri, "checkpoints")
        self.options = storage_options
        self.keep = keep

    def check_reachable(self) -> None:
        """Fail before any work when the output cannot be listed (missing bucket, no credentials,
        endpoint down): the storage layer raises one clear line."""
        storage.listdir(self.root, self.options)

    def save(self, ckpt: Checkpoint) -> str:
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "outer": ckpt.outer, "classes": ckpt.classes, "config": ckpt.config,
                    "loss_history": ckpt.loss_history}, buffer)
        name = f"ckpt-{ckpt.outer:07d}.pt"
        storage.atomic_write_bytes(storage.join(self.root, name), buffer.getvalue(), self.options)
        pointer = json.dumps({"format": FORMAT, "outer": ckpt.outer, "file": name}).encode()
        storage.atomic_write_bytes(storage.join(self.root, POINTER), pointer, self.options)
        self._prune(name)
        return storage.join(self.root, name)

    def latest(self) -> Checkpoint | None:
        pointer_uri = storage.join(self.root, POINTER)
        if not storage.exists(pointer_uri, self.options):
            return None
        try:
            pointer = json.loads(storage.read_bytes(pointer_uri, self.options))
            raw = storage.read_bytes(storage.join(self.root, pointer["file"]), self.options)
            payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except storage.StorageError:
            raise
        except Exception as e:  # a damaged checkpoint must not be half-used
            raise ValueError(f"checkpoint under '{self.root}' is unreadable ({type(e).__name__}); "
                             "remove the checkpoints folder to start over") from None
        if payload.get("format") != FORMAT:
            raise ValueError(f"checkpoint under '{self.root}' has format {payload.get('format')}, expected {FORMAT}")
        return Checkpoint(payload["outer"], payload["classes"], payload["config"], payload["loss_history"])

    def _prune(self, current: str) -> None:
        names = [n for n in storage.listdir(self.root, self.options) if n.startswith("ckpt-") and n.endswith(".pt")]
        for name in names[: max(0, len(names) - self.keep)]:
            if name != current:
                storage.remove(storage.join(self.root, name), self.options)
