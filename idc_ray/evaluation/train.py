"""IDC's evaluation protocol: train a freshly initialised test model from scratch on a (formed)
training set and report top-1 accuracy on a test set.

Settings sheet, "Evaluation protocol": SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 64,
MultiStepLR x0.2 at 2/3 and 5/6 of the epochs, 1000 epochs for the small datasets; per-sample DSA
(color_crop_cutout_flip_scale_rotate, cutout dropped when CutMix is on) plus CutMix (beta 1,
probability 0.5). Normalisation happens here; callers pass [0, 1] images, as the store holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from idc_ray.engine import rng
from idc_ray.engine.augment import DiffAugment, cutmix, mixed_cross_entropy

EVAL_BATCH = 500


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: str = "color_crop_flip_scale_rotate"  # per-sample DSA strategy ('' for none)
    cutmix_prob: float = 0.5  # 0 disables CutMix
    cutmix_beta: float = 1.0
    eval_every: int = 0  # 0: evaluate only at the end; otherwise also every eval_every epochs


@dataclass
class TrainResult:
    best_acc: float  # best test accuracy over the evaluations in ``history``
    last_acc: float  # test accuracy after the final epoch
    history: list[tuple[int, float]] = field(default_factory=list)  # (epochs done, test accuracy)


def lr_milestones(epochs: int) -> list[int]:
    """The published schedule's decay epochs: 2/3 and 5/6 of training (666 and 833 of 1000)."""
    return [2 * epochs // 3, 5 * epochs // 6]


def _normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x.to(device, torch.float32) - m) / s


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Callable, device: torch.device) -> float:
    """Top-1 accuracy in [0, 1], in eval mode, 500 images at a time."""
    model.eval()
    correct = 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(normalize(x[start : start + EVAL_BATCH]))
        correct += int((logits.argmax(1) == y[start : start + EVAL_BATCH].to(device)).sum())
    return correct / max(len(x), 1)


def train_and_evaluate(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    recipe: TrainRecipe,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` (in place, moved to ``device``) on (train_x, train_y) and test it.

    Images are un-normalised floats in [0, 1], shape (N, C, H, W). The batch order and the
    augmentation draw from two CPU generators derived from ``seed``, so on the CPU the same
    inputs, seed and initial weights give identical results. ``progress(epoch, acc)`` is called
    after every evaluation (every ``eval_every`` epochs and after the last one).
    """
    device = torch.device(device)
    model.to(device)
    normalize = _normalizer(mean, std, device)
    x_train = normalize(train_x)
    y_train = train_y.to(device, torch.long)
    n = len(x_train)

    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(recipe.epochs), gamma=0.2)
    augment = DiffAugment(recipe.augment, mode="sample")
    shuffle_gen = rng.generator(seed, "eval-shuffle")
    aug_gen = rng.generator(seed, "eval-augment")

    history: list[tuple[int, float]] = []
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=shuffle_gen).to(device)
        for start in range(0, n, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            xb, yb = augment(x_train[idx], aug_gen), y_train[idx]
            xb, ya, yb2, lam = cutmix(xb, yb, aug_gen, beta=recipe.cutmix_beta, prob=recipe.cutmix_prob)
            loss = mixed_cross_entropy(model(xb), ya, yb2, lam)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        if epoch == recipe.epochs or (recipe.eval_every > 0 and epoch % recipe.eval_every == 0):
            acc = evaluate(model, test_x, test_y, normalize, device)
            history.append((epoch, acc))
            if progress is not None:
                progress(epoch, acc)
    last = history[-1][1] if history else 0.0
    return TrainResult(best_acc=max((a for _, a in history), default=0.0), last_acc=last, history=history)
