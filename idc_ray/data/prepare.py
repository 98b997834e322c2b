"""Convert any dataset source into the Parquet form (shards + dataset.json), local or on S3.

Used by ``jobs/prepare_data.py``. The written dataset.json carries the spec (class names,
shape, mean/std, lr base size, flip rule) and the source's name, so reading it back with the
registered name (``--dataset cifar10 --data-uri s3://...``) or as ``--dataset parquet`` gives
the same data and constants as the original files.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, Mapping

from idc_ray import __version__, storage

from . import imagenet, parquet
from .registry import DATASETS, PARQUET, DatasetSpec, RealData, channel_stats, load_dataset

IMAGENET_SUBSET = "imagenet-subset"  # any class list and size, from an ImageFolder tree
IMAGEFOLDER = imagenet.IMAGEFOLDER  # any folder of images per class (imagenet.load_image_folder)
IMAGEFOLDER_SIZE = 32  # its default side
SOURCES = (*DATASETS, PARQUET, IMAGENET_SUBSET, IMAGEFOLDER)


def load_source(dataset: str, data_uri: str | None, *, size: int | None = None,
                class_list: str | None = None) -> RealData:
    """The dataset to convert. ``size`` and ``class_list`` (a class-list file, see
    :mod:`idc_ray.data.imagenet`) apply to the ImageNet sources only; ``imagenet-subset`` needs
    ``class_list`` and is named so in dataset.json (ImageNet rules still apply)."""
    if dataset not in SOURCES:
        raise ValueError(f"unknown source dataset {dataset!r}; choose one of {', '.join(SOURCES)}")
    if dataset == IMAGEFOLDER and class_list is None:
        return image_folder(data_uri, IMAGEFOLDER_SIZE if size is None else size)
    is_imagenet = dataset in ("imagenet10", "imagenet100", IMAGENET_SUBSET)
    if (size is not None or class_list is not None) and not is_imagenet:
        raise ValueError(f"--size and --class-list apply to imagenet10, imagenet100 and {IMAGENET_SUBSET} only "
                         f"(--size also to {IMAGEFOLDER}), not {dataset!r}")
    if dataset == IMAGENET_SUBSET and class_list is None:
        raise ValueError(f"{IMAGENET_SUBSET} needs --class-list FILE (one wnid per line)")
    if not is_imagenet or (size is None and class_list is None):
        return load_dataset(dataset, data_uri)
    base = DATASETS["imagenet100"]
    classes = imagenet.read_class_list(class_list) if class_list else DATASETS[dataset].class_names
    size = size or base.size
    if size < 1:
        raise ValueError(f"--size must be at least 1, got {size}")
    name = dataset if class_list is None else IMAGENET_SUBSET
    loader = partial(imagenet.load_imagenet_folder, classes=classes, size=size, name=name)
    spec = replace(base, name=name, num_classes=len(classes), class_names=classes, size=size, loader=loader)
    return RealData(spec, *loader(data_uri))


def image_folder(root: str | None, size: int) -> RealData:
    """A folder of images per class (:func:`idc_ray.data.imagenet.load_image_folder`), its mean
    and std measured on its training split; the generic rules (family ``imagefolder``) apply."""
    if size < 1:
        raise ValueError(f"--size must be at least 1, got {size}")
    arrays, classes, channels = imagenet.load_image_folder(root, size=size)
    mean, std = channel_stats(arrays[0])
    spec = DatasetSpec(name=IMAGEFOLDER, num_classes=len(classes), channels=channels, size=size, mean=mean, std=std,
                       class_names=classes, lr_base_size=size, loader=lambda root: arrays)
    return RealData(spec, *arrays)


def dataset_info(spec: DatasetSpec, source: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset.json fields that describe ``spec`` (see :mod:`idc_ray.data.parquet`)."""
    return {"name": spec.name, "class_names": list(spec.class_names), "shape": [spec.channels, spec.size, spec.size],
            "mean": list(spec.mean), "std": list(spec.std), "lr_base_size": spec.lr_base_size, "flip": spec.flip,
            "family": spec.family, "source": dict(source)}


def prepare(dataset: str, data_uri: str | None, output: str, *,
            size: int | None = None, class_list: str | None = None, rows_per_shard: int = 10_000,
            row_group_size: int = 1_000, encoding: str = "png", overwrite: bool = False) -> str:
    """Load ``dataset`` and write it as Parquet under ``output``; returns the dataset.json URI.

    The output is checked before the (possibly slow) source is decoded, so a wrong output
    location fails at once; nothing is left at ``output`` if anything fails.
    """
    if encoding not in parquet.ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; choose one of {', '.join(parquet.ENCODINGS)}")
    if rows_per_shard < 1 or row_group_size < 1:
        raise ValueError("--rows-per-shard and --row-group-size must be at least 1")
    if not overwrite and storage.exists(storage.join(output, parquet.DATASET_JSON)):
        raise ValueError(f"'{output}' already holds a dataset ({parquet.DATASET_JSON}); choose an empty location "
                         "or pass --overwrite")
    data = load_source(dataset, data_uri, size=size, class_list=class_list)
    source = {"dataset": dataset, "data_uri": None if data_uri is None else str(data_uri), "idc_ray": __version__}
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    return parquet.write_dataset(output, splits, dataset_info(data.spec, source), rows_per_shard=rows_per_shard,
                                 row_group_size=row_group_size, encoding=encoding, overwrite=overwrite)
