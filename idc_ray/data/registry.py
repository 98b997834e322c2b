"""Dataset specs (the per-dataset constants IDC needs) and the one entry point to load data.

A spec is static metadata: shape, normalisation constants, class names, the base size for the
``lr_img`` scaling ``(ipc / 10) * (size / lr_base_size) ** 2`` and whether flips are a valid
augmentation. It pickles (its loader is a module-level function or partial), so it can travel
to remote workers; the pixels travel separately as :class:`RealData` / :class:`ClassStore`.

Where the pixels come from: a registered dataset reads its original on-disk format from a local
root, or, when the root (local or any fsspec URL) holds a ``dataset.json``, the Parquet form
written by ``jobs/prepare_data.py``. The name ``parquet`` takes any such dataset, its spec read
from the dataset.json (:func:`get_spec` needs the URI then).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from . import imagenet, parquet, sources, speech
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
    lr_base_size: int  # 28 mnist only; 32 cifar/svhn/fashion; 64 speech; 224 imagenet (argument.py)
    loader: Loader = field(repr=False, compare=False)
    flip: bool = True  # False where a mirrored image is a different class (digits, blob corners)
    # Whose published rules apply (augmentation, CutMix, formation, evaluation epochs; see
    # engine/plan.py resolve): "mnist" (mnist, mnist5k), "imagenet" (imagenet10/100), "cifar"
    # (cifar10/100), else the dataset's own name. Empty: the name.
    family: str = ""
    # True: mean/std above are placeholders; load_dataset measures them on the training split
    # (the published code does so for speech) and returns them in RealData.spec.
    measure_stats: bool = False
    # (mean, std) of the training split where the published constants above differ from it;
    # used with data.stats: corrected (see with_stats).
    corrected_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self):
        if not self.family:
            object.__setattr__(self, "family", self.name)
        stats = [(self.mean, self.std), *([self.corrected_stats] if self.corrected_stats else [])]
        if any(len(m) != self.channels or len(s) != self.channels for m, s in stats):
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
# The published data.py normalises CIFAR-10 AND CIFAR-100 with these constants; their std is not
# CIFAR-10's pixel std (0.2470, 0.2435, 0.2616), a known slip kept as the default (settings sheet,
# "Corrections"). The training splits' own statistics are the corrected variant.
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))
_SPEECH_NAMES = ("down", "go", "left", "no", "right", "stop", "up", "yes")


def _specs() -> dict[str, DatasetSpec]:
    s = [
        # mnist5k: mean/std measured once on its 4,000 training images (population std);
        # tests/data recomputes them.
        DatasetSpec(name="mnist5k", family="mnist", num_classes=10, channels=1, size=28, mean=(0.1311,), std=(0.3083,),
                    class_names=_DIGITS, lr_base_size=28, flip=False, loader=sources.load_mnist5k),
        DatasetSpec(name="mnist", family="mnist", num_classes=10, channels=1, size=28, mean=(0.1307,), std=(0.3081,),
                    class_names=_DIGITS, lr_base_size=28, flip=False, loader=sources.load_mnist),
        # FashionMNIST: lr_img scaled with base 32 (only `mnist` uses 28 in the published
        # argument.py); published mean 0.2861 (data.py), the split's own 0.2860.
        DatasetSpec(name="fashion", num_classes=10, channels=1, size=28, mean=(0.2861,), std=(0.3530,),
                    class_names=_FASHION_NAMES, lr_base_size=32, loader=sources.load_fashion,
                    corrected_stats=((0.2860,), (0.3530,))),
        DatasetSpec(name="cifar10", family="cifar", num_classes=10, channels=3, size=32, mean=_CIFAR_MEAN, std=_CIFAR_STD,
                    class_names=_CIFAR10_NAMES, lr_base_size=32, loader=sources.load_cifar10,
                    corrected_stats=_CIFAR10_STATS),
        DatasetSpec(name="cifar100", family="cifar", num_classes=100, channels=3, size=32, mean=_CIFAR_MEAN, std=_CIFAR_STD,
                    class_names=_CIFAR100_NAMES, lr_base_size=32, loader=sources.load_cifar100,
                    corrected_stats=_CIFAR100_STATS),
        DatasetSpec(name="svhn", num_classes=10, channels=3, size=32, mean=(0.4377, 0.4438, 0.4728),
                    std=(0.1980, 0.2010, 0.1970), class_names=_DIGITS, lr_base_size=32, flip=False,
                    loader=sources.load_svhn),
        # USPS (torchvision's libsvm files), for the task-incremental digits of appendix C.3;
        # mean/std measured on the training split at load.
        DatasetSpec(name="usps", num_classes=10, channels=1, size=16, mean=(0.0,), std=(1.0,),
                    class_names=_DIGITS, lr_base_size=16, flip=False, measure_stats=True,
                    loader=sources.load_usps),
        # ImageNet subsets: Tian et al.'s 100-class list (CMC) and its first 10 classes; the class
        # names are the wnids, in label order (see idc_ray.data.imagenet).
        DatasetSpec(name="imagenet10", family="imagenet", num_classes=10, channels=3, size=224, mean=_IMAGENET_MEAN,
                    std=_IMAGENET_STD, class_names=imagenet.IMAGENET10_CLASSES, lr_base_size=224,
                    loader=partial(imagenet.load_imagenet_folder, classes=imagenet.IMAGENET10_CLASSES,
                                   size=224, name="imagenet10")),
        DatasetSpec(name="imagenet100", family="imagenet", num_classes=100, channels=3, size=224, mean=_IMAGENET_MEAN,
                    std=_IMAGENET_STD, class_names=imagenet.IMAGENET100_CLASSES, lr_base_size=224,
                    loader=partial(imagenet.load_imagenet_folder, classes=imagenet.IMAGENET100_CLASSES,
                                   size=224, name="imagenet100")),
        # Mini Speech Commands, 64x64 log spectrograms mapped onto [0, 1] (idc_ray.data.speech).
        # mean/std are measured on the training split at load; (0, 1) is only a placeholder.
        DatasetSpec(name="speech", num_classes=8, channels=1, size=64, mean=(0.0,), std=(1.0,),
                    class_names=_SPEECH_NAMES, lr_base_size=64, flip=False, measure_stats=True,
                    loader=partial(speech.load_speech, labels=_SPEECH_NAMES)),
        # SYNTHETIC blobs for tests and smoke runs only (see sources.load_tiny); mean/std measured
        # on its training split. No flips: a flip would move a blob to another class's corner.
        DatasetSpec(name="tiny", num_classes=4, channels=1, size=28, mean=(0.0993,), std=(0.1647,),
                    class_names=tuple(f"synthetic_blob_{i}" for i in range(4)), lr_base_size=28,
                    flip=False, loader=sources.load_tiny),
    ]
    return {spec.name: spec for spec in s}


DATASETS: dict[str, DatasetSpec] = _specs()


PARQUET = "parquet"  # any Parquet dataset; its spec comes from <data-uri>/dataset.json


def get_spec(name: str, data_uri: str | os.PathLike | None = None) -> DatasetSpec:
    """The spec for ``name``; for ``parquet`` it is read from ``data_uri``/dataset.json.

    Raises UnknownDatasetError listing the valid names. ``data_uri`` is ignored for registered
    names (whose ``measure_stats`` values arrive with :func:`load_dataset`).
    """
    if name == PARQUET:
        return spec_from_info(_parquet_info(data_uri))
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; valid names: {', '.join([*DATASETS, PARQUET])}"
        ) from None


def with_stats(spec: DatasetSpec, stats: str = "published") -> DatasetSpec:
    """``spec`` normalised as ``data.stats`` asks: ``published`` (the constants of the published
    data.py, the default) or ``corrected`` (the training split's own mean/std where the published
    constants differ: CIFAR-10, CIFAR-100, FashionMNIST). Other specs are returned unchanged."""
    if stats not in ("published", "corrected"):
        raise ValueError(f"unknown data.stats '{stats}'; choose published or corrected")
    if stats == "published" or spec.corrected_stats is None:
        return spec
    mean, std = spec.corrected_stats
    return replace(spec, mean=mean, std=std)


def _parquet_info(root) -> dict:
    if root is None:
        raise sources.DatasetNotFoundError(
            "dataset 'parquet' takes its classes and shape from <data-uri>/dataset.json; pass --data-uri "
            "pointing at a folder written by jobs/prepare_data.py")
    return parquet.read_info(root)


def spec_from_info(info: Mapping) -> DatasetSpec:
    """A spec from a validated dataset.json (see :mod:`idc_ray.data.parquet`)."""
    channels, size, _ = info["shape"]
    names = tuple(str(n) for n in info["class_names"])
    name = str(info.get("name", PARQUET))
    registered = _specs().get(name)
    family = str(info.get("family") or (registered.family if registered else name))
    return DatasetSpec(name=name, family=family, num_classes=len(names), channels=channels, size=size,
                       mean=tuple(float(v) for v in info["mean"]), std=tuple(float(v) for v in info["std"]),
                       class_names=names, lr_base_size=int(info.get("lr_base_size", size)),
                       flip=bool(info.get("flip", True)), loader=parquet.read_arrays)


def _registered_from_parquet(spec: DatasetSpec, info: Mapping, root) -> DatasetSpec:
    """A registered spec checked against a Parquet copy of its data (prepared by jobs/prepare_data.py)."""
    c, h, w = info["shape"]
    if (len(info["class_names"]), c, h) != (spec.num_classes, spec.channels, spec.size):
        raise sources.DatasetFormatError(
            f"{root} holds {len(info['class_names'])} classes of {c}x{h}x{w} images but '{spec.name}' has "
            f"{spec.num_classes} of {spec.channels}x{spec.size}x{spec.size}; use --dataset parquet to take the spec "
            f"from its dataset.json")
    if spec.measure_stats:  # measured on the full training split when the copy was written
        spec = replace(spec, mean=tuple(float(v) for v in info["mean"]), std=tuple(float(v) for v in info["std"]))
    return spec


def channel_stats(x: Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images (N, C, H, W) as [0, 1] values.

    Accumulated in float64 chunk by chunk, so a large training split never needs a float copy.
    """
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float64).div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square_().sum(dim=(0, 2, 3))
    return stats_from_sums(total, squares, x.numel() // x.shape[1])


def stats_from_sums(total: Tensor, squares: Tensor, n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std from float64 sums of [0, 1] values and of their
    squares over ``n`` values per channel (summed in parts, e.g. by Ray Data workers)."""
    n = max(1, n)
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(0).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def _keep_classes(arrays: sources.Arrays, classes: Sequence[int]) -> sources.Arrays:
    wanted = torch.tensor(sorted({int(c) for c in classes}), dtype=torch.int64)
    out = []
    for x, y in (arrays[:2], arrays[2:]):
        mask = torch.isin(y, wanted)
        out += [x[mask], y[mask]]
    return tuple(out)


def load_dataset(name: str, root: str | os.PathLike | None = None, *, classes: Sequence[int] | None = None,
                 split: str | None = None) -> RealData:
    """Load ``name`` from ``root`` and check its shape.

    ``root``: the dataset's folder (ignored by mnist5k and tiny), a local path, or a local path or
    URL (``s3://bucket/prefix``) holding the Parquet form, read with the process's storage
    options (``idc_ray.storage.configure``; the AWS environment variables otherwise). ``classes``: keep
    only the images of these class ids (labels are not renumbered), read as such from Parquet,
    so a worker holds only the classes it updates; measured statistics still cover every class.
    ``split``: "train" or "test" keeps only that split (the other's arrays are empty); Parquet
    reads only its rows, so a driver that evaluates holds no training pixels.

    Raises UnknownDatasetError for an unregistered name, DatasetNotFoundError when the files
    are missing, DatasetFormatError when a file is damaged, and idc_ray.storage.StorageError
    for storage failures. The returned arrays are validated against the spec so a mis-read
    file fails here rather than deep inside a run.
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == PARQUET or (name in DATASETS and root is not None and parquet.is_dataset(root)):
        info = _parquet_info(root)
        spec = spec_from_info(info) if name == PARQUET else _registered_from_parquet(get_spec(name), info, root)
        train_x, train_y, test_x, test_y = parquet.read_arrays(root, info, classes, split)
    else:
        spec = get_spec(name)
        arrays = spec.loader(root)
        if spec.measure_stats:
            mean, std = channel_stats(arrays[0])
            spec = replace(spec, mean=mean, std=std)
        train_x, train_y, test_x, test_y = arrays if classes is None else _keep_classes(arrays, classes)
        if split == "test":
            train_x, train_y = train_x[:0], train_y[:0]
        elif split == "train":
            test_x, test_y = test_x[:0], test_y[:0]
    for part, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        expected = (spec.channels, spec.size, spec.size)
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"dataset '{name}' {part} images: expected uint8 (N, {expected}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise ValueError(f"dataset '{name}' {part} labels: expected int64 ({len(x)},), got {y.dtype} {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise ValueError(f"dataset '{name}' {part} labels outside [0, {spec.num_classes})")
    return RealData(spec, train_x, train_y, test_x, test_y)
