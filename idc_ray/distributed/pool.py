"""The pretrained expert pool of ``expert.pretrained: auto`` built on a Ray cluster: one task per
pool seed, in parallel, into the keyed cache that Tune trials use too (``idc_ray.tune.cache.ensure_pool``).

The published ImageNet-100 run pre-trains its 10 networks in a separate step before the
condensation (settings sheet, "Per-dataset settings"); here ``jobs/condense.py`` builds the pool
when the cache lacks it and reuses it afterwards. The numbered comments mark the Ray lines:
  1. one task per seed, submitted together and gathered once; each reserves what a matcher actor
     would (a GPU when the cluster has them) plus the memory of the float copy of the training set
     it trains on, so Ray never packs more of them on a node than its memory holds;
  2. each task loads the data itself (memory-mapped from the decode cache the driver filled), so
     no training set travels through the object store.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import ray

from idc_ray import storage
from idc_ray.config import IDCConfig
from idc_ray.data import RealData, load_dataset
from idc_ray.distributed.actors import actor_device, actor_runtime_env, configure_worker, use_assigned_cpus
from idc_ray.engine.expert import pool_checkpoint
from idc_ray.pretrain import pretrain_seed
from idc_ray.run.backend import RunOptions
from idc_ray.tune.cache import ensure_pool


def _log(message: str) -> None:
    print(f"[idc-ray] {message}", file=sys.stderr, flush=True)


@ray.remote(max_retries=1)
def pretrain_seed_task(cfg: IDCConfig, folder: str, seed: int, epochs: int, storage_options: dict | None) -> dict:
    """Train pool network ``seed`` into ``folder`` (:func:`idc_ray.pretrain.pretrain_seed`)."""
    configure_worker(storage_options)
    use_assigned_cpus()
    device = actor_device()
    data = load_dataset(cfg.data.dataset, cfg.data.data_uri)  # 2.
    pretrain_seed(cfg, data, folder, seed, epochs=epochs, device=device)
    return {"seed": seed, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "device": str(device)}


def store_bytes(data: RealData) -> int:
    """Host memory of the float32 [0, 1] training store a seed trains on (ClassStore): 4 bytes
    per stored uint8 value, plus the uint8 arrays themselves."""
    return 5 * data.train_x.numel()


def seed_resources(data: RealData, options: RunOptions) -> dict[str, Any]:
    """Ray options of one seed task (1.): a matcher actor's CPUs and GPUs, and the store's memory,
    capped at the largest node's so the task can always be placed."""
    total = ray.cluster_resources()
    gpus = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    memory = int(min(store_bytes(data), largest))
    return {"num_cpus": options.cpus_per_actor or 1.0, "num_gpus": gpus, **({"memory": memory} if memory else {}),
            "runtime_env": actor_runtime_env(options.keep_freed_memory)}


def pretrain_seeds(cfg: IDCConfig, folder: Path, seeds: int, epochs: int, options: RunOptions,
                   log: Callable[[str], None] = _log) -> list[dict]:
    """Write pool networks 0..seeds-1 into ``folder`` as parallel Ray tasks; one record per task.

    Raises:
        ValueError when a task wrote on a node whose files this driver cannot see (the cache must
        be a folder every node mounts).
    """
    # Loaded once here: fills the decode cache the tasks read, and sizes their memory request.
    data = load_dataset(cfg.data.dataset, cfg.data.data_uri)
    resources = seed_resources(data, options)
    del data
    refs = [pretrain_seed_task.options(name=f"pretrain seed {s}", **resources).remote(  # 1.
        cfg, str(folder), s, epochs, storage.current()) for s in range(seeds)]
    records = ray.get(refs)
    missing = [p for s in range(seeds) for e in range(epochs + 1) if not (p := pool_checkpoint(folder, s, e)).is_file()]
    if missing:
        raise ValueError(f"the pool tasks wrote {missing[0]} on another node, where this driver cannot read it; "
                         "pass --pool-cache a folder every node mounts")
    log(f"pretrained {seeds} pool networks x {epochs} epochs as Ray tasks on "
        f"{len({r['node'] for r in records})} node(s)")
    return records


def ensure_pool_on_ray(cfg: IDCConfig, cache_dir: str, seeds: int, options: RunOptions,
                       log: Callable[[str], None] = _log) -> str:
    """The cached pool of ``cfg`` (``<cache_dir>/pools/<key>``, the key of
    :func:`idc_ray.tune.cache.pool_settings`), pretrained here by parallel seed tasks when missing."""
    build = lambda plain, folder, epochs: pretrain_seeds(plain, folder, seeds, epochs, options, log)
    return ensure_pool(cfg, None, cache_dir, seeds, log=log, build=build)


__all__ = ["ensure_pool_on_ray", "pretrain_seed_task", "pretrain_seeds", "seed_resources", "store_bytes"]
