"""The pretrained expert pool (settings sheet: ImageNet-100 loads networks pre-trained on real
data for ``pt_from`` epochs, drawn at random among seeds). Written once, read by every run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from idc_ray.artifacts import _atomic_write
from idc_ray.config import IDCConfig
from idc_ray.data import ClassStore, RealData
from idc_ray.engine.expert import ExpertTrainer, new_model, pool_checkpoint
from idc_ray.engine.loop import build_specs


def pretrain_pool(cfg: IDCConfig, data: RealData, out: str | Path, *, seeds: int, epochs: int,
                  device: str | torch.device = "cpu",
                  on_epoch: Callable[[int, int, float], None] | None = None) -> list[Path]:
    """Train ``seeds`` experts on the real data, saving ``seed{s}/epoch{e}.pt`` for e = 0..epochs
    (epoch 0 is the initialisation). Each network is keyed by (config seed, pool seed)."""
    _, spec, _ = build_specs(cfg, data.spec)
    store = ClassStore(data.train_x, data.train_y)
    written = []
    for s in range(seeds):
        seeded = replace(spec, seed=spec.seed * 1000 + s)
        trainer = ExpertTrainer(seeded, new_model(seeded, seeded.seed, -1), device)
        for epoch in range(epochs + 1):
            if epoch:
                loss = trainer.train_epochs(store, 1, s, epoch)
                if on_epoch:
                    on_epoch(s, epoch, loss)
            path = pool_checkpoint(out, s, epoch)
            state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
            _atomic_write(path, lambda tmp: torch.save(state, tmp))
            written.append(path)
    return written
