"""The paper's evaluation protocol applied to a stored set: form it, train test models from
scratch with the dataset's recipe (settings sheet, "Evaluation protocol"), report test accuracy.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch

from idc_ray.config import IDCConfig, resolve
from idc_ray.data import RealData
from idc_ray.engine import rng
from idc_ray.engine.formation import get_former
from idc_ray.evaluation.train import TrainRecipe, train_and_evaluate
from idc_ray.models import build_model


@dataclass
class ModelScore:
    model: str
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.last)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.last) if len(self.last) > 1 else 0.0


def recipe_for(cfg: IDCConfig, epochs: int | None = None) -> TrainRecipe:
    """The test-model training recipe of a config (dataset rules resolved)."""
    r = resolve(cfg)
    return TrainRecipe(
        epochs=epochs or r.eval_epochs,
        lr=cfg.eval.lr,
        batch_size=cfg.eval.batch_size,
        augment="" if r.eval_augment == "none" else r.eval_augment,
        cutmix_prob=r.eval_cutmix_prob,
    )


def form_stored(cfg: IDCConfig, stored: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Formed training set of a stored set (classes, ipc, C, H, W) with the config's formation."""
    s = cfg.synset
    former = get_former(s.formation, s.factor, axis=s.formation_axis, bound=s.bound)
    with torch.no_grad():
        parts = [former(stored[i], labels.view(stored.shape[:2])[i]) for i in range(stored.shape[0])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def random_real(data: RealData, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random baseline: ``ipc`` real training images per class, drawn with (seed, class)."""
    from idc_ray.data import ClassStore

    store = ClassStore(data.train_x, data.train_y)
    xs = [store.sample(c, ipc, rng.generator(seed, "random-baseline", c)) for c in store.classes]
    return torch.stack(xs), torch.tensor(store.classes).repeat_interleave(ipc)


def evaluate_set(cfg: IDCConfig, data: RealData, train_x: torch.Tensor, train_y: torch.Tensor, *,
                 models: tuple[str, ...] | None = None, repeat: int | None = None,
                 epochs: int | None = None, device: str | torch.device = "cpu",
                 on_run: Callable[[str, int, float], None] | None = None) -> dict[str, ModelScore]:
    """Train each test model ``repeat`` times on (train_x, train_y) and test on the real test split.

    Repetition k of model m starts from weights keyed by (seed, m, k) and uses seed k for its
    batches and augmentation, so every set evaluated with the same config sees the same networks.
    """
    recipe = recipe_for(cfg, epochs)
    spec = data.spec
    test_x = data.test_x.float() / 255 if data.test_x.dtype == torch.uint8 else data.test_x
    scores: dict[str, ModelScore] = {}
    for name in models or cfg.eval.models:
        score = scores.setdefault(name, ModelScore(name))
        for k in range(repeat or cfg.eval.repeat):
            with rng.seeded_global_rng(cfg.schedule.seed, f"eval-weights-{name}", k):
                model = build_model(name, spec.num_classes, spec.channels, spec.size, width=cfg.eval.width)
            result = train_and_evaluate(model, train_x, train_y, test_x, data.test_y, recipe,
                                        mean=spec.mean, std=spec.std, seed=k, device=device)
            score.best.append(result.best_acc)
            score.last.append(result.last_acc)
            if on_run:
                on_run(name, k, result.last_acc)
    return scores
