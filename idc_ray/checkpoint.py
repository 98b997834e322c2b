"""Checkpoints of a condensation run: the stored set, the optimiser state and the counters.

Layout under ``<output>/checkpoints`` (a local folder or an fsspec URL such as ``s3://``):

* ``ckpt-<outer>.pt``: one checkpoint (``torch.save`` of a dict), written atomically (a local
  rename, or one object-store PUT);
* ``latest.json``: the pointer, rewritten LAST, listing the kept checkpoints newest first with
  the sha256 of each file.

A crash between a checkpoint file and its pointer leaves the previous checkpoint published and
intact; the orphan file is pruned by the next save. Only the newest ``keep`` checkpoints are kept.
A checkpoint whose bytes do not match the pointer's sha256, or that does not load, is refused
with one line naming the file; :meth:`CheckpointStore.latest` then falls back to the previous
good one, so ``--resume`` continues from there (the replay is deterministic: same final bytes).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from idc_ray import storage

POINTER = "latest.json"
POINTER_FORMAT = "idc-ray/checkpoint"
POINTER_VERSION = 2  # 1: the pointer without checksums of the first release
PAYLOAD_FORMAT = 1

log = logging.getLogger("idc_ray")


class CheckpointError(ValueError):
    """A checkpoint (or its pointer) that cannot be used; the message is one line naming the file."""


@dataclass
class Checkpoint:
    outer: int  # outer iterations completed
    classes: dict[int, dict]  # class -> {"data": tensor, "optimizer": {...}}
    config: dict[str, Any]
    loss_history: list[float] = field(default_factory=list)
    upsampler: dict | None = None  # formation learned: the shared upsampler's weights and optimiser


def _file_name(outer: int) -> str:
    return f"ckpt-{outer:07d}.pt"


def _serialise(ckpt: Checkpoint) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": PAYLOAD_FORMAT, "outer": ckpt.outer, "classes": ckpt.classes, "config": ckpt.config,
                "loss_history": ckpt.loss_history, "upsampler": ckpt.upsampler}, buffer)
    return buffer.getvalue()


def _deserialise(raw: bytes, uri: str) -> Checkpoint:
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch reports, a damaged file is refused
        raise CheckpointError(f"checkpoint '{uri}' is unreadable ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != PAYLOAD_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint '{uri}' has format {found!r}, this idc_ray reads {PAYLOAD_FORMAT}")
    return Checkpoint(payload["outer"], payload["classes"], payload["config"], payload["loss_history"],
                      payload.get("upsampler"))


class CheckpointStore:
    """Checkpoints under ``<output>/checkpoints`` on any storage the storage layer reaches."""

    def __init__(self, output_uri: str, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = storage.join(output_uri, "checkpoints")
        self.keep = keep

    def check_reachable(self) -> None:
        """Fail before any work when the output cannot be listed (missing bucket, no credentials,
        endpoint down): the storage layer raises one clear line."""
        storage.listdir(self.root)

    def _pointer(self) -> list[dict[str, Any]]:
        """The kept checkpoints, newest first ([] when none was ever published)."""
        uri = storage.join(self.root, POINTER)
        if not storage.exists(uri):
            return []
        pointer = storage.read_json(uri, fmt=POINTER_FORMAT, version=POINTER_VERSION,
                                    kind="idc-ray checkpoint pointer", error=CheckpointError,
                                    fix="start a new run in another --output")
        return list(pointer.get("checkpoints", []))

    def save(self, ckpt: Checkpoint) -> str:
        """Write ``ckpt``, then publish it by rewriting the pointer; returns the file's URI."""
        raw = _serialise(ckpt)
        name = _file_name(ckpt.outer)
        uri = storage.join(self.root, name)
        storage.atomic_write_bytes(uri, raw)
        entry = {"outer": ckpt.outer, "file": name, "sha256": storage.sha256(raw)}
        kept = [entry, *(e for e in self._pointer() if e["file"] != name)][: self.keep]
        # "outer" and "file" at the top name the newest checkpoint for a reader of the folder.
        pointer = {"format": POINTER_FORMAT, "version": POINTER_VERSION, "outer": ckpt.outer, "file": name,
                   "checkpoints": kept}
        storage.atomic_write_bytes(storage.join(self.root, POINTER), json.dumps(pointer, indent=1).encode())
        self._prune({e["file"] for e in kept})
        return uri

    def load(self, entry: Mapping[str, Any]) -> Checkpoint:
        """The checkpoint a pointer entry names, checked against its sha256 (CheckpointError if not)."""
        uri = storage.join(self.root, entry["file"])
        raw = storage.read_required(uri, CheckpointError(
            f"checkpoint '{uri}' is missing although latest.json lists it"))
        storage.verify(raw, entry["sha256"], CheckpointError(
            f"checkpoint '{uri}' does not match its sha256 in latest.json (corrupt or modified)"))
        return _deserialise(raw, uri)

    def latest(self) -> Checkpoint | None:
        """The newest good checkpoint, None when none was published.

        A refused checkpoint is logged (one warning line naming the file) and the previous kept
        one is tried; when every kept one is refused, the newest's CheckpointError is raised (the
        only line when there was one).
        """
        entries = self._pointer()
        refused: CheckpointError | None = None
        for i, entry in enumerate(entries):
            try:
                return self.load(entry)
            except CheckpointError as e:
                refused = refused or e
                if i + 1 < len(entries):  # the last one refused is named by the error below
                    log.warning("%s; falling back to the previous checkpoint", e)
        if refused is not None:
            raise CheckpointError(f"{refused}; no earlier good checkpoint under '{self.root}': "
                                  "remove the checkpoints folder to start over")
        return None

    def _prune(self, kept: set[str]) -> None:
        """Remove checkpoint files the pointer no longer lists (older ones, crash orphans)."""
        for name in storage.listdir(self.root):
            if name.startswith("ckpt-") and name.endswith(".pt") and name not in kept:
                storage.remove(storage.join(self.root, name))
