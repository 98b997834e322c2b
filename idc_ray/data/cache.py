"""Decode-once cache for sources that are slow to decode (ImageNet JPEGs, speech WAVs).

The decoded uint8 arrays are saved with ``torch.save`` and read back memory-mapped, so a second
load costs a file open rather than minutes of decoding. The cache file name holds a digest of
everything the arrays depend on (loader settings and the list of input files with their sizes),
so changed inputs or settings never read a stale cache.

Location, in order: the ``IDC_CACHE_DIR`` environment variable, else the user's cache folder
(``$XDG_CACHE_HOME/idc_ray``, else ``~/.cache/idc_ray``): data folders are often read-only or
shared, so nothing is written next to the data. The data root is part of the digest, so one
cache serves any number of data folders. A cache that cannot be written only costs a warning.

Each cache file carries its sha256 in ``<file>.sha256``, written last (``idc_ray.storage.seal``)
and checked before the file is mapped: a corrupt, truncated or unsealed cache is refused with
one warning line naming it and decoded again, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from idc_ray import storage

from .sources import Arrays

CACHE_ENV = "IDC_CACHE_DIR"
CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$IDC_CACHE_DIR``, else ``$XDG_CACHE_HOME/idc_ray``, else ``~/.cache/idc_ray``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "idc_ray"


def cache_path(root: str, name: str, key: dict[str, Any]) -> Path:
    """Where the decoded arrays of ``name`` under ``root`` with settings/inputs ``key`` live."""
    key = {"version": CACHE_VERSION, "root": os.path.abspath(root), **key}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"{name}-{digest[:16]}.pt"


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of caches this process checked


def _intact(path: Path) -> bool:
    """Whether the cache at ``path`` matches its sha256, hashed once per process and file version
    (a decoded ImageNet subset is gigabytes; the driver and a task may load it several times)."""
    try:
        st = path.stat()
    except OSError:
        return False
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    if stamp in _VERIFIED:
        return True
    if storage.cache_intact(path, "decoding again"):
        _VERIFIED.add(stamp)
        return True
    return False


def cached(path: Path, build: Callable[[], tuple[Arrays, dict[str, Any]]]) -> tuple[Arrays, dict[str, Any]]:
    """The arrays and metadata at ``path``, or ``build()``'s result, saved there for next time."""
    if _intact(path):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return tuple(payload[k] for k in ("train_x", "train_y", "test_x", "test_y")), payload["meta"]
        except Exception as e:  # a damaged cache is rebuilt, never half-used
            warnings.warn(f"ignoring unreadable cache {path} ({type(e).__name__}); decoding again", stacklevel=2)
    arrays, meta = build()
    payload = dict(zip(("train_x", "train_y", "test_x", "test_y"), arrays), meta=meta)
    try:
        with storage.atomic_local_path(path) as tmp:
            torch.save(payload, tmp)
        storage.seal(path)
    except (OSError, storage.StorageError) as e:
        warnings.warn(f"could not write the decoded-data cache {path} ({getattr(e, 'strerror', None) or e}); "
                      f"set {CACHE_ENV} to a writable folder to decode only once", stacklevel=2)
    return arrays, meta
