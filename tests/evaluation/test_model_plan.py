"""Which test network each evaluation task builds (issue 11 item 3): ``eval.width`` reaches the
ConvNet family only, and the dataset name reaches the model registry so that CIFAR gets the
published CIFAR ResNet (widths 32-256, 1,228,970 parameters at 10 classes)."""

from __future__ import annotations

from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import get_spec
from idc_ray.evaluation.protocol import plan_tasks
from idc_ray.models import build_model


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_eval_width_reaches_convnets_only_and_cifar_gets_its_resnet():
    cfg = apply_overrides(load_preset("cifar10"), ["eval.width=16"])
    assert cfg.eval.models == ("convnet3", "resnet10", "densenet121")
    tasks = {t.model: t for t in plan_tasks(cfg, get_spec("cifar10"), "set", repeat=1)}
    assert {name: t.width for name, t in tasks.items()} == {"convnet3": 16, "resnet10": None, "densenet121": None}
    assert all(t.dataset == "cifar10" for t in tasks.values())
    built = {name: build_model(t.model, t.num_classes, t.channels, t.size, width=t.width, dataset=t.dataset)
             for name, t in tasks.items()}
    assert built["convnet3"].classifier.in_features == 16 * 4 * 4
    assert _count(built["resnet10"]) == 1_228_970
    assert _count(built["densenet121"]) == 1_000_618


def test_the_expert_network_gets_the_dataset_branch_too():
    """condense.py builds its network through the same define_model: resnet10 on CIFAR is the
    CIFAR branch there as well, on SVHN the 64-512 one."""
    from idc_ray.engine.expert import new_model
    from idc_ray.engine.plan import build_plan

    for dataset, params in (("cifar10", 1_228_970), ("svhn", 4_903_242)):
        cfg = apply_overrides(load_preset(dataset), ["expert.model=resnet10"])
        expert = build_plan(cfg, get_spec(dataset)).expert
        assert expert.dataset == dataset
        assert _count(new_model(expert, 0, 0)) == params
