"""Each preset's evaluation recipe as the published test.py/argument.py/misc/reproduce.py run it
(settings sheet, "Evaluation protocol" and "Corrections")."""

from __future__ import annotations

import pytest
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import get_spec
from idc_ray.engine.formation import get_former
from idc_ray.engine.plan import default_eval_epochs, resolve
from idc_ray.evaluation.protocol import form_stored, plan_tasks

CIFAR_MODELS = ("convnet3", "resnet10", "densenet121")
IMAGENET_MODELS = ("resnetap10", "resnet18", "efficientnet-b0")
SMALL = dict(loader="none", lr=0.01, wd=5e-4, batch=64)

# preset, overrides -> DSA strategy, loader-side aug, CutMix p, epochs per model, lr, wd, batch, models
TABLE = [
    ("cifar10", [], dict(dsa="color_crop_flip_scale_rotate", cutmix=0.5, epochs=(1000, 1000, 1000),
                         models=CIFAR_MODELS, **SMALL)),
    ("cifar10", ["synset.ipc=50"], dict(dsa="color_crop_flip_scale_rotate", cutmix=0.5, epochs=(1000, 1000, 400),
                                        models=CIFAR_MODELS, **SMALL)),  # test.py: DenseNet 400 at ipc >= 50, f > 1
    ("cifar10", ["synset.ipc=50", "synset.factor=1"], dict(dsa="color_crop_flip_scale_rotate", cutmix=0.5,
                                                          epochs=(1000, 1000, 1000), models=CIFAR_MODELS, **SMALL)),
    ("cifar100", ["synset.ipc=50"], dict(dsa="color_crop_flip_scale_rotate", cutmix=0.5, epochs=(1000, 1000, 400),
                                         models=CIFAR_MODELS, **SMALL)),
    ("svhn", [], dict(dsa="color_crop_scale_rotate", cutmix=0.5, epochs=(1000,), models=("convnet3",), **SMALL)),
    ("svhn", ["synset.ipc=1", "synset.factor=1"], dict(dsa="color_crop_cutout_scale_rotate", cutmix=0.0,
                                                      epochs=(1000,), models=("convnet3",), **SMALL)),
    ("mnist", [], dict(dsa="color_crop_scale_rotate", cutmix=0.0, epochs=(1000,), models=("convnet3",), **SMALL)),
    ("mnist", ["synset.factor=1"], dict(dsa="color_crop_scale_rotate", cutmix=0.5, epochs=(1000,),
                                        models=("convnet3",), **SMALL)),
    ("fashion", [], dict(dsa="color_crop_flip_scale_rotate", cutmix=0.5, epochs=(1000,), models=("convnet3",),
                         **SMALL)),
    ("imagenet10", [], dict(dsa="", loader="imagenet", cutmix=1.0, epochs=(1000,) * 3, lr=0.01, wd=5e-4, batch=64,
                            models=IMAGENET_MODELS)),
    ("imagenet100", [], dict(dsa="", loader="imagenet", cutmix=1.0, epochs=(600,) * 3, lr=0.1, wd=1e-4, batch=128,
                             models=IMAGENET_MODELS)),
    ("speech", [], dict(dsa="", cutmix=0.0, epochs=(1000,), models=("convnet4",), **SMALL)),
]


@pytest.mark.parametrize("preset, overrides, want", TABLE, ids=[f"{p}{''.join(o)}" for p, o, _ in TABLE])
def test_preset_evaluation_recipe(preset, overrides, want):
    cfg = apply_overrides(load_preset(preset), overrides) if overrides else load_preset(preset)
    tasks = plan_tasks(cfg, get_spec(cfg.data.dataset), "set", repeat=1)
    assert tuple(t.model for t in tasks) == want["models"]
    assert tuple(t.recipe.epochs for t in tasks) == want["epochs"]
    for t in tasks:
        r = t.recipe
        assert (r.augment, r.loader_aug, r.cutmix_prob) == (want["dsa"], want["loader"], want["cutmix"])
        assert (r.lr, r.weight_decay, r.batch_size, r.momentum, r.aug_single) == (
            want["lr"], want["wd"], want["batch"], 0.9, True)


def test_explicit_epochs_override_the_densenet_rule():
    cfg = apply_overrides(load_preset("cifar10"), ["synset.ipc=50", "eval.epochs=30"])
    assert {t.recipe.epochs for t in plan_tasks(cfg, get_spec("cifar10"), "set", repeat=1)} == {30}


@pytest.mark.parametrize("formed, classes, epochs", [
    (1, 10, 3000), (10, 10, 2000), (50, 10, 1500), (200, 10, 1000), (500, 10, 500), (501, 10, 300),
    (1, 100, 2000), (10, 100, 1300), (50, 100, 1000), (200, 100, 600), (500, 100, 300), (501, 100, 200)])
def test_imagenet_epoch_rule_is_argument_py_ipc_epoch(formed, classes, epochs):
    assert default_eval_epochs("imagenet", formed, classes) == epochs


def test_bounded_sets_are_formed_uniformly_for_evaluation_unless_asked_otherwise():
    cfg = apply_overrides(load_preset("smoke"), ["synset.formation=bounded", "synset.ipc=3", "synset.bound=9"])
    stored = torch.rand(4, 3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4).repeat_interleave(3)
    x, y = form_stored(cfg, get_spec("tiny"), stored, labels)
    assert resolve(cfg, get_spec("tiny")).eval_formation == "uniform" and x.shape[0] == 4 * 3 * 4  # test.py: f^2 per stored sample
    assert torch.equal(x[:12], get_former("uniform", 2)(stored[0], labels[:3])[0])
    condensed = apply_overrides(cfg, ["eval.formation=condensed"])
    xb, _ = form_stored(condensed, get_spec("tiny"), stored, labels)
    bounded = get_former("bounded", 2, bound=9)(stored[0], labels[:3])[0]
    assert xb.shape[0] == 4 * len(bounded) == 4 * 6  # one sample at factor 2, two at 1 (published room rule)
