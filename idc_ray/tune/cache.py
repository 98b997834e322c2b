"""Caches the trials of a sweep share (and condensation jobs with ``expert.pretrained: auto``):
the pretrained expert pool and the prepared data, each keyed by a digest of exactly the settings
it depends on, so a swept value that does not change them costs nothing. A pool is computed
once under a file lock and renamed into place only when complete. Every network of a cached pool
is checked against its sha256 (``idc_ray.storage.check_file``) before the pool is handed out: a
corrupt, truncated or unsealed one is refused with one line naming it, and the pool is built again."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from idc_ray import __version__, storage
from idc_ray.config import IDCConfig
from idc_ray.data import get_spec
from idc_ray.engine.plan import build_plan
from idc_ray import models
from idc_ray.pretrain import pretrain_pool
from idc_ray.tune.space import TuneSpace, trial_config

AUTO_POOL = "auto"  # expert.pretrained: auto -> a pool pretrained once per sweep, in the cache
POOL_DONE = "settings.json"  # written last into a pool folder: its presence means the pool is complete
# Expert settings the real-data pretraining never reads (pretrain_pool trains full epochs from a
# fresh network): sweeping them must not cost another pool.
_POOL_UNUSED = ("pretrained", "pt_from", "pt_num", "n_data", "early", "fix_iter", "real_sampling")


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short digest of the settings a cached result depends on (JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_settings(cfg: IDCConfig) -> dict[str, Any]:
    """What the prepared data depends on: the dataset and where it is read from."""
    return {"kind": "data", "dataset": cfg.data.dataset, "data_uri": cfg.data.data_uri}


def pool_settings(cfg: IDCConfig, seeds: int) -> dict[str, Any]:
    """What a pretrained expert pool depends on (:func:`idc_ray.pretrain.pretrain_pool`): the data,
    the expert's network and optimiser, the resolved augmentation, the seed, how many networks and
    epochs. Matching, synthetic-set and evaluation settings are not part of it."""
    expert = build_plan(cfg, get_spec(cfg.data.dataset, cfg.data.data_uri)).expert
    net = {k: v for k, v in dataclasses.asdict(expert).items() if k not in _POOL_UNUSED}
    return {"kind": "expert-pool", "version": __version__, "networks": models.NETWORKS_REVISION,
            "dataset": cfg.data.dataset, "data_uri": cfg.data.data_uri, "expert": net, "seeds": seeds,
            "epochs": pool_epochs(cfg)}


def pool_epochs(cfg: IDCConfig) -> int:
    """Epochs a pool must hold for ``expert.pt_from`` .. ``pt_from + pt_num - 1`` to exist."""
    return cfg.expert.pt_from + cfg.expert.pt_num - 1


def pool_dir(cache_dir: str | os.PathLike, cfg: IDCConfig, seeds: int) -> Path:
    """Where the pool for ``cfg`` lives in the cache: ``<cache>/pools/<key>``."""
    return Path(cache_dir) / "pools" / settings_key(pool_settings(cfg, seeds))


def ensure_pool(cfg: IDCConfig, load_data: Callable[[], Any] | None, cache_dir: str | os.PathLike, seeds: int, *,
                device: str | torch.device = "cpu", log: Callable[[str], None] = print,
                build: Callable[[IDCConfig, Path, int], None] | None = None) -> str:
    """The pretrained pool for ``cfg``, computed once: later calls (other trials, other sweeps,
    condensation jobs) with the same settings return the cached folder. Concurrent callers wait
    on a file lock, and a pool is renamed into place only when complete, so none ever reads half
    a pool.

    Args:
        load_data: returns the RealData to pretrain on (only called when the pool is missing and
            ``build`` is None).
        build: ``build(cfg, folder, epochs)`` writes the ``seeds`` networks into ``folder`` (e.g.
            as parallel Ray tasks, ``idc_ray.distributed.pool``); default: :func:`pretrain_pool`
            in this process.
    Returns:
        the absolute pool folder, for ``expert.pretrained``.
    """
    if build is None:
        build = lambda plain, folder, epochs: pretrain_pool(plain, load_data(), folder, seeds=seeds, epochs=epochs,
                                                            device=device)
    final = pool_dir(cache_dir, cfg, seeds).absolute()
    if (final / POOL_DONE).is_file() and refused(final) is None:
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock"):
        if (final / POOL_DONE).is_file():
            error = refused(final)
            if error is None:
                return str(final)
            log(f"{error}; pretraining the pool again")
        settings = pool_settings(cfg, seeds)
        log(f"pretraining the expert pool {final.name} ({seeds} networks x {settings['epochs']} epochs)")
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}"
        try:
            plain = replace(cfg, expert=replace(cfg.expert, pretrained=None))
            build(plain, tmp, settings["epochs"])
            (tmp / POOL_DONE).write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
            if final.exists():  # a folder without the marker is not a complete pool: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def refused(pool: Path) -> storage.ChecksumError | None:
    """Why a complete pool folder cannot be used: the first network file (``seed*/epoch*.pt``)
    that does not match its sha256 sidecar; None when every one does."""
    for path in sorted(pool.glob("seed*/epoch*.pt")):
        try:
            storage.check_file(path)
        except storage.ChecksumError as e:
            return e
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pool_shared(space: TuneSpace, base: IDCConfig) -> bool:
    """True when every trial of the sweep would use the same pool as ``base`` (no swept value
    changes the pool's settings), so the driver can compute it once before the trials start."""
    if base.expert.pretrained != AUTO_POOL:
        return False
    key = settings_key(pool_settings(base, space.pool_seeds))
    for p in space.params:
        for value in p.probes():
            cfg = trial_config(base, {p.key: value})
            if cfg.expert.pretrained != AUTO_POOL or settings_key(pool_settings(cfg, space.pool_seeds)) != key:
                return False
    return True


__all__ = ["AUTO_POOL", "POOL_DONE", "data_settings", "ensure_pool", "pool_dir", "pool_epochs", "pool_settings",
           "pool_shared", "refused", "settings_key"]
