"""The pretrained expert pool (settings sheet: ImageNet-100 loads networks pre-trained on real
data for ``pt_from`` epochs, drawn at random among seeds). Written once, read by every run.

One network of the pool is :func:`pretrain_seed`; :func:`pretrain_pool` (jobs/pretrain.py, a Tune
trial's pool) runs the seeds in turn, ``idc_ray.distributed.pool`` runs them as parallel Ray tasks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from idc_ray import storage
from idc_ray.config import IDCConfig
from idc_ray.data import ClassStore, RealData
from idc_ray.engine.expert import ExpertTrainer, new_model, pool_checkpoint
from idc_ray.engine.plan import build_plan


def pretrain_seed(cfg: IDCConfig, data: RealData, out: str | Path, seed: int, *, epochs: int,
                  device: str | torch.device = "cpu",
                  on_epoch: Callable[[int, int, float], None] | None = None) -> list[Path]:
    """Train pool network ``seed`` on the real data, saving ``seed{seed}/epoch{e}.pt`` for
    e = 0..epochs (epoch 0 is the initialisation), each with its sha256 sidecar. Its draws are keyed by (config seed, pool
    seed), so a seed gives the same network whichever process trains it."""
    spec = build_plan(cfg, data.spec).expert
    store = ClassStore(data.train_x, data.train_y)
    seeded = replace(spec, seed=spec.seed * 1000 + seed)
    trainer = ExpertTrainer(seeded, new_model(seeded, seeded.seed, -1), device)
    written = []
    for epoch in range(epochs + 1):
        if epoch:
            loss = trainer.train_epochs(store, 1, seed, epoch)
            if on_epoch:
                on_epoch(seed, epoch, loss)
        path = pool_checkpoint(out, seed, epoch)
        state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        with storage.atomic_local_path(path) as tmp:
            torch.save(state, tmp)
        storage.seal(path)  # its sha256, last: checked whenever the pool is used
        written.append(path)
    return written


def pretrain_pool(cfg: IDCConfig, data: RealData, out: str | Path, *, seeds: int, epochs: int,
                  device: str | torch.device = "cpu",
                  on_epoch: Callable[[int, int, float], None] | None = None) -> list[Path]:
    """Train ``seeds`` experts one after the other (:func:`pretrain_seed` for 0..seeds-1)."""
    return [path for s in range(seeds)
            for path in pretrain_seed(cfg, data, out, s, epochs=epochs, device=device, on_epoch=on_epoch)]
