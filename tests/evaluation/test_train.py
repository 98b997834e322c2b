"""The evaluation protocol: train a fresh model, test it, deterministically."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from idc_ray.evaluation.train import TrainRecipe, lr_milestones, report_epochs, train_and_evaluate
from idc_ray.evaluation import train as train_module

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
    recipe = TrainRecipe(epochs=32, batch_size=8, eval_every=10)
    model = fresh_model()
    twin = copy.deepcopy(model)
    seen = []
    first = train_and_evaluate(model, train_x, train_y, test_x, test_y, recipe, mean=MEAN, std=STD, seed=3,
                               progress=lambda e, a: seen.append((e, a)))
    assert first.last_acc > 0.9 and first.best_acc >= first.last_acc
    # the published report epochs (every 32 // 4) plus the curve's every 10
    assert [e for e, _ in first.history] == [8, 10, 16, 20, 24, 30, 32] and seen == first.history
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



def test_report_epochs_are_the_published_quarters():
    # train.py tests when epoch % (epochs // 4) == 0 (test.py num_val=4)
    assert report_epochs(1000) == [250, 500, 750, 1000] and report_epochs(400) == [100, 200, 300, 400]
    assert report_epochs(250) == [62, 124, 186, 248]  # --fixed-compute at f=2: the last 2 epochs untested
    assert report_epochs(3) == [1, 2, 3]


def test_best_and_last_come_from_the_report_epochs_only(monkeypatch):
    # scripted test accuracies per epoch; epoch 3 is a curve-only evaluation (eval_every=1) and
    # must not count, though it is the highest
    script = {1: 0.1, 2: 0.5, 3: 0.99, 4: 0.7, 5: 0.2, 6: 0.6, 7: 0.2, 8: 0.65, 9: 0.2, 10: 0.55}
    calls = iter(sorted(script))
    monkeypatch.setattr(train_module, "evaluate", lambda *args: script[next(calls)])
    x, y = dark_vs_bright(8, seed=0)
    recipe = TrainRecipe(epochs=10, batch_size=8, eval_every=1, augment="", cutmix_prob=0.0)
    result = train_and_evaluate(fresh_model(), x, y, x, y, recipe, mean=MEAN, std=STD, seed=0)
    assert report_epochs(10) == [2, 4, 6, 8, 10]
    assert result.best_acc == 0.7 and result.last_acc == 0.55
    assert [e for e, _ in result.history] == list(range(1, 11))


def test_loader_augmentation_sees_raw_images_before_normalisation(monkeypatch):
    seen = []

    def fake_build(name):
        assert name == "imagenet"
        return lambda x, g: seen.append(x.clone()) or x

    monkeypatch.setattr(train_module, "build_loader_aug", fake_build)
    x, y = dark_vs_bright(8, seed=0)
    recipe = TrainRecipe(epochs=1, batch_size=8, augment="", loader_aug="imagenet", cutmix_prob=0.0)
    train_and_evaluate(fresh_model(), x, y, x, y, recipe, mean=MEAN, std=STD, seed=0)
    assert len(seen) == 1 and torch.allclose(seen[0].sum(0), x.sum(0))  # the [0, 1] batch, any order


def test_imagenet_recipe_trains_with_the_real_loader_augmentation():
    x, y = dark_vs_bright(8, seed=0)
    recipe = TrainRecipe(epochs=2, batch_size=4, augment="", loader_aug="imagenet", cutmix_prob=1.0)
    first = train_and_evaluate(fresh_model(), x, y, x, y, recipe, mean=MEAN, std=STD, seed=0)
    again = train_and_evaluate(fresh_model(), x, y, x, y, recipe, mean=MEAN, std=STD, seed=0)
    assert first.history == again.history and len(first.history) == 2


def test_best_on_validation_picks_the_epoch_by_held_out_accuracy(monkeypatch):
    # test accuracies by epoch on the 8 test images; validation accuracies on the 6 held-out ones
    test_script = iter([0.5, 0.9, 0.6, 0.4])  # report epochs 1..4 of 4
    val_script = iter([0.2, 0.3, 0.8, 0.8])  # highest first at epoch 3
    monkeypatch.setattr(train_module, "evaluate",
                        lambda model, x, *rest: next(test_script if len(x) == 8 else val_script))
    x, y = dark_vs_bright(8, seed=0)
    vx, vy = dark_vs_bright(6, seed=1)
    recipe = TrainRecipe(epochs=4, batch_size=8, augment="", cutmix_prob=0.0)
    result = train_and_evaluate(fresh_model(), x, y, x, y, recipe, mean=MEAN, std=STD, seed=0, val=(vx, vy))
    assert (result.best_acc, result.last_acc) == (0.6, 0.4)  # not the test set's best, 0.9
    assert train_module.select_best(result.history, [1, 2, 3, 4]) == (0.9, 0.4)
