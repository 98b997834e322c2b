"""Which classes arrive when, and each stage's real data as a dataset of its own.

Class-incremental (section 5.3): the classes of one dataset in ``stages`` contiguous, balanced
blocks (100 classes in 5 stages: 0-19, 20-39, ...), in label order as Zhao & Bilen's setting.
Task-incremental (appendix C.3): one stage per dataset; the datasets differ in side and channels
(SVHN 3x32x32, MNIST 1x28x28, USPS 1x16x16), so every image is resized to ``size`` (bilinear,
antialiased) and grey images repeat their channel to 3; task t's class c becomes global class
``offset_t + c`` and the learner keeps one head per task (logits of other tasks masked out).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from idc_ray.data import DatasetSpec, RealData, channel_stats, load_dataset
from idc_ray.data.parquet import write_dataset
from idc_ray.data.store import class_blocks
from idc_ray.data.prepare import dataset_info


@dataclass
class Scenario:
    """The whole stream: all classes' real data, the stages' class lists and each class's task
    (``groups``: None in the class-incremental setting, where every class shares one head)."""

    data: RealData
    stages: list[list[int]]
    groups: torch.Tensor | None
    stage_specs: list[DatasetSpec]  # the spec each stage's dataset is condensed as (its rules)


def class_incremental(dataset: str, data_uri: str | None, stages: int) -> Scenario:
    data = load_dataset(dataset, data_uri)
    blocks = class_blocks(data.spec.num_classes, stages, "--stages")
    return Scenario(data, blocks, None, [data.spec] * len(blocks))


def stage_data(data: RealData, classes: list[int], spec: DatasetSpec | None = None) -> RealData:
    """The real images of ``classes`` only, labels renumbered 0..k-1 in the order given."""
    lookup = torch.full((data.spec.num_classes,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    parts = []
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        keep = lookup[y] >= 0
        parts += [x[keep], lookup[y[keep]]]
    base = spec or data.spec
    names = tuple(data.spec.class_names[c] for c in classes)
    return RealData(replace(base, num_classes=len(classes), class_names=names), *parts)


def write_stage_dataset(data: RealData, out: str) -> str:
    """``data`` as a Parquet dataset (the format jobs/prepare_data.py writes) at ``out``, under
    its dataset's name so the condensation applies that dataset's rules (augmentation, lr base)."""
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    return write_dataset(out, splits, dataset_info(data.spec, {"continual_stage": True}), encoding="raw",
                         overwrite=True)


def to_shape(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) resized to ``size`` and brought to ``channels`` (grey repeated)."""
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"cannot bring {x.shape[1]}-channel images to {channels} channels")
        x = x.expand(-1, channels, -1, -1)
    return x.contiguous()


def task_incremental(tasks: tuple[str, ...], data_uri: str | None, size: int = 32, channels: int = 3) -> Scenario:
    """The datasets of ``tasks`` in order as one stream of ``sum of their classes`` global
    classes (appendix C.3: SVHN -> MNIST -> USPS), every image 3 x size x size. Normalisation: the
    combined training split's own mean/std (one network sees all tasks)."""
    xs = {"train": [], "test": []}
    ys = {"train": [], "test": []}
    stages, groups, specs, names, offset = [], [], [], [], 0
    for t, name in enumerate(tasks):
        d = load_dataset(name, data_uri)
        k = d.spec.num_classes
        for split, x, y in (("train", d.train_x, d.train_y), ("test", d.test_x, d.test_y)):
            xs[split].append(to_shape(x, channels, size))
            ys[split].append(y + offset)
        stages.append(list(range(offset, offset + k)))
        groups += [t] * k
        names += [f"{name}:{c}" for c in d.spec.class_names]
        mean, std = channel_stats(xs["train"][-1])
        specs.append(replace(d.spec, channels=channels, size=size, mean=mean, std=std))
        offset += k
    train_x = torch.cat(xs["train"])
    mean, std = channel_stats(train_x)
    spec = DatasetSpec(name="+".join(tasks), num_classes=offset, channels=channels, size=size, mean=mean, std=std,
                       class_names=tuple(names), lr_base_size=size, flip=False, loader=specs[0].loader)
    data = RealData(spec, train_x, torch.cat(ys["train"]), torch.cat(xs["test"]), torch.cat(ys["test"]))
    return Scenario(data, stages, torch.tensor(groups), specs)
