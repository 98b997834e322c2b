"""The evaluation protocol: train a fresh model, test it, deterministically."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from idc_ray.evaluation import TrainRecipe, lr_milestones, train_and_evaluate

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class TinyNet(nn.Module):
    def __init__(self, channels: int = 3, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def dark_vs_bright(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 around 0.25, class 1 around 0.75, 3 x 8 x 8 images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.25 + 0.5 * y.view(-1, 1, 1, 1) + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def fresh_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet()


def test_learns_a_separable_problem_deterministically():
    train_x, train_y = dark_vs_bright(40, seed=0)
    test_x, test_y = dark_vs_bright(100, seed=1)
    recipe = TrainRecipe(epochs=30, batch_size=8, eval_every=10)
    model = fresh_model()
    twin = copy.deepcopy(model)
    seen = []
    first = train_and_evaluate(model, train_x, train_y, test_x, test_y, recipe, mean=MEAN, std=STD, seed=3,
                               progress=lambda e, a: seen.append((e, a)))
    assert first.last_acc > 0.9 and first.best_acc >= first.last_acc
    assert [e for e, _ in first.history] == [10, 20, 30] and seen == first.history
    second = train_and_evaluate(twin, train_x, train_y, test_x, test_y, recipe, mean=MEAN, std=STD, seed=3)
    assert (second.best_acc, second.last_acc, second.history) == (first.best_acc, first.last_acc, first.history)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_seed_changes_the_run():
    train_x, train_y = dark_vs_bright(40, seed=0)
    recipe = TrainRecipe(epochs=2, batch_size=8)
    runs = []
    for seed in (0, 1):
        model = fresh_model()
        train_and_evaluate(model, train_x, train_y, train_x, train_y, recipe, mean=MEAN, std=STD, seed=seed)
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert not torch.equal(*runs)


def test_lr_decays_by_0_2_at_two_thirds_and_five_sixths():
    assert lr_milestones(1000) == [666, 833]
    lrs = []

    def record(optimizer, args, kwargs):
        lrs.append(optimizer.param_groups[0]["lr"])

    handle = register_optimizer_step_post_hook(record)
    try:
        x, y = dark_vs_bright(8, seed=0)
        recipe = TrainRecipe(epochs=6, batch_size=8, lr=1.0, augment="", cutmix_prob=0.0)
        train_and_evaluate(fresh_model(), x, y, x, y, recipe, mean=MEAN, std=STD, seed=0)
    finally:
        handle.remove()
    # one step per epoch; milestones 4 and 5 of 6
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.2, pytest.approx(0.04)]

