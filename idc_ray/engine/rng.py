"""Generators derived from (seed, stream, keys...).

Every random draw of a run comes from a generator keyed by what it is for, e.g.
``generator(seed, "real", c, outer, inner)`` for class c's real batch. Keys never include a
shard or actor id, so results do not depend on how classes are sharded over actors. The key is
hashed with BLAKE2b (hashlib) because Python's ``hash`` is salted per process.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit integer determined by the seed, the stream name and the integer keys."""
    text = ":".join([str(int(seed)), stream, *(str(int(k)) for k in keys)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(seed: int, stream: str, *keys: int) -> torch.Generator:
    """A CPU generator for one purpose. Draws happen on the CPU and move to the device, so the
    same key gives the same numbers on every device."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))


@contextmanager
def seeded_global_rng(seed: int, stream: str, *keys: int) -> Iterator[None]:
    """Seed torch's global CPU RNG inside the block and restore it afterwards.

    Needed only for weight initialisation, where torch.nn's default initialisers draw from the
    global generator and take no ``generator`` argument. Build modules on the CPU inside it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, stream, *keys))
        yield
