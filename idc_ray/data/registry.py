"""Dataset specs (the per-dataset constants IDC needs) and the one entry point to load data.

A spec is static metadata: shape, normalisation constants, class names, the base size for the
``lr_img`` scaling ``(ipc / 10) * (size / lr_base_size) ** 2`` and whether flips are a valid
augmentation. It pickles (its loader is a module-level function or partial), so it can travel
to remote workers; the pixels travel separately as :class:`RealData` / :class:`ClassStore`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import sources
from .store import ClassStore

Loader = Callable[..., "sources.Arrays"]


class UnknownDatasetError(ValueError):
    """A dataset name that is not registered (message lists the valid names)."""


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """Static description of a dataset; ``mean``/``std`` are per channel, for [0, 1] data."""

    name: str
    num_classes: int
    channels: int
    size: int  # square images, side `size`
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    lr_base_size: int  # 32 cifar/svhn, 28 mnist/fashion, 64 speech, 224 imagenet
    loader: Loader = field(repr=False, compare=False)
    flip: bool = True  # False where a mirrored image is a different class (digits, blob corners)

    def __post_init__(self):
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"spec '{self.name}': mean/std need {self.channels} entries")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"spec '{self.name}': {len(self.class_names)} class names for {self.num_classes} classes"
            )


@dataclass
class RealData:
    """A loaded dataset as the engine consumes it: compact uint8 images plus int64 labels."""

    spec: DatasetSpec
    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    test_x: Tensor
    test_y: Tensor

    def train_store(self, classes: Sequence[int] | None = None) -> ClassStore:
        """Float [0, 1] per-class store of the training images (``classes=None``: all)."""
        return ClassStore(self.train_x, self.train_y, classes)


# ---------------------------------------------------------------------------------------------
_DIGITS = tuple(str(i) for i in range(10))
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# CIFAR-100 fine labels in label-index order (alphabetical, as in the dataset's `meta` file).
_CIFAR100_NAMES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split()
)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SPEECH_NAMES = ("down", "go", "left", "no", "right", "stop", "up", "yes")


def _specs() -> dict[str, DatasetSpec]:
    s = [
        # mnist5k: mean/std measured once on its 4,000 training images (population std);
        # tests/data recomputes them.
        DatasetSpec(name="mnist5k", num_classes=10, channels=1, size=28, mean=(0.1311,), std=(0.3083,),
                    class_names=_DIGITS, lr_base_size=28, flip=False, loader=sources.load_mnist5k),
        DatasetSpec(name="mnist", num_classes=10, channels=1, size=28, mean=(0.1307,), std=(0.3081,),
                    class_names=_DIGITS, lr_base_size=28, flip=False, loader=sources.load_mnist),
        DatasetSpec(name="fashion", num_classes=10, channels=1, size=28, mean=(0.2860,), std=(0.3530,),
                    class_names=_FASHION_NAMES, lr_base_size=28, loader=sources.load_fashion),
        DatasetSpec(name="cifar10", num_classes=10, channels=3, size=32, mean=(0.4914, 0.4822, 0.4465),
                    std=(0.2470, 0.2435, 0.2616), class_names=_CIFAR10_NAMES, lr_base_size=32,
                    loader=sources.load_cifar10),
        DatasetSpec(name="cifar100", num_classes=100, channels=3, size=32, mean=(0.5071, 0.4866, 0.4409),
                    std=(0.2673, 0.2564, 0.2762), class_names=_CIFAR100_NAMES, lr_base_size=32,
                    loader=sources.load_cifar100),
        DatasetSpec(name="svhn", num_classes=10, channels=3, size=32, mean=(0.4377, 0.4438, 0.4728),
                    std=(0.1980, 0.2010, 0.1970), class_names=_DIGITS, lr_base_size=32, flip=False,
                    loader=sources.load_svhn),
        # Registered for their constants only; loaders arrive with the data-layer work (issue 4).
        # ImageNet class names are placeholders until that work fixes the subset's class list.
        DatasetSpec(name="imagenet10", num_classes=10, channels=3, size=224, mean=_IMAGENET_MEAN,
                    std=_IMAGENET_STD, class_names=tuple(f"imagenet10_class_{i}" for i in range(10)),
                    lr_base_size=224, loader=partial(sources.load_unavailable, name="imagenet10")),
        DatasetSpec(name="imagenet100", num_classes=100, channels=3, size=224, mean=_IMAGENET_MEAN,
                    std=_IMAGENET_STD, class_names=tuple(f"imagenet100_class_{i}" for i in range(100)),
                    lr_base_size=224, loader=partial(sources.load_unavailable, name="imagenet100")),
        # Mini Speech Commands, 64x64 log spectrograms. mean/std (0, 1) are PLACEHOLDERS, to be
        # measured on the training spectrograms when the loader lands.
        DatasetSpec(name="speech", num_classes=8, channels=1, size=64, mean=(0.0,), std=(1.0,),
                    class_names=_SPEECH_NAMES, lr_base_size=64, flip=False,
                    loader=partial(sources.load_unavailable, name="speech")),
        # SYNTHETIC blobs for tests and smoke runs only (see sources.load_tiny); mean/std measured
        # on its training split. No flips: a flip would move a blob to another class's corner.
        DatasetSpec(name="tiny", num_classes=4, channels=1, size=28, mean=(0.0993,), std=(0.1647,),
                    class_names=tuple(f"synthetic_blob_{i}" for i in range(4)), lr_base_size=28,
                    flip=False, loader=sources.load_tiny),
    ]
    return {spec.name: spec for spec in s}


DATASETS: dict[str, DatasetSpec] = _specs()


def get_spec(name: str) -> DatasetSpec:
    """The registered spec for ``name``; raises UnknownDatasetError listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}"
        ) from None


def load_dataset(name: str, root: str | os.PathLike | None = None) -> RealData:
    """Load ``name`` from ``root`` (local path; ignored by mnist5k and tiny) and check its shape.

    Raises UnknownDatasetError for an unregistered name and DatasetNotFoundError when the files
    are missing. The returned arrays are validated against the spec so a mis-read file fails
    here rather than deep inside a run.
    """
    spec = get_spec(name)
    train_x, train_y, test_x, test_y = spec.loader(root)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        expected = (spec.channels, spec.size, spec.size)
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"dataset '{name}' {split} images: expected uint8 (N, {expected}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise ValueError(f"dataset '{name}' {split} labels: expected int64 ({len(x)},), got {y.dtype} {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise ValueError(f"dataset '{name}' {split} labels outside [0, {spec.num_classes})")
    return RealData(spec, train_x, train_y, test_x, test_y)
